"""A failed attempt's message names the rank and host from the worker log, as a person needs to act on it."""
from coordinator.supervision.launcher import Exit
from coordinator.supervision.outcomes import classify, headline
from coordinator.reports import WorkerEvent

RAISED = """gradmesh: job: 2 rank(s) × 1 BLAS thread(s)
[rank 1 on node7] Traceback (most recent call last):
[rank 1 on node7]   File "/w/worker/faults.py", line 59, in before_step
[rank 1 on node7]     raise RuntimeError(f"injected fault at step {step}")
[rank 1 on node7] RuntimeError: injected fault at step 20
[rank 1 on node7] uncaught RuntimeError: aborting the MPI job
Abort(1) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 1) - process 1
"""

KILLED = """gradmesh: job: 2 rank(s)
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 29604 RUNNING AT node3
=   EXIT CODE: 9
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
"""

HUNG = """step 40/100
rank 0 on node1: collective allreduce #57 did not complete within 5 s; silent rank(s): 1 (no answer: stopped)
Abort(1) on node 0
"""


def test_headline_finds_the_failing_rank_and_host():
    assert headline(RAISED) == "rank 1 on node7: RuntimeError: injected fault at step 20"
    assert headline(KILLED) == "a rank (pid 29604) on node3 ended: Killed (signal 9)"
    assert headline(HUNG).startswith("rank 0 on node1: collective allreduce #57 did not complete within 5 s; "
                                     "silent rank(s): 1")
    assert headline("nothing useful\nhere") == ""


def test_failure_message_leads_with_the_headline_then_the_tail():
    outcome = classify(Exit(1), cancel_requested=False, final_checkpoint_step=None,
                       worker_event=WorkerEvent.UNSPECIFIED, failure=None, tail=RAISED)
    assert outcome.retryable
    first_line = outcome.message.splitlines()[0]
    assert first_line == "mpirun failed with exit code 1: rank 1 on node7: RuntimeError: injected fault at step 20"
    assert "last lines of" in outcome.message and "Abort(1)" in outcome.message


def test_a_rank_killed_on_another_host_is_named_from_hydras_exit_code():
    from coordinator.supervision.outcomes import headline
    tail = ("=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n=   PID 4242 RUNNING AT gmxh3\n"
            "=   EXIT CODE: 9\n=   CLEANING UP REMAINING PROCESSES\n")
    assert headline(tail) == "a rank (pid 4242) on gmxh3 ended: exit code 9 (signal SIGKILL?)"
    assert headline(tail.replace("CODE: 9", "CODE: 1")) == "a rank (pid 4242) on gmxh3 ended: exit code 1"
