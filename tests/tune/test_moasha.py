"""Tests of the MOASHA scheduler: decision rule on hand-made results, then one real Tune run."""
from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
import ray
from ray import cloudpickle, tune
from ray._private import ray_constants
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from skipnet.tune.moasha import MOASHA, _Rung

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP

# (accuracy, computation %) each trial approaches. True front: B, A, E; every other target is
# dominated by A=(0.90, 60) or B=(0.60, 20), so the order of arrival cannot promote it.
TARGETS = [
    (0.60, 20),  # B  front, cheapest
    (0.90, 60),  # A  front
    (0.85, 70),
    (0.55, 30),
    (0.80, 90),
    (0.95, 95),  # E  front, most accurate, arrives late
    (0.50, 25),
    (0.88, 61),
    (0.30, 40),
    (0.70, 75),
]
FRONT = {0, 1, 5}
MAX_T = 9


def _result(iteration: int, target: tuple[float, float]) -> dict:
    """Accuracy grows towards its target, cost is fixed: dominance is the same at every step."""
    accuracy, cost = target
    return {"training_iteration": iteration, "acc": accuracy * (1 - 0.5**iteration), "cost": cost}


def _trial(trial_id: str) -> Trial:
    return Trial("__fake", trial_id=trial_id, stub=True)


def _simulate(scheduler: MOASHA, targets, prefix: str = "t") -> list[int]:
    """Runs the targets one after another, as Tune does with max_concurrent_trials=1."""
    last = []
    for i, target in enumerate(targets):
        trial = _trial(f"{prefix}{i}")
        scheduler.on_trial_add(None, trial)
        for iteration in range(1, MAX_T + 1):
            result = _result(iteration, target)
            if scheduler.on_trial_result(None, trial, result) == STOP:
                break
        scheduler.on_trial_complete(None, trial, result)
        last.append(iteration)
    return last


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(grace_period=20, max_t=10), r"grace_period must be >= 1 and <= max_t \(got 20 > 10"),
        (dict(grace_period=0), r"grace_period must be >= 1 and <= max_t \(got 0 < 1\)"),
        (dict(max_t=0), r"max_t must be > 0 \(got 0\)"),
        (dict(reduction_factor=1), r"reduction_factor must be > 1 \(got 1\)"),
        (dict(modes=["max"]), r"modes must have one entry per metric \(got 1 modes for 2"),
        (dict(modes=["max", "minimize"]), r"mode of 'cost' must be 'min' or 'max' \(got 'minimi"),
        (dict(metrics="acc", modes="max"), r"metrics must be a list .* not a string"),
        (dict(metrics=[], modes=[]), r"metrics must name at least one metric"),
        (dict(metrics=["acc", "acc"]), r"metrics must be distinct"),
        (dict(tie_breaker="random"), r"tie_breaker must be 'crowding' or 'hypervolume'"),
        (
            dict(metrics=["a", "b", "c"], modes=["max", "min", "min"], tie_breaker="hypervolume"),
            r"tie_breaker='hypervolume' needs exactly 2 metrics \(got 3\)",
        ),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    arguments = {"metrics": ["acc", "cost"], "modes": ["max", "min"], **kwargs}
    with pytest.raises(ValueError, match="^MOASHA: " + message):
        MOASHA(**arguments)


def test_rungs_sit_below_max_t():
    milestones = lambda s: [r.milestone for r in reversed(s._rungs)]  # noqa: E731
    assert milestones(MOASHA(["a"], ["max"], max_t=9, grace_period=1, reduction_factor=3)) == [1, 3]
    assert milestones(MOASHA(["a"], ["max"], max_t=100)) == [1, 3, 9, 27, 81]
    assert milestones(MOASHA(["a"], ["max"], max_t=10, grace_period=10)) == []


def test_set_search_properties():
    scheduler = MOASHA(["acc", "cost"], ["max", "min"])
    assert scheduler.set_search_properties(None, None) is True
    assert scheduler.set_search_properties("acc", "max") is True  # for Tune's best result
    assert scheduler.set_search_properties("cost", None) is True
    assert scheduler.set_search_properties("acc", "min") is False
    assert scheduler.set_search_properties("loss", "min") is False
    assert scheduler.set_search_properties(None, "max") is False
    assert scheduler.metric is None  # so Tune does not check a single metric of its own


