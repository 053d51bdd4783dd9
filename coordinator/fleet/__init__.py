"""The hosts as the scheduler and the supervisor see them.

`health` (failures counted in a window, quarantine, operator drains), `placement` (where ranks go, which host
a failure is blamed on), `elastic` (on how many ranks an elastic job starts or grows back), and `fleet`,
which puts them together over the store. `health`, `placement` and `elastic` are pure decisions.

May import: the store and the shared vocabulary. Not supervision, jobs or anything above.
"""
