"""The exact step's combine between hosts, layer by layer while the backward pass runs (a helper of worker/comm.py).

    reducer = OverlapExactReducer(MPI, comm, n, slots, tail, why)   # collective: every rank together
    reducer.begin(frontier, parts)      # a step starts (worker/stepexact.py, before its backward pass)
    reducer.start_layer(slice)          # this layer's slice of every node of mine is final: send it
    tails = reducer.finish()            # slot 0 of every rank holds the total; every rank's tail

The combine of worker/comm_exact.py, cut by layer: a layer's slice of the vector is split among the ranks,
and rank s owns part s of every layer. When a layer's gradient is final on this rank (worker/mlp_bylayer.py
computes the parts layer by layer, last layer first), its part s goes to rank s at once, while the layers
below are still being computed; the owner adds the frontier up in its part along the tree (the same
`combine_frontier`, element by element, so the same bits as the one-piece combine) and sends the total to
every other rank. The bytes are those of the one-piece combine: 2 (N-1)/N of the vector per rank.
On the bf16 wire (`train.wire`) a layer's slices and totals are rounded and sent as worker/comm_exact.py's
are: element by element, so the same bits as that combine in one piece.

Why a thread: MPI moves a large message (UCX's rendezvous over TCP) only while someone calls into MPI, and
the main thread is inside GEMMs. One thread per process does the layers' messages in order on a duplicate of
the communicator, polling with Testall and sleeping POLL_S between polls (a spinning wait would take a core
from the ranks' own compute: on a small host the ranks fill the cores). numpy's GEMMs release the GIL. Once
the backward pass is over (finish), nothing competes with it: the thread then polls without sleeping.
Opt-in, GRADMESH_OVERLAP=1 (worker/comm_mpi.py): without it the combine runs in one piece after the backward pass;
`[train] overlap = "auto"` builds this reducer and times both ways on the job (worker/overlapchoice.py).
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np

from worker.comm_exact import MpiExactReducer
from worker.microbatch import combine_frontier
from worker.shmreduce import ALIGN

POLL_S = 2e-4     # between polls of the layer's requests: short next to a layer's transfer, long for a CPU
OVERLAP_ENV = "GRADMESH_OVERLAP"


class OverlapExactReducer(MpiExactReducer):
    """MpiExactReducer's slots and tail, combined per layer by one communication thread."""

    def __init__(self, MPI, comm, n: int, slots: int, tail: int, why: str, wire: str = "fp32",
                 chooses: bool = False):
        """`chooses`: the caller may also `combine` in one piece, step by step (worker/overlapchoice.py)."""
        super().__init__(MPI, comm, n, slots, tail, why, wire)
        self.note += ", layer by layer or in one piece" if chooses else ", layer by layer during the backward pass"
        self._layers = comm.Dup()          # the thread's own: its messages never meet the main thread's
        self._jobs: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._started = 0
        self._nodes: list = []
        self._parts = 0
        self._buffers: dict[tuple[int, int], np.ndarray] = {}
        self._hurry = threading.Event()    # set by finish(): the main thread computes no more, poll flat out
        threading.Thread(target=self._serve, name="gradmesh-layer-combine", daemon=True).start()

    def begin(self, nodes, parts: int) -> None:
        if self._started:
            raise RuntimeError("a step's layers are still in flight: finish() before the next begin()")
        self._nodes, self._parts = list(nodes), parts
        self._hurry.clear()

    def start_layer(self, where: slice) -> None:
        self._jobs.put((self._started, where.start, where.stop))
        self._started += 1

    def finish(self) -> np.ndarray:
        """Wait for every layer started since begin(), then gather the tails (after the layers: the tail's
        seconds are set once the backward pass is over)."""
        self._hurry.set()
        failure = None
        for _ in range(self._started):
            err = self._done.get()
            failure = failure or err
        self._started = 0
        if failure is not None:
            raise failure
        self._comm.Allgather(self.tail, self._gathered)
        return self._gathered.copy()

    # ---- the thread --------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            index, lo, hi = self._jobs.get()
            try:
                self._layer(index, lo, hi)
                self._done.put(None)
            except BaseException as err:  # noqa: BLE001 - raised by finish() in the main thread
                self._done.put(err)

    def _wait(self, requests) -> None:
        while requests and not self._MPI.Request.Testall(requests):
            time.sleep(0.0 if self._hurry.is_set() else POLL_S)

    def _layer(self, index: int, lo: int, hi: int) -> None:
        MPI, comm, me, size, nodes = self._MPI, self._layers, self.rank, self.size, self._nodes
        bf16 = self._codec is not None      # the bf16 wire: the one-piece combine's roundings, layer by layer
        kind = MPI.UINT16_T if bf16 else MPI.FLOAT
        n = hi - lo
        edges = [lo + min(n, -(-(n * r // size) // ALIGN) * ALIGN) for r in range(size)] + [hi]
        a, b = edges[me], edges[me + 1]
        tag = 2 * len(nodes) * index       # one tag per (layer, node) and phase; the step's layers in order
        requests, mine, arriving = [], [], []
        for k, (rank, slot, _node) in enumerate(nodes):
            if rank == me:
                vec = self.slots[slot]
                sent = self._node_words(slot, vec, lo, hi, a, b) if bf16 else vec
                mine.append(vec[a:b])
                for dest in range(size):
                    if dest != me and edges[dest + 1] > edges[dest]:
                        requests.append(comm.Isend([sent[edges[dest]:edges[dest + 1]], kind], dest=dest,
                                                   tag=tag + k))
            else:
                buf = self._buffers.get((index, k))
                if buf is None or len(buf) != b - a:
                    buf = self._buffers[(index, k)] = np.empty(b - a, np.float32)
                mine.append(buf)
                if b > a:
                    into = self._buffer(("recv", index, k), b - a) if bf16 else buf
                    if bf16:
                        arriving.append((into, buf))
                    requests.append(comm.Irecv([into, kind], source=rank, tag=tag + k))
        self._wait(requests)
        for words, values in arriving:
            self._codec.decode(words, values)
        out = self.slots[0]
        if b > a:
            def add(i: int, j: int) -> None:
                mine[i] += mine[j]
            total = mine[combine_frontier(nodes, self._parts, add)]
            if not np.may_share_memory(out[a:b], total):
                out[a:b] = total
        back = self._round_total(out, a, b) if bf16 else out
        requests = []
        for peer in range(size):          # the allgather, point to point: my part to all, theirs to me
            if peer == me:
                continue
            if b > a:
                requests.append(comm.Isend([back[a:b], kind], dest=peer, tag=tag + len(nodes)))
            if edges[peer + 1] > edges[peer]:
                requests.append(comm.Irecv([back[edges[peer]:edges[peer + 1]], kind], source=peer,
                                           tag=tag + len(nodes)))
        self._wait(requests)
        if bf16:
            for peer in range(size):
                if peer != me:
                    self._codec.decode(back[edges[peer]:edges[peer + 1]], out[edges[peer]:edges[peer + 1]])
