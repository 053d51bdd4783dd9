"""The front door: who may call, how much they may ask for, and whether what they sent is well formed.

`auth` (the gRPC interceptor: client bearer token, per-job worker tokens), `admission` (calls in flight per
class of caller, idle calls cut), `tokens` (job tokens and their hashes), `limits` (every cap with its
default and flag), `validate` (request fields, each refusal naming its field), `footprint` (what a job will
cost before it runs), `roles` (admin, member, viewer, and the one decision `may(user, action, job)`).

May import: the shared vocabulary at coordinator/ top (errors, wire). Not the store, nothing above.
"""
