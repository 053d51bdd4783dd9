"""The sweep file and the sweep's decisions, as pure functions: no server, no processes.

The decisions must be a function of the file and the metric values alone: here the same values are fed in every
order a scheduler could produce them (any interleaving of trials, any number of them in flight), and the
promotions, the stopped trials and the winner must not change.
"""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from coordinator.sweeps.decisions import DONE, RUN, STOPPED, WAITING, decide
from helpers import run_cli
from coordinator.sweeps.spec import parse_sweep, trial_spec
from worker.spec import SpecError, parse_spec

BASE = """
name = "sw"
[model]
layers = [64, 32, 10]
[train]
steps = 900
"""


def sweep(table: str, base: str = BASE):
    return parse_sweep(base + "[sweep]\n" + table)


# ---------------------------------------------------------------- the file


def test_grid_enumerates_the_product_last_parameter_fastest():
    spec, base = sweep('method = "grid"\n[sweep.parameters]\n"optim.lr" = { values = [0.1, 0.01] }\n'
                       '"model.layers" = { values = [[64, 16, 10], [64, 32, 32, 10]] }\n')
    assert spec.trials == 4
    assert [spec.params(t) for t in range(4)] == [
        {"optim.lr": 0.1, "model.layers": [64, 16, 10]}, {"optim.lr": 0.1, "model.layers": [64, 32, 32, 10]},
        {"optim.lr": 0.01, "model.layers": [64, 16, 10]}, {"optim.lr": 0.01, "model.layers": [64, 32, 32, 10]}]
    raw = trial_spec(base, spec.params(3))
    assert parse_spec(raw).model.layers == (64, 32, 32, 10) and parse_spec(raw).optim.lr == 0.01
    assert base["model"]["layers"] == [64, 32, 10]  # the base is not changed by a trial


def test_random_values_depend_only_on_seed_trial_and_key():
    table = ('method = "random"\nmax_trials = 50\nseed = 7\n[sweep.parameters]\n'
             '"optim.lr" = { low = 1e-4, high = 1e-1, log = true }\n"train.batch_size" = { low = 16, high = 64 }\n'
             '"optim.name" = { values = ["adam", "sgd"] }\n')
    spec, _ = sweep(table)
    again, _ = sweep(table.replace("max_trials = 50", "max_trials = 10"))
    assert [spec.params(t) for t in range(10)] == [again.params(t) for t in range(10)]
    lrs = [spec.params(t)["optim.lr"] for t in range(50)]
    assert all(1e-4 <= v <= 1e-1 for v in lrs) and min(lrs) < 1e-3 and max(lrs) > 1e-2  # log scale: both decades
    sizes = {spec.params(t)["train.batch_size"] for t in range(50)}
    assert sizes <= set(range(16, 65)) and all(isinstance(v, int) for v in sizes) and len(sizes) > 10
    other, _ = sweep(table.replace("seed = 7", "seed = 8"))
    assert [other.params(t) for t in range(10)] != [spec.params(t) for t in range(10)]


def test_random_over_choices_alone_takes_every_point_once_before_any_repeats():
    table = ('method = "asha"\nmax_trials = 30\nseed = 0\n[sweep.parameters]\n'
             '"optim.lr" = { values = [0.1, 0.03, 0.01, 0.003, 0.001, 0.0003] }\n'
             '"optim.momentum" = { values = [0.0, 0.9] }\n"model.activation" = { values = ["relu", "tanh"] }\n'
             '[sweep.asha]\nmin_steps = 10\n')
    spec, _ = sweep(table)
    points = [tuple(spec.params(t).values()) for t in range(30)]
    assert len(set(points[:24])) == 24                       # the whole 6 x 2 x 2 product, once each
    assert set(points[24:]) <= set(points[:24])              # then a second lap
    again, _ = sweep(table.replace("max_trials = 30", "max_trials = 5"))
    assert [again.params(t) for t in range(5)] == [spec.params(t) for t in range(5)]   # the file alone decides
    other, _ = sweep(table.replace("seed = 0", "seed = 1"))
    assert [other.params(t) for t in range(24)] != [spec.params(t) for t in range(24)]
    grid, _ = sweep(table.replace('method = "asha"\nmax_trials = 30\n', 'method = "grid"\n').split("[sweep.asha]")[0])
    assert set(points[:24]) == {tuple(grid.params(t).values()) for t in range(24)}


