"""The hang watchdog: comm.py's helper that times every collective of its rank and aborts a stuck job.

Only `worker.comm_mpi` creates one (`MpiComm.set_hang_timeout`) and it hands over everything MPI: a private
communicator whose `Isend`/`Irecv` carry the probes, `MPI.ANY_SOURCE`, and the function that aborts the
job. So this module never imports mpi4py (DESIGN: comm.py is the only module that calls MPI; here we
only call methods of the communicator object it gives us).

    watch = Watchdog(private_comm, rank, size, hostname, timeout_s=60, any_source=MPI.ANY_SOURCE,
                     abort=lambda: abort_job(world, 1), on_hang=report)
    ticket = watch.enter("allreduce"); comm.Allreduce(...); watch.leave(ticket)

The main thread only records (number, name, start time) on entry and deletes it on exit: two dict
operations under a lock per collective. A daemon thread wakes every `poll_s`, answers other ranks' probes,
and when an entry is older than the timeout it asks every other rank's watchdog where it is, waits
`answer_grace_s` for answers, prints who is silent:

    rank 0 on HOST: collective allreduce #57 did not complete within 5 s; silent rank(s): 1 (no answer: ...)

hands that verdict to `on_hang` (the worker reports it to the coordinator as a HANG failure, with a short
deadline), and aborts. A rank that is SIGSTOPped, stuck in C code or cut off from the network does not
answer; a rank busy in Python outside any collective answers with its last collective, so it is named as
"busy"; a rank inside a different collective with the same number (the programs diverged, e.g. one rank
is exiting: its exit barrier is watched too) is named with that collective.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Callable

import numpy as np

_TAG_PROBE = 1   # "where are you?"  payload: [asking rank, collective number]
_TAG_ANSWER = 2  # the answer        payload: [collectives entered, in flight, name code of the newest]
_COLLECTIVE_NAMES = ("allreduce", "iallreduce", "bcast", "bcast_bytes", "assert_identical", "barrier",
                     "barrier at exit", "other")


def _name_code(name: str | None) -> int:
    """Index of a collective's base name in _COLLECTIVE_NAMES ("bcast_bytes(length)" -> bcast_bytes)."""
    if name is None:
        return -1
    base = name.split("(")[0]
    return _COLLECTIVE_NAMES.index(base) if base in _COLLECTIVE_NAMES else len(_COLLECTIVE_NAMES) - 1


class Watchdog:
    """A daemon thread that times the collectives of its rank and aborts the job when one is late."""

    def __init__(self, comm, rank: int, size: int, hostname: str, timeout_s: float, *, any_source: int,
                 abort: Callable[[], None], on_hang: Callable[[str], None] | None = None):
        self._comm = comm
        self._any_source = any_source
        self._abort = abort
        self.on_hang = on_hang
        self.rank, self.size, self.hostname = rank, size, hostname
        self.retune(timeout_s)
        self._inflight: dict[int, tuple[str, float]] = {}
        self._entered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probe_buf = np.zeros(2, np.int64)
        self._probe_req = comm.Irecv(self._probe_buf, source=any_source, tag=_TAG_PROBE)
        self._pending_sends: list = []
        self._askers: dict[int, int] = {}  # rank -> collective number it asked about (it is stuck there)
        self._thread = threading.Thread(target=self._run, name="gradmesh-hang-watchdog", daemon=True)
        self._thread.start()

    def retune(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.poll_s = min(0.1, timeout_s / 10)
        self.answer_grace_s = min(2.0, max(0.5, timeout_s / 4))

    def enter(self, name: str) -> int:
        with self._lock:
            self._entered += 1
            ticket = self._entered
            self._inflight[ticket] = (name, time.monotonic())
        return ticket

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._inflight.pop(ticket, None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._probe_req.Cancel()
        self._probe_req.Wait()
        for req in self._pending_sends:
            req.Wait()
        self._comm.Free()

    # -- thread side --
    def _run(self) -> None:
        try:
            while not self._stop.wait(self.poll_s):
                self._answer_probes()
                late = self._late_collective()
                if late is not None:
                    self._fire(*late)
        except BaseException:
            sys.stderr.write(f"[rank {self.rank} on {self.hostname}] hang watchdog failed:\n"
                             + traceback.format_exc())
            self._abort()

    def _state(self) -> tuple[int, int, int]:
        """(collectives entered, collectives in flight, code of the newest one in flight or -1)."""
        with self._lock:
            newest = self._inflight[max(self._inflight)][0] if self._inflight else None
            return self._entered, len(self._inflight), _name_code(newest)

    def _late_collective(self) -> tuple[int, str, float] | None:
        now = time.monotonic()
        with self._lock:
            for ticket, (name, started) in self._inflight.items():
                if now - started > self.timeout_s:
                    return ticket, name, now - started
        return None

    def _answer_probes(self) -> None:
        self._pending_sends = [r for r in self._pending_sends if not r.Test()]
        while self._probe_req.Test():
            asker = int(self._probe_buf[0])
            self._askers[asker] = max(self._askers.get(asker, 0), int(self._probe_buf[1]))
            answer = np.array(self._state(), np.int64)
            self._pending_sends.append(self._comm.Isend(answer, dest=asker, tag=_TAG_ANSWER))
            self._probe_req = self._comm.Irecv(self._probe_buf, source=self._any_source, tag=_TAG_PROBE)

    def _fire(self, ticket: int, name: str, waited_s: float) -> None:
        peers = [r for r in range(self.size) if r != self.rank]
        question = np.array([self.rank, ticket], np.int64)
        sends = [self._comm.Isend(question, dest=r, tag=_TAG_PROBE) for r in peers]
        answers = {r: np.full(3, -1, np.int64) for r in peers}
        receives = {r: self._comm.Irecv(answers[r], source=r, tag=_TAG_ANSWER) for r in peers}
        deadline = time.monotonic() + self.answer_grace_s
        while receives and time.monotonic() < deadline:
            # Peers whose own watchdog is firing answer us from this same loop.
            self._answer_probes()
            for r in [r for r, req in receives.items() if req.Test()]:
                del receives[r]
            time.sleep(0.01)
        silent = []
        for r in peers:
            if r in receives:
                if self._askers.get(r, 0) >= ticket:
                    continue  # it probed us about this collective: waiting in it too (now aborting)
                silent.append(f"{r} (no answer: stopped, stuck in C code, dead or cut off)")
                continue
            entered, inflight, code = (int(v) for v in answers[r])
            if entered < ticket:
                where = "inside an earlier collective" if inflight else "busy outside any collective"
                silent.append(f"{r} ({where}; has entered {entered} of {ticket} collectives)")
            elif inflight and entered == ticket and code != _name_code(name):
                # Same count, different call: the ranks' programs diverged (e.g. one is exiting).
                silent.append(f"{r} (inside a different collective: {_COLLECTIVE_NAMES[code]} #{entered})")
        who = "; ".join(silent) if silent else "none found (every rank answered from inside it: MPI or network stall)"
        message = (f"rank {self.rank} on {self.hostname}: collective {name} #{ticket} did not complete "
                   f"within {self.timeout_s:g} s; silent rank(s): {who}")
        print(message, file=sys.stderr, flush=True)
        del sends
        if self.on_hang is not None:
            try:
                self.on_hang(message)  # the structured last word; bounded by the reporter's own deadline
            except Exception as exc:  # a failed report must never keep the job from ending
                sys.stderr.write(f"[rank {self.rank} on {self.hostname}] could not report the hang: {exc}\n")
        self._abort()
