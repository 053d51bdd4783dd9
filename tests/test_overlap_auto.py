"""`[train] overlap = "auto"`: the exact step times its combine between hosts both ways on the job and keeps
the faster (worker/overlapchoice.py), without changing a bit.

The schedule and the decision are checked alone (warm-up in one piece, then alternating, the lower median
wins, said once); the spec refuses what it cannot use; and real jobs on two hosts made of network namespaces
(tests/netns_hosts.py; root, else skipped) say which way they chose and end with the bits of one plain
process, which the overlapped and the one-piece combines both give (tests/test_exact_overlap.py); on the bf16
wire, with the bits of the same job combined in one piece.
"""
from __future__ import annotations

import re

import pytest
from test_exact_overlap import SPEC, differing, run_on_hosts
from test_exact_ranks import layer_arrays, serial_run

from netns_hosts import netns_cluster
from worker.overlapchoice import OverlapChoice
from worker.spec import SpecError, parse_spec


def test_it_warms_up_in_one_piece_then_alternates_and_keeps_the_lower_median():
    choice = OverlapChoice(warmup=3, trials=6)
    ways = [choice.layered(i) for i in range(9)]
    assert ways == [False] * 3 + [False, True] * 3        # no decision without figures: one piece after the trials
    times = [0.5, 0.5, 0.5, 0.090, 0.070, 0.200, 0.075, 0.088, 0.072]   # one piece once slowed by the machine
    for i, t in enumerate(times[:-1]):
        choice.record(i, t)
        assert choice.chosen is None and choice.news() == ""
    choice.record(8, times[8])
    assert choice.chosen is True                           # medians: layered 72 ms, one piece 90 ms
    assert choice.news() == ("overlap auto: layer by layer during the backward pass (median step 72.0 ms, "
                             "against 90.0 ms in one piece; 3 steps each)")
    assert choice.news() == ""                             # said once
    assert all(choice.layered(i) for i in range(9, 20))
    choice.record(9, 5.0)                                  # later figures change nothing
    assert choice.chosen is True


def test_one_piece_is_kept_when_it_is_faster():
    choice = OverlapChoice(warmup=0, trials=2)
    assert [choice.layered(0), choice.layered(1)] == [False, True]
    choice.record(0, 0.030)
    choice.record(1, 0.045)
    assert choice.chosen is False and not choice.layered(2)
    assert choice.news().startswith("overlap auto: in one piece after the backward pass (median step 30.0 ms, "
                                    "against 45.0 ms layer by layer")
    with pytest.raises(ValueError):
        OverlapChoice(warmup=1, trials=3)


def test_the_spec_takes_auto_for_the_exact_step_only():
    assert parse_spec({"train": {"steps": 5, "overlap": "auto"}}).train.overlap == "auto"
    assert parse_spec({"train": {"steps": 5, "overlap": True}}).train.overlap is True
    with pytest.raises(SpecError, match='must be true, false or "auto"') as err:
        parse_spec({"train": {"steps": 5, "overlap": "Auto"}})
    assert err.value.field == "train.overlap"
    with pytest.raises(SpecError, match="needs micro_batches > 0") as err:
        parse_spec({"train": {"steps": 5, "overlap": "auto", "micro_batches": 0}})
    assert err.value.field == "train.overlap"


CHOSE = re.compile(r"gradmesh: overlap auto: (layer by layer during the backward pass|in one piece after the "
                   r"backward pass) \(median step [\d.]+ ms, against [\d.]+ ms (in one piece|layer by layer); 5 steps "
                   r"each\)")


@pytest.mark.timeout(600)
def test_jobs_on_two_hosts_choose_say_which_and_keep_the_bits_of_one_process(tmp_path):
    spec = tmp_path / "auto.toml"
    spec.write_text(SPEC.format(optimizer="adam").replace("threads_per_rank = 1", 'threads_per_rank = 1\noverlap = "auto"'))
    reference, took = serial_run(spec, tmp_path / "serial")
    with netns_cluster(tmp_path, hosts=2) as cluster:
        for per_host in ((2, 1),):   # a host of 2 ranks and a host of 1: uneven hosts, where the choice is made alike
            out = tmp_path / f"auto-{per_host[0]}x{per_host[1]}"
            output = run_on_hosts(cluster, spec, out, per_host, took)
            assert "overlap auto: the combine runs in one piece and layer by layer for 5 steps each after 5" in output
            assert "layer by layer or in one piece" in output, output
            assert len(CHOSE.findall(output)) == 1, output
            assert differing(reference, layer_arrays(out / "final.npz")) == [], per_host
        # on the bf16 wire too: the choice changes when the layers go, not what the ranks end with
        bf16 = tmp_path / "auto-bf16.toml"
        bf16.write_text(spec.read_text().replace('overlap = "auto"', 'overlap = "auto"\nwire = "bf16"'))
        plain = tmp_path / "bf16.toml"
        plain.write_text(bf16.read_text().replace('overlap = "auto"\n', ""))
        run_on_hosts(cluster, plain, tmp_path / "bf16-plain", (2, 1), took)
        output = run_on_hosts(cluster, bf16, tmp_path / "bf16-auto", (2, 1), took)
        assert len(CHOSE.findall(output)) == 1 and "bf16 on the wire" in output, output
        assert differing(layer_arrays(tmp_path / "bf16-plain" / "final.npz"),
                         layer_arrays(tmp_path / "bf16-auto" / "final.npz")) == []
        assert differing(reference, layer_arrays(tmp_path / "bf16-auto" / "final.npz")) != []   # not fp32's
