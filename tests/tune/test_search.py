"""Searches with real components: local Ray on 127.0.0.1 and a real MLflow server."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from multinode import descendants

from skipnet import export
from skipnet.cli import _schedule
from skipnet.core.config import from_dict
from skipnet.fronts import analysis
from skipnet.fronts.pareto import is_pareto_front
from skipnet.tracking import runs, ui
from skipnet.tune.experiment import ExperimentConfig
from skipnet.tune.pbt import DECISIONS_FILE, front_ends, population_order
from skipnet.tune.runner import finished_search, read_search_meta, run_search
from skipnet.tune.trainable import weights_digest

# A SkipNet-20: the search tests check mechanics, not what is learnt, and a trial of the
# ResNet-38 took about twice the compute (4.4-5.1 s against 2.3-2.7 s of training and evaluation, one thread).
# test_fronts_export's FIFO search keeps an authors' name (cifar10_rnn_gate_38).
TINY_TRAIN = {
    "stage": "pipeline", "model": {"arch": "cifar10_skipnet_20_recurrent"},
    "data": {"name": "synthetic", "synthetic_size": 600, "synthetic_test_size": 100, "val_size": 100},
    "sp": {"batch_size": 16, "iterations": 4, "lr_milestones": [], "eval_every": 2},
    "hrl": {"batch_size": 16, "iterations": 4, "lr": 0.01, "eval_every": 2},
    "eval": {"batch_size": 100, "gate_thresholds": []},     # no threshold sweep (test_fronts_export's FIFO has one)
}
SPACE = {"hrl.alpha": {"type": "loguniform", "low": 1e-3, "high": 1.0},
         "hrl.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
         "model.gate": {"type": "choice", "values": ["feedforward_conv", "recurrent"]}}


def description_table(text):
    """The front table of a parent run's description: (headers, rows of cells), each cell
    without the padding that keeps MLflow's cells apart (``analysis.CELL_GAP``)."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ... ")]
    raw = [line.strip()[2:-2].split(" | ") for line in lines]
    assert raw and all(c.endswith(analysis.CELL_GAP) for row in raw for c in row), text[:500]     # every cell padded
    cells = [[c[:-len(analysis.CELL_GAP)].replace("&nbsp;", " ").strip() for c in row] for row in raw]
    assert cells[0][0] == "trial" and {len(row) for row in cells} == {len(cells[0])}, text[:500]
    return cells[0], cells[1:]


def row_trial(cell):
    """The trial id of a front table's first cell (``**[ID](link)** · same point: ...``; bold: the knee)."""
    return re.match(r"\**\[?([\w@.-]+)", cell).group(1)


def description_commands(text):
    """The export commands of a parent run's description: (store URI or None, [(trial id and
    remark, command line)]), each command under its ``# trial`` line."""
    lines = text.split("```")[1].strip().splitlines()
    uri = lines.pop(0).split("=", 1)[1] if lines[0].startswith("export MLFLOW_TRACKING_URI=") else None
    assert len(lines) % 2 == 0 and all(line.startswith("# ") for line in lines[::2]), lines
    return uri, [(remark[2:], command) for remark, command in zip(lines[::2], lines[1::2])]


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