# --------------------------------------------------------------------------- rung decision rule


def test_rung_promotes_top_third_by_rank_then_crowding():
    rung = _Rung(1, np.array([-1.0, 1.0]), reduction_factor=3, tie_breaker="crowding")
    assert rung.promotes("b", (0.6, 20))  # 1 recorded < 3: promoted whatever it is
    assert rung.promotes("bad", (0.1, 99))  # 2 recorded < 3: promoted although dominated
    assert not rung.promotes("c", (0.5, 30))  # n=3, 1 slot: b is ahead (rank 0 vs 1)
    assert rung.promotes("a", (0.9, 60))  # rank 0; b and a are both extremes (infinite)
    assert not rung.promotes("a2", (0.9, 60))  # a copy of a adds nothing to the front: b and a ahead
    # n=6, 2 slots; front b, m, a (a2 a copy): the middle m has finite crowding, b and a infinite.
    assert not rung.promotes("m", (0.8, 40))
    assert rung.promotes("e", (0.95, 95))  # new extreme: infinite crowding, nothing ahead
    assert set(rung.recorded) == {"b", "bad", "c", "a", "a2", "m", "e"}


def test_rung_hypervolume_tie_breaker_prefers_the_larger_exclusive_area():
    rung = _Rung(1, np.array([-1.0, 1.0]), reduction_factor=3, tie_breaker="hypervolume")
    for trial_id, values in [("b", (0.6, 20)), ("a", (0.9, 60))]:
        assert rung.promotes(trial_id, values)
    # All three non-dominated; e adds little accuracy for much cost: least exclusive area.
    assert not rung.promotes("e", (0.92, 95))
    crowding = _Rung(1, np.array([-1.0, 1.0]), reduction_factor=3, tie_breaker="crowding")
    for trial_id, values in [("b", (0.6, 20)), ("a", (0.9, 60)), ("e", (0.92, 95))]:
        assert crowding.promotes(trial_id, values)  # e is an extreme: infinite crowding


def test_rung_nan_and_none_count_as_worst():
    rung = _Rung(1, np.array([1.0]), reduction_factor=2, tie_breaker="crowding")
    assert rung.promotes("x", (1.0,))
    assert not rung.promotes("nan", (math.nan,))
    assert not rung.promotes("none", (None,))
    assert rung.promotes("y", (0.5,))


# --------------------------------------------------------------------------- scheduler hooks


@pytest.mark.parametrize("tie_breaker", ["crowding", "hypervolume"])
def test_scheduler_stops_dominated_trials(tie_breaker):
    scheduler = MOASHA(["acc", "cost"], ["max", "min"], max_t=MAX_T, tie_breaker=tie_breaker)
    last = _simulate(scheduler, TARGETS)
    expected = [MAX_T if i in FRONT else 1 for i in range(len(TARGETS))]
    if tie_breaker == "hypervolume":
        expected[5] = 1  # E's exclusive area at rung 1 is the smallest of the front's three
    assert last == expected
    assert scheduler.debug_string().startswith(f"Using MOASHA ({tie_breaker}): num_stopped=10")


def test_scheduler_modes_decide_the_direction():
    # Same results, but with accuracy minimised and cost maximised, the ranking flips.
    scheduler = MOASHA(["acc", "cost"], ["min", "max"], max_t=MAX_T)
    targets = [(0.30, 90), (0.90, 20), (0.20, 95)]  # the first two are the "bad" ones now
    assert _simulate(scheduler, targets) == [MAX_T, MAX_T, MAX_T]
    assert _simulate(scheduler, [(0.95, 10)], prefix="late") == [1]


def test_scheduler_records_the_highest_milestone_reached():
    scheduler = MOASHA(["acc"], ["max"], time_attr="time_total_s", max_t=9)
    trial = _trial("t")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"time_total_s": 0.5, "acc": 0.1}) == CONTINUE
    assert scheduler.on_trial_result(None, trial, {"time_total_s": 5.0, "acc": 0.2}) == CONTINUE
    rung1, rung3 = scheduler._rungs[1], scheduler._rungs[0]
    assert "t" in rung3 and "t" not in rung1  # the skipped rung 1 is not filled in
    assert scheduler.on_trial_result(None, trial, {"time_total_s": 6.0, "acc": 0.0}) == CONTINUE
    assert rung3.recorded["t"] == pytest.approx([-0.2])  # the first result at rung 3 counts
    assert scheduler.on_trial_result(None, trial, {"time_total_s": 9.0, "acc": 0.3}) == STOP


