"""The exact step's combine between hosts, overlapped with the backward pass layer by layer, keeps the bits.

worker/mlp_bylayer.py runs a rank's micro-batches layer by layer (every part's forward, then per layer, last
first, every part's gradient); worker/comm_overlap.py sends each layer's slices to their owners while the
layers below are computed. Checked here: each part's gradient and loss equal, bit for bit, the part computed
alone by MLP.sum_loss_and_grad_parts (every activation and loss, empty parts too); and whole training runs
across two hosts made of network namespaces (tests/netns_hosts.py; root, else skipped) end with the bits of
one plain process: 2 hosts x 1 rank, 2 hosts with 2 + 1 ranks (3 ranks: covers of several nodes, so the
owners' additions do real tree work per layer), (GRADMESH_OVERLAP=1), and with the overlap off (the default).
"""
from __future__ import annotations

import numpy as np
import pytest
from test_exact_ranks import layer_arrays, serial_run

from mpi_programs.launch import run_mpi
from netns_hosts import netns_cluster
from worker.mlp import MLP
from worker.mlp_bylayer import parts_by_layer

STEPS = 300   # serial_run asserts "done at step" of the spec's steps

SPEC = """
name = "overlap-{optimizer}"
[model]
layers = [64, 48, 32, 10]
activation = "gelu"
[data]
source = "digits"
[train]
steps = 300
batch_size = 61
eval_every = 100
micro_batches = 8
threads_per_rank = 1
[optim]
name = "{optimizer}"
lr = 0.01
[checkpoint]
every_steps = 0
"""


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("edges", [[0, 7, 7, 15, 30],            # unequal, part 1 empty: one part at a time
                                   [0, 6, 12, 18, 24, 30],       # equal: the parts as one numpy stack
                                   [0, 1, 2, 3, 4, 5, 6]],       # one row each, as at a small batch
                         ids=["unequal", "stacked", "rows-of-one"])
def test_layer_by_layer_gives_each_part_the_bits_of_the_part_alone(activation, loss, edges):
    model = MLP([20, 16, 12, 10], activation=activation, loss=loss, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 20)).astype(np.float32)
    y = rng.integers(0, 10, 30) if loss == "cross_entropy" else rng.standard_normal((30, 10)).astype(np.float32)
    parts = len(edges) - 1
    alone, alone_losses = [], []
    for k in range(parts):
        out = np.zeros(model.num_params, np.float32)
        views = model.layer_views(out)
        lo, hi = edges[k], edges[k + 1]
        alone_losses += model.sum_loss_and_grad_parts(x[lo:hi], y[lo:hi], (0, hi - lo), lambda i, j: views[i],
                                                      lambda i, j: None)
        alone.append(out)
    got = [np.full(model.num_params, np.nan, np.float32) for _ in range(parts)]
    views = [model.layer_views(g) for g in got]
    calls, layers = [], []
    cache: dict = {}
    for _ in range(2):                          # a second step reuses the parts' buffers
        calls.clear()
        layers.clear()
        losses = parts_by_layer(model, cache, [x[a:b] for a, b in zip(edges, edges[1:])],
                                [y[a:b] for a, b in zip(edges, edges[1:])], lambda i, k: views[k][i],
                                lambda i, k: calls.append((i, k)), layers.append)
        assert losses == alone_losses
        assert all(np.array_equal(a, g) for a, g in zip(alone, got)), (activation, loss)
    assert layers == [2, 1, 0]                  # last layer first, each once, after all its parts
    assert calls == [(i, k) for i in (2, 1, 0) for k in range(parts)]


def differing(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[str]:
    assert sorted(got) == sorted(reference) == [f"layers.{i}.{p}" for i in range(3) for p in "Wb"]
    return [name for name in reference if not np.array_equal(reference[name], got[name])]


def run_on_hosts(cluster, spec, out, per_host: tuple[int, int], took: float, env=None):
    hosts = ",".join(f"{h}:{r}" for h, r in zip(cluster.hosts, per_host))
    result = run_mpi(None, ["python", "-m", "worker", "--spec", str(spec), "--out", str(out), "--no-resume"],
                     prefix=["ip", "netns", "exec", cluster.switch], env=env,
                     mpirun_args=[*cluster.mpirun_args, *[a for k, v in (env or {}).items() for a in ("-genv", k, v)],
                                  "-hosts", hosts, "-n", str(sum(per_host))],
                     timeout=90 + 15 * took, settle_s=6.0)
    assert result.returncode == 0 and not result.timed_out, result.output
    assert f"done at step {STEPS}" in result.output, result.output
    assert result.leftovers == [], result.leftovers
    return result.output


@pytest.mark.timeout(900)
def test_overlapped_combine_across_two_hosts_gives_the_bits_of_one_process(tmp_path):
    specs = {}
    for optimizer in ("adam", "sgd"):
        specs[optimizer] = tmp_path / f"{optimizer}.toml"
        specs[optimizer].write_text(SPEC.format(optimizer=optimizer))
    references, took = {}, 0.0
    for name, spec in specs.items():
        references[name], seconds = serial_run(spec, tmp_path / f"serial-{name}")
        took = max(took, seconds)
    overlapped = "combined over MPI by slice owners (ranks on several hosts), layer by layer during the backward pass"
    with netns_cluster(tmp_path, hosts=2) as cluster:
        for name, spec in specs.items():
            for per_host in ((1, 1), (2, 1)):
                output = run_on_hosts(cluster, spec, tmp_path / f"{name}-{per_host}", per_host, took,
                                      env={"GRADMESH_OVERLAP": "1"})
                assert overlapped in output, output
                assert differing(references[name], layer_arrays(tmp_path / f"{name}-{per_host}" / "final.npz")) == [], \
                    (name, per_host)
        output = run_on_hosts(cluster, specs["adam"], tmp_path / "adam-off", (1, 1), took)   # the default: off
        assert "combined over MPI by slice owners" in output and "layer by layer" not in output, output
        assert differing(references["adam"], layer_arrays(tmp_path / "adam-off" / "final.npz")) == []