def test_asha_rungs_grow_by_the_reduction_factor_up_to_train_steps():
    spec, _ = sweep('method = "asha"\nmax_trials = 9\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n'
                    '[sweep.asha]\nmin_steps = 100\nreduction_factor = 3\n')
    assert spec.rungs(900) == (100, 300, 900)
    assert spec.rungs(1000) == (100, 300, 900, 1000)
    assert spec.rungs(250) == (100, 250)


@pytest.mark.parametrize("table, field", [
    ('method = "bayes"\n', "sweep.method"),
    ('method = "random"\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n', "sweep.max_trials"),
    ('method = "grid"\nmax_trials = 3\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n', "sweep.max_trials"),
    ('method = "grid"\n[sweep.parameters]\n"optim.lr" = { low = 0.1, high = 1.0 }\n', "sweep.parameters.optim.lr"),
    ('method = "random"\nmax_trials = 3\n[sweep.parameters]\n"optim.lrr" = { values = [0.1] }\n',
     "sweep.parameters.optim.lrr"),
    ('method = "random"\nmax_trials = 3\n[sweep.parameters]\n"optim" = { values = [0.1] }\n',
     "sweep.parameters.optim"),
    ('method = "random"\nmax_trials = 3\n[sweep.parameters]\n"optim.lr" = { low = 0.0, high = 1.0, log = true }\n',
     "sweep.parameters.optim.lr.low"),
    ('method = "random"\nmax_trials = 3\n[sweep.parameters]\n"optim.lr" = { low = 1.0, high = 0.5 }\n',
     "sweep.parameters.optim.lr.high"),
    ('method = "asha"\nmax_trials = 3\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n', "sweep.asha"),
    ('method = "asha"\nmax_trials = 3\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n[sweep.asha]\n'
     'min_steps = 900\n', "sweep.asha.min_steps"),
    ('method = "asha"\nmax_trials = 3\n[sweep.parameters]\n"train.steps" = { values = [100] }\n[sweep.asha]\n'
     'min_steps = 10\n', "sweep.parameters.train.steps"),
    ('method = "random"\nmax_trials = 3\nmax_concurrent = 0\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n',
     "sweep.max_concurrent"),
    ('method = "random"\nmax_trials = 3\nsurprise = 1\n[sweep.parameters]\n"optim.lr" = { values = [0.1] }\n',
     "sweep.surprise"),
])
def test_a_bad_sweep_table_names_its_key(table, field):
    with pytest.raises(SpecError) as err:
        sweep(table)
    assert err.value.field == field, err.value


def test_asha_needs_train_steps_not_epochs():
    with pytest.raises(SpecError) as err:
        parse_sweep('name = "x"\n[train]\nepochs = 3\n[sweep]\nmethod = "asha"\nmax_trials = 3\n[sweep.parameters]\n'
                    '"optim.lr" = { values = [0.1] }\n[sweep.asha]\nmin_steps = 10\n')
    assert err.value.field == "train.steps"


# ---------------------------------------------------------------- the decisions


def drive(trials: int, rungs: int, eta: int, values, order: random.Random | None, in_flight: int = 1,
          minimize: bool = True):
    """Feed values[trial][rung] as a scheduler would: keep up to `in_flight` trials "running" (status RUN), and
    let one of them, chosen by `order` (None: the lowest), report next. Returns the final plan."""
    results: dict = {}
    for _ in range(trials * rungs + 1):
        plan = decide(trials=trials, rungs=rungs, reduction_factor=eta, minimize=minimize, results=results)
        runnable = [(t, s.rung) for t, s in enumerate(plan.status) if s.state == RUN]
        if not runnable:
            return plan
        window = runnable[:in_flight] if order is None else order.sample(runnable, min(in_flight, len(runnable)))
        t, k = window[0]
        results[(t, k)] = values[t][k]
    raise AssertionError("the decisions never finished")


def test_promotions_and_winner_do_not_depend_on_arrival_order_or_concurrency():
    rng = random.Random(3)
    values = [[rng.random() / (k + 1) for k in range(3)] for _ in range(27)]
    reference = drive(27, 3, 3, values, None, in_flight=1)
    assert reference.finished and reference.best is not None
    assert len(reference.promoted[0]) >= 9 and len(reference.promoted[1]) >= 3
    for seed, in_flight in itertools.product(range(20), (1, 2, 4, 27)):
        plan = drive(27, 3, 3, values, random.Random(seed), in_flight)
        assert plan.sequences == reference.sequences and plan.best == reference.best, (seed, in_flight)
        assert plan.status == reference.status


