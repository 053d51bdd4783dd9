"""What the coordinator keeps on disk beside its database.

`checkpoints` (uploaded checkpoint files: written atomically, verified, retained, served), `verified` (which
files were already hashed), `job_files` (a job's directories, removed with it even if the coordinator dies
halfway), `expiry` (ended jobs deleted once old enough).

May import: the store and the shared vocabulary. Not supervision, jobs or anything above.
"""
