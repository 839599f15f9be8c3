"""Searches with real components: local Ray on 127.0.0.1 and a real MLflow server."""
import dataclasses

import pytest
from mlflow.tracking import MlflowClient

from skipnet.config import from_dict
from skipnet.tune.experiment import ExperimentConfig
from skipnet.tune.runner import run_search

TINY_TRAIN = {
    "stage": "pipeline", "model": {"arch": "cifar10_rnn_gate_38"},
    "data": {"name": "synthetic", "synthetic_size": 600, "synthetic_test_size": 100, "val_size": 100},
    "sp": {"batch_size": 16, "iterations": 4, "lr_milestones": [], "eval_every": 2},
    "hrl": {"batch_size": 16, "iterations": 4, "lr": 0.01, "eval_every": 2},
    "eval": {"batch_size": 100},
}
SPACE = {"hrl.alpha": {"type": "loguniform", "low": 1e-3, "high": 1.0},
         "hrl.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
         "model.gate": {"type": "choice", "values": ["feedforward_conv", "recurrent"]}}


def experiment(tmp_path, tracking_uri, name, **over):
    # share_sp off: these tests check scheduler and tracking mechanics on whole pipeline trials;
    # tests/tune/test_sharing.py covers shared SP
    data = {"name": name, "train": TINY_TRAIN, "search_space": SPACE, "share_sp": False,
            "budget": {"iterations_per_step": 2, "max_steps": 4}, "num_samples": 8, "max_concurrent_trials": 2,
            "storage_path": str(tmp_path / "searches"),
            "mlflow": {"tracking_uri": tracking_uri, "experiment_name": name}}
    data.update(over)
    return from_dict(ExperimentConfig, data).validate()


def children(client, summary):
    return client.search_runs(client.get_experiment_by_name(summary.search_id.rsplit("-", 2)[0]).experiment_id,
                              filter_string=f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'")


def test_asha_search_through_mlflow_server(tmp_path, mlflow_server, local_ray):
    exp = experiment(tmp_path, mlflow_server["url"], "asha-test",
                     scheduler={"type": "asha", "metric": "objective", "grace_period": 1, "reduction_factor": 2})
    summary = run_search(exp)
    assert summary.errors == 0 and len(summary.trials) == 8
    client = MlflowClient(mlflow_server["url"])
    parents = client.search_runs([client.get_experiment_by_name("asha-test").experiment_id],
                                 filter_string="tags.`skipnet.kind` = 'search'")
    assert len(parents) == 1 and parents[0].info.run_id == summary.parent_run_id
    assert {a.path for a in client.list_artifacts(summary.parent_run_id)} >= {"experiment.yaml", "search_space.yaml"}
    runs = children(client, summary)
    assert len(runs) == 8 and len({r.data.tags["trial_id"] for r in runs}) == 8
    stopped = 0
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert tags["architecture"] == "cifar10_rnn_gate_38" and tags["scheduler"] == "asha"
        assert tags["data_set"] == "synthetic" and tags["search_id"] == summary.search_id
        assert tags["gate"] in ("feedforward_conv", "recurrent") and params["model.gate"] == tags["gate"]
        assert params["sp.batch_size"] == "16" and "hrl.alpha" in params       # the full config
        history = client.get_metric_history(run.info.run_id, "val_top1")
        steps = [m.step for m in history]
        assert steps == list(range(1, len(steps) + 1))                    # every step, once
        stopped += tags["stopped_early"] == "true"
        assert (tags["stopped_early"] == "true") == (len(steps) < 4)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")       # uploaded through the server
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["checkpoint", "train_config.yaml"]
        # the checkpoint is the trial's last one: the model its last metrics describe
        assert tags["checkpoint_path"].endswith(f"checkpoint_{len(steps) - 1:06d}"), tags["checkpoint_path"]
    assert stopped >= 1, "ASHA stopped no trial"
    assert any(mlflow_server["artifacts"].rglob("engine.pt"))


def test_pbt_exploit_restores_the_donor_checkpoint(tmp_path, mlflow_server, local_ray):
    mutations = tmp_path / "mutations.yaml"
    mutations.write_text("hrl.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-2}\n"
                         "hrl.alpha: {type: loguniform, low: 1.0e-3, high: 1.0}\n")
    exp = experiment(tmp_path, mlflow_server["url"], "pbt-test", num_samples=4,
                     budget={"iterations_per_step": 2, "max_steps": 4},
                     scheduler={"type": "pbt", "metric": "objective", "perturbation_interval": 1,
                                "quantile_fraction": 0.5, "mutations": str(mutations)})
    summary = run_search(exp)
    assert summary.errors == 0
    client = MlflowClient(mlflow_server["url"])
    runs = {r.data.tags["trial_id"]: r for r in children(client, summary)}
    exploits = []
    from ray.tune import ExperimentAnalysis
    analysis = ExperimentAnalysis(summary.path)
    configs = {t.trial_id: t.config for t in analysis.trials}
    for trial_id, frame in analysis.trial_dataframes.items():
        for donor in frame.get("restored_from", []):
            if isinstance(donor, str) and donor:
                exploits.append((trial_id, donor))
    assert exploits, "no PBT exploit restored a donor checkpoint"
    for trial_id, donor in exploits:
        assert donor in configs and donor != trial_id
    # a restored checkpoint of another gate type would fail to load (other parameter names):
    # no error above means the gate type travelled with the donor's weights
    assert len(runs) == 4


def test_optuna_multi_objective_search(tmp_path, mlflow_server, local_ray):
    exp = experiment(tmp_path, mlflow_server["url"], "mo-test", num_samples=4,
                     budget={"iterations_per_step": 4, "max_steps": 2},
                     searcher={"type": "optuna-mo"}, scheduler={"type": "fifo"})
    summary = run_search(exp)
    assert summary.errors == 0 and len(summary.trials) == 4
    for row in summary.trials:
        assert row["val_top1"] is not None and row["val_computation_pct"] is not None
        assert 1e-3 <= row["config"]["hrl.alpha"] <= 1.0 or 1e-3 <= row["config"]["hrl"]["alpha"] <= 1.0
    client = MlflowClient(mlflow_server["url"])
    assert len(children(client, summary)) == 4


def test_random_searcher_samples_the_same_trials_under_every_scheduler(tmp_path, local_ray):
    """Seeded: FIFO and ASHA (which draws from numpy's global state too) get identical trials."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from skipnet.tune.runner import _search, load_space

    def trainable(config):                       # local: pickled by value for the workers
        for step in range(3):
            tune.report({"score": float(step)})

    def sampled(scheduler, name):
        exp = experiment(tmp_path, "sqlite:///unused.db", name, num_samples=6)
        search_alg, space = _search(exp, load_space(exp))
        results = tune.Tuner(trainable, param_space=space,
                             tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=6,
                                                         metric="score", mode="max"),
                             run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0)).fit()
        return sorted(str(sorted(r.config.items())) for r in results)

    first = sampled(None, "seeded-fifo")
    assert first == sampled(ASHAScheduler(max_t=3, grace_period=1), "seeded-asha")
    assert len(set(first)) == 6