def test_the_rule_by_hand():
    # 6 trials, η = 3, two rungs. Values at rung 0 by trial: lower is better.
    v0 = {0: 0.5, 1: 0.9, 2: 0.4, 3: 0.1, 4: 0.8, 5: 0.7}
    plan = decide(trials=6, rungs=2, reduction_factor=3, minimize=True, results={(t, 0): v for t, v in v0.items()})
    # m = 3: the best 1 of trials 0-2 is trial 2; m = 6: the best 2 of all are trials 3 and 2 → 3 is added
    assert plan.promoted[0] == (2, 3)
    assert [s.state for s in plan.status] == [STOPPED, STOPPED, RUN, RUN, STOPPED, STOPPED]
    # trial 1's value missing: trials 2..5 wait for it (the reading stops at the first gap)
    partial = {(t, 0): v for t, v in v0.items() if t != 1}
    plan = decide(trials=6, rungs=2, reduction_factor=3, minimize=True, results=partial)
    assert plan.promoted[0] == () and plan.status[1].state == RUN
    assert {plan.status[t].state for t in (0, 2, 3, 4, 5)} == {WAITING}
    # once it arrives, the reading goes on, and the same two are promoted as if it had come first
    plan = decide(trials=6, rungs=2, reduction_factor=3, minimize=True, results={**partial, (1, 0): 0.9})
    assert plan.promoted[0] == (2, 3)


def test_a_trial_ranked_out_of_reach_is_stopped_before_the_rung_completes():
    values = {(0, 0): 0.1, (1, 0): 0.2, (2, 0): 0.3, (3, 0): 0.9}
    plan = decide(trials=9, rungs=2, reduction_factor=3, minimize=True, results=values)
    # at most 9 // 3 = 3 of the 9 go on; trial 3 is 4th of the first 4 already: it can never be in the best 3
    assert plan.status[3].state == STOPPED
    assert plan.status[2].state == WAITING and plan.promoted[0] == (0,)


def test_nan_is_never_promoted_and_maximize_reverses_the_order():
    results = {(0, 0): math.nan, (1, 0): 0.5, (2, 0): 0.9}
    plan = decide(trials=3, rungs=2, reduction_factor=3, minimize=False, results=results)
    assert plan.promoted[0] == (2,) and plan.status[0].state == STOPPED
    plan = decide(trials=3, rungs=2, reduction_factor=3, minimize=True, results=results)
    assert plan.promoted[0] == (1,)


def test_a_rung_too_small_to_promote_still_sends_its_best_to_the_end():
    results = {(0, 0): 0.3, (1, 0): 0.2}
    plan = decide(trials=2, rungs=2, reduction_factor=3, minimize=True, results=results)
    assert plan.promoted[0] == (1,) and not plan.finished
    plan = decide(trials=2, rungs=2, reduction_factor=3, minimize=True, results={**results, (1, 1): 0.1})
    assert plan.finished and plan.best == 1 and plan.status[1].state == DONE


def test_grid_and_random_run_everything_to_the_end():
    plan = decide(trials=3, rungs=1, reduction_factor=3, minimize=True, results={(0, 0): 0.3, (2, 0): 0.1})
    assert [s.state for s in plan.status] == [DONE, RUN, DONE] and not plan.finished
    plan = decide(trials=3, rungs=1, reduction_factor=3, minimize=True,
                  results={(0, 0): 0.3, (1, 0): 0.2, (2, 0): 0.1})
    assert plan.finished and plan.best == 2
    assert decide(trials=2, rungs=1, reduction_factor=3, minimize=True,
                  results={(0, 0): math.nan, (1, 0): math.nan}).best is None


def test_gradmesh_sweep_plan_shows_rungs_and_trials_without_a_coordinator(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(BASE + '[sweep]\nmethod = "asha"\nmax_trials = 4\n[sweep.parameters]\n'
                    '"optim.lr" = { low = 1e-3, high = 1e-1, log = true }\n[sweep.asha]\nmin_steps = 100\n')
    proc = run_cli("sweep", "plan", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    spec, _ = parse_sweep(path.read_text())
    assert shown["rungs"] == [100, 300, 900] and shown["trials"] == [spec.params(t) for t in range(4)]
    path.write_text(path.read_text().replace('"optim.lr" = { low = 1e-3, high = 1e-1, log = true }',
                                             '"model.layers" = { values = [[64, 7]] }'))
    proc = run_cli("sweep", "plan", str(path))
    assert proc.returncode == 1 and "model.layers" in proc.stderr and "trial 0" in proc.stderr
