"""A coordinator shared by a team: its users and their tokens, the audit trail, and fair shares of the slots.

`accounts` (users with roles, per-user tokens kept as hashes, token expiry, the first administrator of
DATA_DIR/token, who a bearer token is, the audit trail), `policy` (the team's settings: shares, the wait
after which a big job holds a reservation, preemption, private jobs: one frozen object from `gradmesh serve`'s
flags), `fairshare` (the pure decision of which queued job starts next, which job holds a reservation, and
which lower-priority jobs a preemption stops; the scheduler calls it).

May import: access, store and the shared vocabulary. Not fleet, files, supervision or anything above.
"""
