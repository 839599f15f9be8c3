"""Shared SP with real components: a pipeline search of 6 trials over 2 gate types on the
synthetic data set, a local Ray on 127.0.0.1 and the test MLflow server."""
import dataclasses

import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from skipnet.core.config import flatten, load_train_config
from skipnet.core.train import Engine
from skipnet.tune import runner
from skipnet.tune.runner import run_search, search_cost
from skipnet.tune.sharing import plan_sharing, read_sp_state, sp_key
from skipnet.tune.spaces import SearchSpace
from skipnet.tune.trainable import weights_digest
from test_search import SPACE, TINY_TRAIN, experiment

SP_ITERATIONS, HRL_ITERATIONS = TINY_TRAIN["sp"]["iterations"], TINY_TRAIN["hrl"]["iterations"]


@pytest.fixture(scope="module")
def shared(mlflow_server, local_ray, tmp_path_factory):
    exp = experiment(tmp_path_factory.mktemp("sharing"), mlflow_server["url"], "share-test", num_samples=6,
                     share_sp=True)
    return exp, run_search(exp)


def results(summary):
    analysis = ExperimentAnalysis(summary.path)
    return {t.trial_id: analysis.trial_dataframes[t.trial_id] for t in analysis.trials}


def test_six_trials_over_two_gate_types_train_exactly_two_sp_runs(shared):
    exp, summary = shared
    assert summary.errors == 0 and len(summary.trials) == 6 and summary.sp_runs == 2
    assert {r["config"]["model"]["gate"] for r in summary.trials} == {"feedforward_conv", "recurrent"}
    cost = search_cost(summary.path)                     # every iteration any trial actually ran
    assert cost == {"sp": 2 * SP_ITERATIONS, "hrl": 6 * HRL_ITERATIONS}
    for frame in results(summary).values():              # the searched trials trained HRL only
        assert set(frame["stage"]) == {"hrl"} and frame["iteration"].min() > SP_ITERATIONS


def test_every_trial_starts_from_the_sp_result_of_its_configuration(shared):
    exp, summary = shared
    sp_of_gate = {}
    for trial_id, frame in results(summary).items():
        uri = frame["sp_checkpoint"].iloc[0]
        state = read_sp_state(uri)
        assert state["stage_index"] == 0 and state["iteration"] == SP_ITERATIONS      # the end of SP
        assert set(frame["start_weights"]) == {weights_digest(state["model"])}
        gate = state["config"]["model"]["gate"]
        sp_of_gate.setdefault(gate, set()).add(uri)
    assert {g: len(u) for g, u in sp_of_gate.items()} == {"feedforward_conv": 1, "recurrent": 1}
    for row in summary.trials:                            # the trial's gate is its SP's gate
        frame = results(summary)[row["trial_id"]]
        assert frame["sp_checkpoint"].iloc[0] in sp_of_gate[row["config"]["model"]["gate"]]


def test_a_shared_trial_equals_the_same_pipeline_trained_in_one_piece(shared):
    """Sharing changes the cost, not the model: SP then HRL in one engine gives the same numbers."""
    exp, summary = shared
    row = summary.trials[0]
    cfg = load_train_config(None, flatten(row["config"]), base=exp.base_train())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                              # as the trial (1 CPU)
    try:
        engine = Engine(dataclasses.replace(cfg, output_dir="unused"))
        while not engine.done:
            engine.train(exp.budget.iterations_per_step)
        metrics = engine.evaluate("val")
    finally:
        torch.set_num_threads(threads)
    assert metrics["val_top1"] == row["val_top1"]
    assert metrics["val_computation_pct"] == pytest.approx(row["val_computation_pct"], abs=1e-9)


def test_mlflow_shows_the_lineage_and_the_cost(shared, mlflow_server):
    exp, summary = shared
    client = MlflowClient(mlflow_server["url"])
    experiment_id = client.get_run(summary.parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'")
    sp_runs = {r.info.run_id: r for r in runs if r.data.tags.get("role") == "sp"}
    trials = [r for r in runs if r.data.tags.get("role") == "hrl"]
    assert len(sp_runs) == 2 and len(trials) == 6 and len(runs) == 8
    assert {r.data.tags["gate"] for r in sp_runs.values()} == {"feedforward_conv", "recurrent"}
    for sp in sp_runs.values():
        assert sp.info.status == "FINISHED" and sp.data.metrics["iteration"] == SP_ITERATIONS
    for trial in trials:
        sp = sp_runs[trial.data.tags["sp_run_id"]]                 # names the SP run it started from
        assert sp.data.tags["gate"] == trial.data.tags["gate"]
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["search_sp_iterations"] == 2 * SP_ITERATIONS
    assert parent.data.metrics["search_hrl_iterations"] == 6 * HRL_ITERATIONS
    assert parent.data.metrics["search_wall_time_s"] > 0
    # the live front's steps are compute spent, the SP phase's included: the last one is the whole cost
    steps = [m.step for m in client.get_metric_history(summary.parent_run_id, "pareto_hypervolume_pct")]
    assert steps and min(steps) > 2 * SP_ITERATIONS and max(steps) == 2 * SP_ITERATIONS + 6 * HRL_ITERATIONS


def test_resume_of_the_finished_search_reads_it_from_storage(shared, monkeypatch):
    """Nothing left to train: the summary, SP runs included, comes from the search's storage
    without Ray (``finished_search``)."""
    exp, summary = shared
    monkeypatch.setattr(runner, "init_ray", lambda *a, **k: pytest.fail("resuming a finished search started Ray"))
    resumed = runner.resume_search(summary.path)
    assert resumed.finished_already and resumed.sp_runs == 2 and resumed.scheduler == summary.scheduler
    assert {r["trial_id"]: r for r in resumed.trials} == {r["trial_id"]: r for r in summary.trials}


def test_sharing_plan_follows_the_search_space(tmp_path):
    exp = experiment(tmp_path, "sqlite:///unused.db", "plan", share_sp=True)
    plan, _ = plan_sharing(exp, SearchSpace.from_dict(SPACE))
    assert plan.variants == [{"model.gate": "feedforward_conv"}, {"model.gate": "recurrent"}]
    grid = dict(SPACE, **{"sp.lr": {"type": "grid", "values": [0.1, 0.05]}})
    plan, _ = plan_sharing(exp, SearchSpace.from_dict(grid))
    assert len(plan.variants) == 4                                   # each distinct SP value gets its own SP
    continuous = dict(SPACE, **{"sp.lr": {"type": "loguniform", "low": 0.01, "high": 0.1}})
    plan, reason = plan_sharing(exp, SearchSpace.from_dict(continuous))
    assert plan is None and "sp.lr" in reason                        # no two trials share an SP
    off = dataclasses.replace(exp, share_sp=False)
    assert plan_sharing(off, SearchSpace.from_dict(SPACE))[0] is None


def test_sp_key_ignores_hrl_settings_only():
    a = load_train_config(None, {"hrl.alpha": 0.1, "output_dir": "a"})
    assert sp_key(a) == sp_key(load_train_config(None, {"hrl.alpha": 2.0, "hrl.lr": 0.5, "output_dir": "b"}))
    for change in ({"model.gate": "feedforward_fc"}, {"sp.lr": 0.05}, {"seed": 1}, {"data.synthetic_size": 500}):
        assert sp_key(a) != sp_key(load_train_config(None, change))
