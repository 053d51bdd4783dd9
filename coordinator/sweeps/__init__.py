"""Sweeps: many trials of one job spec on the shared slots, stopped early by a rule whose every decision replays.

`spec` (the sweep file: a job spec plus a [sweep] table, parsed and checked; each trial's parameters),
`decisions` (pure: which trials run to which rung, which are promoted or stopped, the winner, from the file and
the metric values alone, taken in trial-number order), `service` (SubmitSweep, GetSweep, ListSweeps, CancelSweep
and the driver that applies the decisions: trials are ordinary jobs, labelled sweep=<id> and trial=<n>, paused
at their rungs through coordinator.store.pauses). A sweep is its submitter's, and so are its trials: the driver
submits them as that owner (coordinator.access.roles decides who may submit, read and cancel a sweep).

May import: jobs, scheduler, supervision, team, files, fleet, access, the store and the shared vocabulary.
Not core, api, dashboard or cli.
"""
