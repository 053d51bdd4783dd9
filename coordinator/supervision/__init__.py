"""Attempts, from launch to settlement: the only part of the coordinator that starts or stops processes.

`supervisor.Supervisor` launches an attempt through an executor (`executors`: local `mpirun` built by
`launcher`; `slurm`: one batch job per attempt, `slurm_submit`: sbatch that never submits an attempt twice,
and `slurm_outage`: what is done while Slurm's controller is away), watches it (`running`, `watchdog`), and when it ends,
classifies the end (`outcomes`, a pure decision) and records it (`settlement`). After a coordinator restart,
`recovery` re-adopts what an earlier coordinator left running, and `external_runs` watches runs users
started with `mpirun` themselves. `processes` finds processes by their attempt tag in /proc;
`shm_leftovers` removes what killed ranks left in /dev/shm.

May import: fleet, files, access, the store and the shared vocabulary. Not jobs, the scheduler or above.
"""