def test_scheduler_skips_results_without_time_or_metrics(caplog):
    scheduler = MOASHA(["acc", "cost"], ["max", "min"], max_t=9)
    trial = _trial("t")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"acc": 0.1, "cost": 1}) == CONTINUE
    assert scheduler.on_trial_result(None, trial, {"training_iteration": 1, "acc": 0.1}) == CONTINUE
    assert "lacks metric(s) ['cost']" in caplog.text
    assert all(len(r.recorded) == 0 for r in scheduler._rungs)
    # At max_t the trial stops even without its metrics.
    assert scheduler.on_trial_result(None, trial, {"training_iteration": 9}) == STOP


def test_complete_records_early_finishers_and_remove_forgets_trial():
    scheduler = MOASHA(["acc"], ["max"], max_t=9)
    done, pending = _trial("done"), _trial("pending")
    for trial in (done, pending):
        scheduler.on_trial_add(None, trial)
    scheduler.on_trial_complete(None, done, {"training_iteration": 4, "acc": 0.7})
    assert scheduler._rungs[0].recorded["done"] == pytest.approx([-0.7])  # rung 3
    scheduler.on_trial_remove(None, pending)
    assert scheduler._live == set()


def test_save_and_restore(tmp_path):
    scheduler = MOASHA(["acc", "cost"], ["max", "min"], max_t=MAX_T)
    _simulate(scheduler, TARGETS[:4])
    scheduler.save(str(tmp_path / "scheduler.pkl"))
    restored = MOASHA(["x"], ["min"])
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert restored.metrics == ["acc", "cost"]
    assert restored.debug_string() == scheduler.debug_string()
    assert pickle.loads(pickle.dumps(scheduler)).debug_string() == scheduler.debug_string()


# --------------------------------------------------------------------------- one real Tune run


def _trainable(config):
    for iteration in range(1, MAX_T + 1):
        result = _result(iteration, TARGETS[config["index"]])
        tune.report({"acc": result["acc"], "cost": result["cost"]})


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray instance on loopback only; token authentication is left at its default.

    Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the host's routable address unless
    clusters are disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ``ray`` is
    imported, hence the constant is patched too). The workers cannot import this test module
    (it is not on their path), so its functions are pickled by value.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setenv("RAY_prestart_worker_first_driver", "0")     # no idle workers, as skipnet's init_ray
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
            yield
        finally:
            ray.shutdown()
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def tune_results(local_ray, tmp_path_factory):
    # No metric/mode in TuneConfig: MOASHA carries its own. One trial at a time (and reused
    # actors, to keep it at a few seconds) so that the front trials listed first reach every
    # rung first, whatever the workers' start-up times.
    tuner = tune.Tuner(
        _trainable,
        param_space={"index": tune.grid_search(list(range(len(TARGETS))))},
        tune_config=tune.TuneConfig(
            scheduler=MOASHA(["acc", "cost"], ["max", "min"], max_t=MAX_T, grace_period=1),
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path_factory.mktemp("tune")), name="moasha", verbose=0
        ),
    )
    return {r.config["index"]: r for r in tuner.fit()}


def test_tune_run_stops_dominated_and_keeps_the_front(tune_results):
    assert sorted(tune_results) == list(range(len(TARGETS)))
    assert all(r.error is None for r in tune_results.values())
    last = {i: r.metrics["training_iteration"] for i, r in tune_results.items()}
    assert {i for i, t in last.items() if t == MAX_T} == FRONT, last
    assert all(last[i] < MAX_T for i in set(last) - FRONT), last


def test_tune_refuses_a_conflicting_tune_config_metric(local_ray, tmp_path):
    tuner = tune.Tuner(
        _trainable,
        param_space={"index": 0},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", scheduler=MOASHA(["acc", "cost"], ["max", "min"])
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="conflict", verbose=0),
    )
    with pytest.raises(ValueError, match="already instantiated with their own `metric`"):
        tuner.fit()