def ray_workers_below(pid: int) -> list[str]:
    """The command lines of the Ray worker processes below ``pid``: a worker starts as
    ``python .../default_worker.py`` and names itself ``ray::IDLE`` until it runs a task or an actor."""
    workers = []
    for child in descendants(pid) - {pid}:
        try:
            argv = (Path("/proc") / str(child) / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if argv[0].startswith("ray::IDLE") or (len(argv) > 1 and argv[1].endswith("default_worker.py")):
            workers.append(" ".join(argv))
    return workers


def test_a_local_ray_starts_no_idle_workers(local_ray):
    """Ray prestarts one worker per CPU for the first driver unless told not to; Tune's trial
    actors never use them (first in this module: the fixture's Ray has run nothing yet)."""
    import time
    deadline = time.monotonic() + 3.0            # prestarted workers appear within a second of ray.init
    while time.monotonic() < deadline:
        assert ray_workers_below(os.getpid()) == []
        time.sleep(0.2)


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
        assert tags["architecture"] == TINY_TRAIN["model"]["arch"] and tags["scheduler"] == "asha"
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
        # Ray's bookkeeping (pid, node, clocks) is no metric; what the model did is
        assert not {"pid", "timestamp", "time_since_restore", "iterations_since_restore"} & run.data.metrics.keys()
        assert {"val_top1", "training_iteration", "time_this_iter_s"} <= run.data.metrics.keys()
        # the checkpoint is the trial's last one: the model its last metrics describe
        assert tags["checkpoint_path"].endswith(f"checkpoint_{len(steps) - 1:06d}"), tags["checkpoint_path"]
    assert stopped >= 1, "ASHA stopped no trial"
    assert any(mlflow_server["artifacts"].rglob("engine.pt"))


def trial_results(summary) -> dict[str, list[dict]]:
    """Every result each trial reported, in order, from Tune's result.json files."""
    out = {}
    for path in Path(summary.path).glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def decisions(summary) -> list[dict]:
    path = Path(summary.path) / DECISIONS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def saved_digests(summary, trial_id) -> set[str]:
    """The weights digest of every checkpoint a trial saved."""
    trial_dir = next(p for p in Path(summary.path).iterdir() if p.is_dir() and trial_id in p.name)   # not pbt_policy_*.txt
    return {weights_digest(torch.load(f, map_location="cpu", weights_only=False)["model"])
            for f in trial_dir.glob("checkpoint_*/engine.pt")}


def check_exploits(summary, results, alpha_range, lr_range) -> list[dict]:
    """What every PBT variant must show; returns the exploits."""
    def gate_of(row):                             # None: the gate is not searched, one family
        return row["config"].get("model", {}).get("gate")
    gate = {tid: gate_of(rows[0]) for tid, rows in results.items()}
    for tid, rows in results.items():
        assert [r["training_iteration"] for r in rows] == list(range(1, len(rows) + 1))   # no gap, no repeat
        assert {gate_of(r) for r in rows} == {gate[tid]}                                  # never mutated
        for r in rows:
            assert alpha_range[0] <= r["alpha"] <= alpha_range[1]
            assert lr_range[0] <= r["config"]["hrl"]["lr"] <= lr_range[1]
        schedule = json.loads(rows[-1]["hyperparameter_schedule"])
        assert schedule[-1]["hrl.alpha"] == rows[-1]["alpha"] and schedule[-1]["hrl.lr"] == rows[-1]["config"]["hrl"]["lr"]
    exploits = [d for d in decisions(summary) if d["donor"]]
    assert exploits, "no PBT exploit happened"
    for d in exploits:
        trial, donor = d["trial"], d["donor"]
        assert gate[donor] == gate[trial] and d["family"] == gate[trial]                  # within the family
        after = next(r for r in results[trial] if r["training_iteration"] == d["time"] + 1)
        assert after["restored_from"] == donor
        # its weights are the donor's, as the donor saved them (not its own, as Ray's race left them)
        assert after["restored_weights"] in saved_digests(summary, donor)
        assert after["restored_weights"] not in saved_digests(summary, trial)
        assert any(seg.get("cloned_from") == donor for seg in json.loads(after["hyperparameter_schedule"]))
    return exploits


PBT_SPACE = {"hrl.alpha": {"type": "loguniform", "low": 1e-3, "high": 1.0},
             "hrl.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
             "model.gate": {"type": "grid", "values": ["feedforward_conv", "recurrent"]}}


def test_pbt_population_of_four_exploits_within_each_gate_family(tmp_path, mlflow_server, local_ray):
    mutations = tmp_path / "mutations.yaml"
    mutations.write_text("hrl.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-2}\n"
                         "hrl.alpha: {type: loguniform, low: 1.0e-3, high: 1.0}\n")
    exp = experiment(tmp_path, mlflow_server["url"], "pbt-test", num_samples=2, search_space=PBT_SPACE,
                     budget={"iterations_per_step": 2, "max_steps": 4},
                     scheduler={"type": "pbt", "metric": "objective", "perturbation_interval": 1,
                                "quantile_fraction": 0.5, "mutations": str(mutations)})
    summary = run_search(exp)
    assert summary.errors == 0
    results = trial_results(summary)
    assert sorted(rows[0]["config"]["model"]["gate"] for rows in results.values()) == \
        ["feedforward_conv", "feedforward_conv", "recurrent", "recurrent"]
    exploits = check_exploits(summary, results, (1e-3, 1.0), (1e-3, 3e-2))
    for d in decisions(summary):                  # scalar PBT: quantiles by the objective, within the family
        order = sorted(d["points"], key=lambda t: -d["points"][t][0])
        n = min(math.ceil(len(order) * 0.5), len(order) // 2)
        assert d["upper"] == order[:n] and d["lower"] == (order[len(order) - n:] if n else [])
    client = MlflowClient(mlflow_server["url"])
    trial_runs = {r.data.tags["trial_id"]: r for r in children(client, summary)}
    assert len(trial_runs) == 4
    for d in exploits:                            # the history is on the trial's MLflow run
        assert trial_runs[d["trial"]].data.tags["hyperparameter_schedule"] == results[d["trial"]][-1]["hyperparameter_schedule"]
    # an export says what the trial went through: the schedule, not reproducible unless untouched
    points = {p.trial_id: p for p in runs.search_trials(client, client.get_run(summary.parent_run_id))}
    for trial_id, run in trial_runs.items():
        schedule = _schedule(run)
        doc = export.export_document(points[trial_id], runs.download_train_config(client, run.info.run_id, tmp_path),
                                     selected_by="test", experiment="pbt-test", tracking_uri=mlflow_server["url"],
                                     checkpoint_uri=None, code_version="test", scheduler="pbt", schedule=schedule)
        section = doc[export.EXPORT_KEY]
        assert section["schedule"] == schedule and section["checkpoint"]["tune_path"]
        assert section["provenance"]["reproducible"] == (trial_id not in {d["trial"] for d in exploits})
        assert (doc["hrl"]["alpha"], doc["hrl"]["lr"]) == (schedule[-1]["hrl.alpha"], schedule[-1]["hrl.lr"])
        assert doc["hrl"]["alpha"] == results[trial_id][-1]["alpha"]


def dominates(a, b) -> bool:
    """(accuracy, computation) ``a`` is at least as good as ``b`` on both and better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


# The population starts on a grid of gate costs at both ends of this test's trade-off (16 HRL
# iterations from an SP of 64 %, measured): alpha <= 3 executes nearly every block, alpha >= 8
# soon skips every one (13.3 % computation), alpha 4-8 wanders between. The SP trains 120
# iterations: after 60 it is on the steep part of its curve (44 % in this search, 25 % when
# evaluated at other points, 47-68 % by 80-120), and from the 44 % SP skipping every block was as
# accurate as running them (38-43 % at both ends: a one-point front, and the test failed).
# Drawn at random, the six alphas could all fall on one side, and the front with them; a member
# at a wandering alpha can be the front's accurate end at one perturbation and collapse by the next.
# When members copied any top member, those near 100 % copied the collapsed ones too (all six
# ended at 13.3 %, 20-31 %): a member now copies only one that dominates it (skipnet.tune.pbt).
MOPBT_ALPHA = (0.3, 30.0)
MOPBT_START = [0.5, 1.0, 2.0, 12.0, 16.0, 24.0]


@pytest.fixture(scope="module")
def mopbt(tmp_path_factory, mlflow_server, local_ray):
    """An MO-PBT search of six members that exploit each other (the tests below share it)."""
    tmp_path = tmp_path_factory.mktemp("mopbt")
    mutations = tmp_path / "mutations.yaml"
    mutations.write_text("hrl.lr: {type: loguniform, low: 5.0e-3, high: 2.0e-2}\n"
                         f"hrl.alpha: {{type: loguniform, low: {MOPBT_ALPHA[0]}, high: {MOPBT_ALPHA[1]}}}\n")
    space = {"hrl.alpha": {"type": "grid", "values": MOPBT_START},
             "hrl.lr": {"type": "loguniform", "low": 5e-3, "high": 2e-2}}
    # an SP good enough that alpha trades accuracy for computation, shared by the population
    train = dict(TINY_TRAIN, sp={"batch_size": 32, "iterations": 120, "lr_milestones": [], "eval_every": 120},
                 hrl={"batch_size": 16, "iterations": 16, "lr": 0.01, "eval_every": 4})
    exp = experiment(tmp_path, mlflow_server["url"], "mopbt-test", num_samples=1, search_space=space, train=train,
                     share_sp=True, budget={"iterations_per_step": 4, "max_steps": 4},
                     scheduler={"type": "mopbt", "perturbation_interval": 1, "mutations": str(mutations)})
    summary = run_search(exp)
    assert summary.errors == 0
    return summary


def test_mopbt_exploits_by_pareto_rank_and_keeps_a_spread_front(mopbt, mlflow_server):
    summary = mopbt
    results = trial_results(summary)
    assert len(results) == 6
    check_exploits(summary, results, MOPBT_ALPHA, (5e-3, 2e-2))
    reported = {tid: {(r["val_top1"], r["val_computation_pct"]) for r in rows} for tid, rows in results.items()}
    for d in decisions(summary):                  # replay: the rule gives the recorded quantiles
        ids = list(d["points"])
        assert all(tuple(d["points"][t]) in reported[t] for t in ids)     # ranked on what trials reported
        points = np.array([d["points"][t] for t in ids])
        order = [ids[i] for i in population_order(points, ["max", "min"])]
        n = min(math.ceil(len(order) * 0.25), len(order) // 2)
        # the bottom quantile less the first front's ends (a copy tied with an end is an end too)
        protected = {ids[i] for i in front_ends(points, ["max", "min"])}
        bottom = order[len(order) - n:] if n else []
        assert d["upper"] == order[:n] and d["lower"] == [t for t in bottom if t not in protected]
        assert set(d["candidates"]) <= set(d["upper"]) and (d["trial"] in d["lower"] or not d["candidates"])
        # a member copies a top member (with a checkpoint) that dominates it; none: it keeps training
        dominating = [t for t in d["candidates"] if dominates(d["points"][t], d["points"][d["trial"]])]
        assert d["donor"] in dominating if dominating else d["donor"] is None, d
        # the front's two ends (most accurate, least computation) are never exploited away
        ends = {ids[min(range(len(ids)), key=lambda i: (-points[i, 0], points[i, 1]))],     # ties: the dominating one
                ids[min(range(len(ids)), key=lambda i: (points[i, 1], -points[i, 0]))]}
        assert not ends & set(d["lower"]), d
    # so the population ends spread along the trade-off, not cloned onto one point (with 100
    # validation images the accuracies between the ends are too noisy to count points on)
    final = np.array([[rows[-1]["val_top1"], rows[-1]["val_computation_pct"]] for rows in results.values()])
    final_front = final[is_pareto_front(final, ["max", "min"])]
    assert len(final_front) >= 2 and np.ptp(final_front[:, 1]) >= 30, final     # seen: 45-86 points
    # the front as MLflow shows it: each point once, copies of it named beside it
    client = MlflowClient(mlflow_server["url"])
    front = analysis.analyse(summary.search_id, summary.parent_run_id,
                             runs.search_trials(client, client.get_run(summary.parent_run_id)))
    points = [(t.accuracy, t.computation) for t in front.front]
    assert len(set(points)) == len(points)
    on_front = {t.trial_id for t, r in zip(front.trials, front.rank) if r == 0}
    assert on_front == {t.trial_id for t in front.front} | {c for cs in front.copies.values() for c in cs}
    _, rows = description_table(client.get_run(summary.parent_run_id).data.tags[ui.NOTE])
    assert len(rows) == len(front.front)
    # and as `skipnet pareto` prints it: one row per point, the trials sharing it named on its row
    result = subprocess.run([sys.executable, "-m", "skipnet", "pareto", summary.search_id, "--no-log",
                             "--tracking-uri", mlflow_server["url"]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = {line.split()[0]: line for line in result.stdout.splitlines()
               if line.startswith("  ") and len(line.split()) > 4 and line.split()[0] in on_front}
    assert set(printed) == {t.trial_id for t in front.front}, result.stdout
    for trial_id, line in printed.items():
        others = front.copies.get(trial_id)
        assert line.endswith(f"(same point: {' '.join(others)})") if others else "same point" not in line, line


def test_mopbt_members_keep_training_side_by_side_on_the_two_warm_actors(mopbt):
    """Each member that pauses at a perturbation hands its actor to the next member (Tune's
    ``reset_config``): the population trains on as many actors as CPUs, two at a time, to the
    end. Tune 2.60 alone killed a paused member's actor whenever no other member was staged
    (its search algorithm counts as finished once it handed out the population): here every
    round after the first then trained on one actor, one member at a time, while a second one
    started and was dropped (``skipnet.tune.pbt.PopulationGenerator``)."""
    results = trial_results(mopbt)
    rounds: dict[int, set[int]] = {}
    for rows in results.values():
        for row in rows:
            rounds.setdefault(row["training_iteration"], set()).add(row["pid"])
    assert len(set().union(*rounds.values())) == 2, rounds      # two actors for the whole search
    assert all(len(pids) == 2 for pids in rounds.values()), rounds


def final_values(rows) -> tuple[float, float]:
    """(alpha, lr) a trial ended with: what its last report was trained with."""
    last = json.loads(rows[-1]["hyperparameter_schedule"])[-1]
    return last["hrl.alpha"], last["hrl.lr"]


def test_mopbt_trials_list_the_hyperparameters_they_ended_with(mopbt, mlflow_server):
    """An exploited member's alpha and lr in MLflow (its params), in the trials that ``skipnet
    pareto`` and ``skipnet export`` read and in the parent run's front table are the values it
    ended with, not those it started with (params cannot change: they are logged at its end)."""
    results = trial_results(mopbt)
    client = MlflowClient(mlflow_server["url"])
    trial_runs = {r.data.tags["trial_id"]: r for r in children(client, mopbt)}
    changed = [tid for tid, rows in results.items()
               if final_values(rows) != (rows[0]["config"]["hrl"]["alpha"], rows[0]["config"]["hrl"]["lr"])]
    assert changed, "no member's hyperparameters changed"
    points = {p.trial_id: p for p in runs.search_trials(client, client.get_run(mopbt.parent_run_id))}
    for tid, rows in results.items():
        alpha, lr = final_values(rows)
        params = trial_runs[tid].data.params
        assert (params["hrl.alpha"], params["hrl.lr"]) == (str(alpha), str(lr)), tid
        assert (points[tid].config["hrl.alpha"], points[tid].config["hrl.lr"]) == (str(alpha), str(lr))
    text = client.get_run(mopbt.parent_run_id).data.tags[ui.NOTE]
    headers, table = description_table(text)
    listed = [row_trial(row[0]).split("@")[0] for row in table]
    for tid, row in zip(listed, table):
        cell = dict(zip(headers, row))
        alpha, lr = final_values(results[tid])
        assert (cell["alpha"], cell["lr"]) == (f"{alpha:.4g}", f"{lr:.4g}"), tid
    # right below the table, the schedule of each listed trial whose alpha or lr changed
    below = text.split(analysis.SCHEDULES_HEAD)[1].split("Retrains:")[0] if analysis.SCHEDULES_HEAD in text else ""
    scheduled = {re.match(r"- \[?([\w.-]+)", line).group(1): line.split(": ", 1)[1]
                 for line in below.splitlines() if line.startswith("- ")}
    expected = {tid: analysis.schedule_text(json.loads(results[tid][-1]["hyperparameter_schedule"])) for tid in listed}
    assert scheduled == {tid: text for tid, text in expected.items() if text}
    assert not scheduled or text.rindex("&nbsp; |") < text.index(analysis.SCHEDULES_HEAD)


def test_mopbt_summary_says_what_exporting_its_knee_gives(mopbt, capsys):
    """The search summary's last line tells to retrain the knee's export only when retraining
    reproduces it: not when PBT changed the knee's hyperparameters or weights."""
    from skipnet import cli
    capsys.readouterr()
    cli._print_summary(mopbt)
    out = capsys.readouterr().out
    knee_id = next(line.split()[0] for line in out.split("\nfront: ")[1].splitlines() if "<- knee" in line)
    rows = trial_results(mopbt)[knee_id.split("@")[0]]
    changed = len(json.loads(rows[-1]["hyperparameter_schedule"])) > 1
    (hint,) = [line for line in out.splitlines() if line.startswith("export the knee:")]
    assert ("then: skipnet train --config best.yaml" in hint) is not changed, (knee_id, hint)


def test_mopbt_export_of_an_exploited_trial_says_one_thing(mopbt, mlflow_server, tmp_path):
    """``skipnet export`` of an exploited member, its file and the parent run's description say
    the same: retraining does not reproduce it, its model is its checkpoint."""
    client = MlflowClient(mlflow_server["url"])
    trial_runs = {r.data.tags["trial_id"]: r for r in children(client, mopbt)}
    exploited = sorted(tid for tid, run in trial_runs.items() if len(_schedule(run)) > 1)      # its schedule changed
    assert exploited
    trials = runs.search_trials(client, client.get_run(mopbt.parent_run_id))
    shown = {t.trial_id for t in analysis.analyse(mopbt.search_id, mopbt.parent_run_id, trials).front}
    trial_id = next((tid for tid in exploited if tid in shown), exploited[0])      # on the front if one is
    out = tmp_path / "exported.yaml"
    result = subprocess.run([sys.executable, "-m", "skipnet", "export", mopbt.search_id, "--trial", trial_id,
                             "-o", str(out), "--tracking-uri", mlflow_server["url"]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reproduce it: skipnet train" not in result.stdout.lower()
    assert f"runs:/{trial_runs[trial_id].info.run_id}/checkpoint" in result.stdout
    point = next(t for t in trials if t.trial_id == trial_id)
    verdict = point.reproducibility
    assert not verdict.reproducible and "MO-PBT" in verdict.sentence and verdict.sentence in result.stdout
    file = out.read_text()
    provenance = yaml.safe_load(file)["export"]["provenance"]
    assert provenance["reproducible"] is False and provenance["note"] == verdict.sentence
    header = [line for line in file.splitlines() if line.startswith("#")]
    assert verdict.sentence in " ".join(header) and "reproduce it: skipnet train" not in " ".join(header).lower()
    text = client.get_run(mopbt.parent_run_id).data.tags[ui.NOTE]
    assert "retrains it" not in text and (trial_id not in shown or verdict.sentence in text)
    headers, rows = description_table(text)
    for row in rows:
        t = next(p for p in trials if p.trial_id == row_trial(row[0]))
        assert dict(zip(headers, row))["retrains"] == analysis.RETRAIN[t.reproducibility.reproducible]


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
    """Seeded: FIFO and ASHA (which draws from numpy's global state too) get identical trials.
    (Actors reused, as a search reuses them: 2 worker processes a fit, not one per trial.)"""
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
                                                         metric="score", mode="max", reuse_actors=True),
                             run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0)).fit()
        return sorted(str(sorted(r.config.items())) for r in results)

    first = sampled(None, "seeded-fifo")
    assert first == sampled(ASHAScheduler(max_t=3, grace_period=1), "seeded-asha")
    assert len(set(first)) == 6


def test_failed_trial_is_listed_with_its_error_and_the_search_exits_1(tmp_path, mlflow_server, local_ray, capsys):
    """A trial that fails for real (CIFAR-10 asked for, no CIFAR-10 on disk) beside one that
    trains: the summary lists both, the failed one with its error's own line and its error file,
    and the command's status is 1 with one line on stderr."""
    from skipnet import cli
    train = dict(TINY_TRAIN, data=dict(TINY_TRAIN["data"], root=str(tmp_path / "no-cifar-here")))
    exp = experiment(tmp_path, mlflow_server["url"], "failed-trial", train=train, num_samples=1, max_failures=0,
                     search_space={"data.name": {"type": "grid", "values": ["synthetic", "cifar10"]}},
                     searcher={"type": "grid"}, budget={"iterations_per_step": 2, "max_steps": 1})
    summary = run_search(exp)
    capsys.readouterr()
    cli._print_summary(summary)
    status = cli._search_status(summary, "search")
    out, err = capsys.readouterr()
    assert status == 1 and summary.errors == 1 and len(summary.trials) == 2
    assert err.strip().splitlines() == ["skipnet search: 1 of 2 trials failed (listed above with their error files)"]
    (failed,) = [r for r in summary.trials if r["error"]]
    (line,) = [line for line in out.splitlines() if line.strip().startswith(f"FAILED {failed['trial_id']}: ")]
    assert failed["trial_id"] and line.split(": ", 1)[1].startswith("skipnet.errors.ConfigError: data.root: must be "
                                                                    "an existing directory holding cifar-10"), out
    error_file = Path(out.split("error file: ")[1].split()[0])
    assert error_file.is_file() and "cifar-10-batches-py" in error_file.read_text()
    assert "search failed-trial-" in out and "front:" in out           # the rest of the summary is there
    client = MlflowClient(mlflow_server["url"])
    assert sorted(r.info.status for r in children(client, summary)) == ["FAILED", "FINISHED"]
    # finished, but with a failed trial: a resume goes through Tune, which retries that trial
    assert finished_search(summary.path, *read_search_meta(summary.path)) is None
