"""The coordinator's durable record, in one SQLite file (DATA_DIR/gradmesh.db).

`store.Store` is the one object the rest of the coordinator holds; it is made of the record kinds beside it
(`attempts`, `metrics`, `checkpoints`, `drains`, `sessions`, `users`: users, token hashes and the audit trail)
over one `connection`. `schema` creates and migrates the tables, `versions` keeps the store's format version,
`records` holds one frozen dataclass per row.

May import: the shared vocabulary at coordinator/ top (errors, states, reports, hosts). Nothing above it.
"""
