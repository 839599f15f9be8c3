"""Fronts, export and MLflow outages with real components: two searches on the synthetic data
set (FIFO with the default threshold sweep, so its trials are curves; MOASHA one trial at a
time, without), a real MLflow server, the real CLI."""
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from conftest import MLflowServer
from skipnet.export import export_document, reproducing_config, write_export
from skipnet.fronts import analysis, pareto
from skipnet.tracking import runs, ui
from skipnet.tune import runner
from skipnet.tune.runner import init_ray, resume_search, run_search
from skipnet.tune.sync import sync_mlflow
from test_live_front import assert_front_shown
from test_search import SPACE, TINY_TRAIN, description_commands, description_table, experiment, row_trial

FAKE_SECRET = "AKIA-fake-secret-do-not-log-7f3a9c"
MO_STEPS = 4


def skipnet(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "skipnet", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


@pytest.fixture(scope="module")
def searches(mlflow_server, tmp_path_factory):
    """A FIFO search and a MOASHA search, run with a fake cloud key in the environment."""
    tmp = tmp_path_factory.mktemp("fronts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        patch.setenv("SKIPNET_TEST_API_TOKEN", FAKE_SECRET)
        init_ray(None, num_cpus=2)
        try:
            fifo = run_search(experiment(tmp, mlflow_server["url"], "front-fifo", num_samples=5,
                                         train=dict(TINY_TRAIN, model={"arch": "cifar10_rnn_gate_38"},   # authors' name
                                                    eval={"batch_size": 100}),     # default sweep
                                         budget={"iterations_per_step": 2, "max_steps": 4}))
            space = dict(SPACE, **{"hrl.alpha": {"type": "loguniform", "low": 1e-2, "high": 10.0}})
            mo = run_search(experiment(tmp, mlflow_server["url"], "front-moasha", num_samples=8,
                                       search_space=space, max_concurrent_trials=1, seed=1,
                                       budget={"iterations_per_step": 2, "max_steps": MO_STEPS},
                                       scheduler={"type": "moasha", "grace_period": 1, "reduction_factor": 2}))
            yield {"fifo": fifo, "mo": mo, "tmp": tmp}
        finally:
            import ray
            ray.shutdown()


def children(client, summary):
    parent = client.get_run(summary.parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'")


def dominated(point, others):
    """Brute force: some other point is at least as accurate and as cheap, and better in one."""
    acc, comp = point
    return any(a >= acc and c <= comp and (a > acc or c < comp) for a, c in others)


def run_points(run):
    """A trial's candidate points from its run's metrics, by brute force: its own (val_top1,
    val_computation_pct) and its threshold curve's other points, each distinct point once."""
    m = run.data.metrics
    points = {(m["val_top1"], m["val_computation_pct"])}
    for key, top1 in m.items():
        if key.startswith("threshold_curve/") and key.endswith("/val_top1"):
            points.add((top1, m[key.replace("/val_top1", "/val_computation_pct")]))
    return points


def front_of(runs):
    """{(run id, point)} of the non-dominated points of these runs' candidate points."""
    points = [(r.info.run_id, p) for r in runs for p in run_points(r)]
    return {(rid, p) for rid, p in points if not dominated(p, [q for _, q in points])}


def test_mlflow_shows_the_front_with_its_export_commands(searches, mlflow_server, tmp_path):
    """After each search (its live front's last update) and after ``skipnet pareto`` of one
    search, the parent run's description holds the front and an export command per front trial
    that selects exactly it (``assert_front_shown``); one of them, run, exports that trial."""
    fifo, url = searches["fifo"], mlflow_server["url"]
    client = MlflowClient(url)
    for summary in (fifo, searches["mo"]):
        assert_front_shown(client, summary.parent_run_id, "after ")
    result = skipnet("pareto", fifo.search_id, "--tracking-uri", url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_front_shown(client, fifo.parent_run_id, "as `skipnet pareto` computed it")
    uri, commands = description_commands(client.get_run(fifo.parent_run_id).data.tags["mlflow.note.content"])
    trial, command = commands[-1]
    argv = shlex.split(command)
    argv[argv.index("-o") + 1] = str(tmp_path / "best.yaml")
    result = subprocess.run([sys.executable, "-m", "skipnet", *argv[1:]], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, MLFLOW_TRACKING_URI=uri))    # as the block's first line sets it
    assert uri == url and result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["export"]["trial_id"] == trial.split()[0]


def test_export_selector_picks_exactly_its_trial():
    """The shortest ``--max-computation`` that selects the trial; ``--min-accuracy`` past 100 %
    computation (the CLI takes percentages up to 100); ``--trial`` for a copy of another point."""
    def point(trial_id, accuracy, computation):
        return analysis.TrialPoint("run-" + trial_id, trial_id, "s", "p", accuracy, computation, 1, 1, 10, "done")

    trials = [point("a", 50.0, 37.85), point("b", 55.0, 37.851), point("c", 60.0, 40.0), point("d", 60.0, 40.0),
              point("e", 70.0, 100.4), point("f", float("nan"), 1.0)]
    chosen = {t.trial_id: analysis.export_selector(trials, t) for t in trials[:5]}
    assert chosen == {"a": "--max-computation 37.85", "b": "--max-computation 37.86", "c": "--max-computation 40.00",
                      "d": "--trial d", "e": "--min-accuracy 70.00"}
    front = analysis.analyse("s", "p", trials)
    assert [t.trial_id for t in front.front] == ["a", "b", "c", "e"] and front.copies == {"c": ["d"]}
    text = analysis.front_markdown(front, max_chars=1400)
    shown = text.count("skipnet export s ")                  # rows left out past max_chars are counted
    assert len(text) <= 1400 and 0 < shown < 4 and f"| ... {4 - shown} more: `skipnet pareto s` |" in text


def test_moasha_on_synthetic_data_replays_the_rule(searches, mlflow_server):
    """Trials ran one at a time, so each rung decision can be replayed from Tune's results."""
    summary = searches["mo"]
    assert summary.errors == 0 and len(summary.trials) == 8
    tune_results = ExperimentAnalysis(summary.path)
    frames = tune_results.trial_dataframes
    # Tune's timestamps are whole seconds and a trial stopped at its first rung can start and end
    # within one of them; trials of this one-at-a-time search start in the order of their ids
    order = sorted(frames, key=lambda t: (frames[t]["timestamp"].min(), int(t.rsplit("_", 1)[1])))
    rungs = {1: [], 2: []}                        # grace 1, reduction 2, max_t 4
    expected, actual = {}, {}
    for trial_id in order:
        frame = frames[trial_id].drop_duplicates("training_iteration").set_index("training_iteration")
        actual[trial_id] = int(frame.index.max())
        expected[trial_id] = MO_STEPS
        for milestone in (1, 2):
            row = frame.loc[milestone]
            rungs[milestone].append((trial_id, (row["val_top1"], row["val_computation_pct"])))
            n = len(rungs[milestone])
            if n < 2:
                continue
            losses = np.array([[-a, c] for _, (a, c) in rungs[milestone]])
            rank = pareto.nondominated_rank(losses)
            copies = np.array([any((losses[j] == losses[i]).all() for j in range(i)) for i in range(n)])
            crowd = np.full(n, -1.0)                # a copy of an earlier result sorts last in its rank
            crowd[~copies] = pareto.crowding_distance(losses[~copies])
            me = n - 1
            ahead = ((rank < rank[me]) | ((rank == rank[me]) & (crowd > crowd[me]))).sum()
            if ahead >= n // 2:
                expected[trial_id] = milestone
                # a stopped trial is dominated, or ties the rank of as many trials as there are slots
                others = [p for t, p in rungs[milestone] if t != trial_id]
                assert dominated(rungs[milestone][-1][1], others) or (rank == rank[me]).sum() > n // 2
                break
    assert actual == expected
    assert any(t < MO_STEPS for t in actual.values()), "MOASHA stopped no trial"
    # trials non-dominated at every rung they reached while it was being filled ran to the end
    assert any(t == MO_STEPS for t in actual.values())
    client = MlflowClient(mlflow_server["url"])
    for run in children(client, summary):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "training_iteration")]
        assert steps == list(range(1, actual[run.data.tags["trial_id"]] + 1))
        assert run.data.tags["stopped_early"] == str(len(steps) < MO_STEPS).lower()


def stored_artifacts(run, artifacts):
    """Where the test server keeps ``run``'s artifacts (``mlflow-artifacts:/<experiment>/<run>/artifacts``)."""
    return artifacts / urllib.parse.urlparse(run.info.artifact_uri).path.lstrip("/")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mlflow_record(client, summaries, artifacts):
    """What MLflow holds of these searches, to compare before and after: each run's status,
    start and end, tags, params, metrics, the history of ``training_iteration`` (of every metric
    for the parents) and its artifacts by content (read where the server stores them)."""
    record = {}
    for summary in summaries:
        for run in [client.get_run(summary.parent_run_id), *children(client, summary)]:
            rid, parent = run.info.run_id, run.info.run_id == summary.parent_run_id
            stored = stored_artifacts(run, artifacts)
            record[rid] = {
                "status": run.info.status, "start": run.info.start_time, "end": run.info.end_time,
                "tags": run.data.tags, "params": run.data.params, "metrics": run.data.metrics,
                "artifacts": {f.relative_to(stored).as_posix(): sha(f) for f in stored.rglob("*") if f.is_file()},
                "history": {k: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, k)]
                            for k in (run.data.metrics if parent else ["training_iteration"])}}
    return record


def assert_unchanged(after, before):
    assert after.keys() == before.keys()
    for rid, was in before.items():
        for field, value in was.items():
            assert after[rid][field] == value, (rid, field)


def rows_by_trial(summary) -> dict[str, dict]:
    return {row["trial_id"]: row for row in summary.trials}


def test_sync_and_resume_of_finished_searches_change_nothing(searches, mlflow_server, monkeypatch):
    """On searches the callback logged whole, sync-mlflow (twice: PATH relative, as typed in the
    directory above the search, then absolute) and a resume leave every run as it was: status,
    start and end, tags, metrics, artifacts. (Before: a sync with a relative PATH re-ended every
    trial's run at the time of the sync, and a resume moved the parent's end and logged its cost
    again.)"""
    fifo, mo = searches["fifo"], searches["mo"]
    client = MlflowClient(mlflow_server["url"])
    before = mlflow_record(client, (fifo, mo), mlflow_server["artifacts"])
    assert all(r["status"] == "FINISHED" and r["end"] for r in before.values())
    nothing = {"runs_created": 0, "results_logged": 0, "checkpoints_logged": 0, "runs_ended": 0}
    with monkeypatch.context() as patch:
        patch.chdir(searches["tmp"])
        assert sync_mlflow(os.path.relpath(fifo.path, searches["tmp"])) == nothing
    assert sync_mlflow(fifo.path) == nothing and sync_mlflow(mo.path) == nothing
    with monkeypatch.context() as patch:         # a finished search is read from its storage: no Ray, no Tune run
        patch.setattr(runner, "init_ray", lambda *a, **k: pytest.fail("resuming a finished search started Ray"))
        resumed = resume_search(fifo.path)
    assert resumed.finished_already and resumed.errors == 0
    assert rows_by_trial(resumed) == rows_by_trial(fifo)
    assert_unchanged(mlflow_record(client, (fifo, mo), mlflow_server["artifacts"]), before)


def test_pareto_cli_tags_front_logs_plots_and_prints(searches, mlflow_server, tmp_path):
    """One search: its own front on its parent run. Several: their overlay under
    ``pareto/overlays/`` of each parent, whose own front (``skipnet pareto``'s for the FIFO
    search, the live one for MOASHA), metrics and runs stay as they were."""
    fifo, mo = searches["fifo"], searches["mo"]
    url = mlflow_server["url"]
    client = MlflowClient(url)
    result = skipnet("pareto", fifo.search_id, "--tracking-uri", url, "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    trial_runs = children(client, fifo)
    front = front_of(trial_runs)
    assert len({p for r in trial_runs for p in run_points(r)}) > len(trial_runs)        # the sweep added points
    parent = client.get_run(fifo.parent_run_id)
    hv = pareto.hypervolume_2d([p for r in trial_runs for p in run_points(r)], (10.0, 100.0), ["max", "min"])   # chance 10 %
    assert parent.data.metrics["pareto_hypervolume"] == pytest.approx(hv)
    points = {p for _, p in front}                    # trials with the same point are one front point
    assert parent.data.metrics["pareto_front_size"] == len(points)
    rows = (tmp_path / "front.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(points) and all(r.startswith(f"{fifo.search_id},") for r in rows[1:])
    swept = [r.split(",") for r in rows[1:] if "@" in r.split(",")[1]]      # threshold points: labelled
    assert all(r[8] == "true" and r[1].endswith("@" + r[7]) for r in swept)
    assert all(r[1] in result.stdout for r in swept) and (not swept or "TRIAL@T" in result.stdout)
    before = mlflow_record(client, (fifo, mo), mlflow_server["artifacts"])
    for summary in (fifo, mo):
        own = {"pareto/front.png", "pareto/front.html", "pareto/front.csv"}
        assert own <= before[summary.parent_run_id]["artifacts"].keys()
    own_png = {s.parent_run_id: before[s.parent_run_id]["artifacts"]["pareto/front.png"] for s in (fifo, mo)}
    assert own_png[fifo.parent_run_id] == sha(tmp_path / "front.png")

    out = tmp_path / "overlay"
    out.mkdir()
    result = skipnet("pareto", fifo.search_id, mo.parent_run_id, "--tracking-uri", url, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    for summary in (fifo, mo):
        trial_runs = children(client, summary)
        front = front_of(trial_runs)
        front_runs = {rid for rid, _ in front}           # a trial is on the front if one of its points is
        assert {r.info.run_id for r in trial_runs if r.data.tags.get("pareto") == "true"} == front_runs
        for r in trial_runs:
            assert (r.data.tags["pareto_rank"] == "0") == (r.info.run_id in front_runs)
        assert f"search {summary.search_id}" in result.stdout
        for point in {p for _, p in front}:                # each front point once, by one of its trials
            assert sum(rid in result.stdout for rid, p in front if p == point) >= 1
        rows = (out / f"front-{summary.search_id}.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + len({p for _, p in front})
    html = (out / "front.html").read_text()
    assert "plotly" in html and fifo.search_id in html and mo.search_id in html and "hrl.alpha" in html
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.count("<- knee") == 2

    # the overlay is all the comparison added: each parent's own front, metrics and tags are as they were
    after = mlflow_record(client, (fifo, mo), mlflow_server["artifacts"])
    for summary in (fifo, mo):
        assert after[summary.parent_run_id]["artifacts"]["pareto/front.png"] == own_png[summary.parent_run_id]
        assert after[summary.parent_run_id]["history"] == before[summary.parent_run_id]["history"]
    overlay = runs.overlay_path([mo.search_id, fifo.search_id])
    assert overlay == runs.overlay_path([fifo.search_id, mo.search_id]) and overlay in result.stdout
    expected = {f"{overlay}/{n}" for n in ("front.png", "front.html", f"front-{fifo.search_id}.csv",
                                            f"front-{mo.search_id}.csv")}
    for summary in (fifo, mo):
        files = after[summary.parent_run_id]["artifacts"]
        assert {p for p in files if p.startswith(overlay)} == expected
        assert files[f"{overlay}/front.png"] == sha(out / "front.png")
        for record in (before, after):
            record[summary.parent_run_id]["artifacts"] = {
                p: v for p, v in record[summary.parent_run_id]["artifacts"].items() if not p.startswith(overlay)}
    assert_unchanged(after, before)

    # a single-search pareto after the comparison still shows that search alone
    result = skipnet("pareto", fifo.search_id, "--tracking-uri", url)
    assert result.returncode == 0, result.stderr[-3000:]
    local = stored_artifacts(client.get_run(fifo.parent_run_id), mlflow_server["artifacts"]) / "pareto"
    assert sha(local / "front.png") == own_png[fifo.parent_run_id]
    rows = (local / "front.csv").read_text().strip().splitlines()[1:]
    assert rows and all(r.startswith(f"{fifo.search_id},") for r in rows)
    html = (local / "front.html").read_text()
    assert fifo.search_id in html and mo.search_id not in html


def retrain_reproduces(doc, tmp_path, keys):
    """``skipnet train --config`` of an exported ``doc`` reports its ``keys`` exactly as exported."""
    out = tmp_path / f"{doc['export']['trial_id']}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    train = skipnet("train", "--config", str(out), "--quiet", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    final = json.loads((tmp_path / doc["output_dir"] / "final.json").read_text())
    for key in keys:
        assert final[key] == pytest.approx(doc["export"]["metrics"][key], abs=1e-6), key


def export(fifo, url, tmp_path, *selector, extra=()):
    out = tmp_path / "exported.yaml"
    result = skipnet("export", fifo.search_id, *selector, "-o", str(out), "--tracking-uri", url, *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return yaml.safe_load(out.read_text()), result.stdout


def test_export_round_trip_reproduces_the_trial(searches, mlflow_server, tmp_path):
    """The knee, and a point of the other kind (a trial's own point or a threshold point
    ``ID@T``, which exports ``model.gate_threshold: T``): each retrained gives its metrics."""
    fifo, url = searches["fifo"], mlflow_server["url"]
    doc, _ = export(fifo, url, tmp_path, "--knee", extra=("--register", "skipnet-test-best"))
    info = doc["export"]
    assert info["provenance"]["search_id"] == fifo.search_id and info["provenance"]["code_version"].startswith("0.")
    assert info["checkpoint"]["mlflow"] == f"runs:/{info['provenance']['mlflow_run_id']}/checkpoint"
    assert doc["model"]["arch"] == "cifar10_rnn_gate_38" and doc["seed"] == 0 and "alpha" in doc["hrl"]
    client = MlflowClient(url)
    version = client.get_model_version_by_alias("skipnet-test-best", "best")
    assert version.run_id == info["provenance"]["mlflow_run_id"]

    points = {p.trial_id: p for p in runs.search_trials(client, client.get_run(fifo.parent_run_id))}
    swept = [p for p in points.values() if p.swept]
    assert swept, "the FIFO search's sweep added no point"
    knee = points[info["trial_id"]]
    if knee.swept:                               # then also a trial's own point, by --trial
        other = points[knee.trial_id.split("@")[0]]
    else:                                        # then also a threshold point, by --trial ID@T
        other = min(swept, key=lambda p: abs(p.gate_threshold - 0.35))
    other_doc, stdout = export(fifo, url, tmp_path, "--trial", other.trial_id)
    for point, d in ((knee, doc), (other, other_doc)):
        metrics = d["export"]["metrics"]
        assert d["export"]["trial_id"] == point.trial_id
        assert (metrics["val_top1"], metrics["val_computation_pct"]) == (point.accuracy, point.computation)
        if point.swept:
            assert d["model"]["gate_threshold"] == point.gate_threshold
            assert not [k for k in metrics if k.startswith("test_")]          # the sweep measures val only
            retrain_reproduces(d, tmp_path, ("val_top1", "val_computation_pct", "val_block_count_pct",
                                              "val_distinct_paths"))
        else:
            assert d["model"]["gate_threshold"] == 0.5
            retrain_reproduces(d, tmp_path, ("val_top1", "val_computation_pct", "val_block_count_pct", "test_top1",
                                              "test_computation_pct"))
    assert (f"at gate threshold {other.gate_threshold!r}" in stdout) == other.swept


def test_threshold_points_enter_the_front_labelled_and_export_their_threshold():
    """A trial's curve adds a point per threshold that moves it (``ID@T``, marked swept), which
    ranks, selects, is described and exports like a trial, with ``model.gate_threshold: T``."""
    def point(trial_id, accuracy, computation, curve=()):
        metrics = {"val_top1": accuracy, "val_computation_pct": computation, "test_top1": accuracy, "threads": 1.0,
                   "gate_threshold": 0.5, "iteration": 8.0}
        for t, a, c in curve:
            metrics.update({f"threshold_curve/{t!r}/val_top1": a, f"threshold_curve/{t!r}/val_computation_pct": c})
        return analysis.TrialPoint("run-" + trial_id, trial_id, "s", "p", accuracy, computation, 4, 8, 10, "done",
                                   config={"hrl.alpha": "0.5", "model.gate_threshold": "0.5"}, metrics=metrics)

    # b's own point is dominated, its curve is not: 0.35 costs more and gains, 0.7 saves; 0.2 copies 0.35
    # (of equal points the threshold nearest the trial's own is kept)
    trials = [point("a", 60.0, 50.0), point("b", 50.0, 60.0, [(0.2, 70.0, 80.0), (0.35, 70.0, 80.0),
                                                               (0.5, 50.0, 60.0), (0.7, 55.0, 30.0)])]
    points = [p for t in trials for p in analysis.with_threshold_points(t)]
    assert [(p.trial_id, p.swept, p.gate_threshold) for p in points] == \
        [("a", False, 0.5), ("b", False, 0.5), ("b@0.35", True, 0.35), ("b@0.7", True, 0.7)]
    front = analysis.analyse("s", "p", points)
    assert [t.trial_id for t in front.front] == ["b@0.7", "a", "b@0.35"]
    assert ui.run_ranks(front.trials, front.rank) == {"run-a": 0, "run-b": 0}
    csv = [row.split(",") for row in analysis.front_csv(front).strip().splitlines()]
    assert csv[0][7:9] == ["gate_threshold", "swept"] and [r[7:9] for r in csv[1:]] == \
        [["0.7", "true"], ["0.5", "false"], ["0.35", "true"]]
    text = analysis.front_markdown(front)
    assert f"| b@0.7{analysis.CELL_GAP} |" in text and "`model.gate_threshold: T`" in text and "# b@0.35" in text
    chosen = analysis.select(points, trial_id="b@0.7")
    assert chosen.metrics["val_top1"] == 55.0 and "test_top1" not in chosen.metrics
    assert analysis.select(points, max_computation=35) is chosen
    doc = export_document(chosen, dict(TINY_TRAIN), selected_by="test", experiment="e", tracking_uri="sqlite:///x",
                          checkpoint_uri=None, code_version="test")
    assert doc["model"]["gate_threshold"] == 0.7 and doc["export"]["trial_id"] == "b@0.7"
    assert doc["export"]["metrics"]["val_computation_pct"] == 30.0 and doc["threads"] == 1
    own = export_document(points[0], dict(TINY_TRAIN), selected_by="test", experiment="e", tracking_uri="sqlite:///x",
                          checkpoint_uri=None, code_version="test")
    assert own["model"].get("gate_threshold", 0.5) == 0.5


def test_eval_of_each_trial_directory_gives_the_trial_metrics(searches, tmp_path):
    """The FIFO search names a recurrent architecture (cifar10_rnn_gate_38) and overrides
    ``model.gate``: ``skipnet eval`` of a trial's directory (its last checkpoint), without any
    other flag, rebuilds that trial's gates and reports its validation metrics; the checkpoint
    names the architecture it holds; the search directory gets one line naming a trial's."""
    import torch
    fifo = searches["fifo"]
    rows = {r["config"]["model"]["gate"]: r for r in fifo.trials if not r["error"]}
    assert set(rows) == {"feedforward_conv", "recurrent"}, "the search has no trial of one gate type"
    for gate, row in rows.items():
        trial_dir = next(p for p in Path(fifo.path).iterdir() if p.is_dir() and row["trial_id"] in p.name)
        last = max(trial_dir.glob("checkpoint_*"))
        info = torch.load(last / "engine.pt", weights_only=True)["info"]
        arch = "cifar10_rnn_gate_38" if gate == "recurrent" else f"cifar10_skipnet_38_{gate}"
        assert (info["arch"], info["gate"]) == (arch, gate)
        result = skipnet("eval", "--checkpoint", str(trial_dir), "--split", "val", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.startswith(f"{arch} on synthetic/val"), result.stdout
        shown = dict(line.split()[:2] for line in result.stdout.splitlines()[1:] if line.startswith("  val_"))
        assert float(shown["val_top1"]) == pytest.approx(row["val_top1"], abs=6e-4), gate
        assert float(shown["val_computation_pct"]) == pytest.approx(row["val_computation_pct"], abs=6e-4), gate
    result = skipnet("eval", "--checkpoint", fifo.path, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "a search directory" in result.stderr
    assert "name one trial's directory" in result.stderr, result.stderr


def pbt_point(trial_id, accuracy, computation, schedule=((0, 10.34, 0.0161, None),), config=None):
    """A trial of an MO-PBT search; ``schedule``: its (iteration, alpha, lr, cloned_from) segments."""
    segments = [{"iteration": i, "hrl.alpha": a, "hrl.lr": lr, "trial": trial_id, **({"cloned_from": c} if c else {})}
                for i, a, lr, c in schedule]
    return analysis.TrialPoint("run-" + trial_id, trial_id, "s", "p", accuracy, computation, 4, 8, 10, "done",
                               config=analysis.final_config(config or {"hrl.alpha": "10.34", "hrl.lr": "0.0161",
                                                                       "model.gate": "recurrent"}, segments),
                               schedule=segments, scheduler="mopbt")


def test_copies_of_one_member_are_one_point_of_the_front():
    """Three members at 99.60 / 100.02 (two copied the third's weights; the MO-PBT quickstart
    showed them as three front points): one point, shown as the first trial, the others named."""
    def point(trial_id, accuracy, computation):
        return analysis.TrialPoint("run-" + trial_id, trial_id, "s", "p", accuracy, computation, 4, 8, 10, "done")

    trials = [point("t0", 99.60, 100.02), point("t1", 99.60, 100.02), point("t2", 80.0, 40.0),
              point("t3", 99.60, 100.02), point("t4", 70.0, 50.0)]
    front = analysis.analyse("s", "p", trials)
    assert [t.trial_id for t in front.front] == ["t2", "t0"] and front.copies == {"t0": ["t1", "t3"]}
    assert list(front.rank) == [0, 0, 0, 0, 1]                # the copies are on the front: ranked, tagged so
    rows = analysis.front_csv(front).strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and rows[2].split(",")[header.index("same_point")] == "t1 t3"
    text = analysis.front_markdown(front)
    _, table = description_table(text)
    assert [row_trial(row[0]) for row in table] == ["t0", "t2"] and table[0][0].startswith("**t0**")   # the knee
    assert table[0][0].endswith("· same point: t1, t3") and text.count("skipnet export s ") == 2
    assert [(r["trial"], r["same_point"]) for r in analysis.table(front)] == [("t2", []), ("t0", ["t1", "t3"])]


def test_front_description_renders_in_mlflow_with_the_best_rows_first():
    """What MLflow 3.17 shows of it (checked in a browser): the first line says the front's size
    and hypervolume; every table cell is padded (MLflow draws cells without padding); the rows
    run from the knee, then by the hypervolume each point alone adds (MLflow shows about three
    rows before "Show more"); the final alpha and lr, with the schedule beside them; no
    headings (drawn as plain text). The saved view's front chart is one wide, tall card."""
    trials = [pbt_point("cheap", 15.0, 5.0), pbt_point("mid", 70.0, 30.0, [(0, 10.34, 0.0161, None),
                                                                          (300, 2.68, 0.00374, "cheap")]),
              pbt_point("big", 92.0, 80.0), pbt_point("top", 93.0, 99.0), pbt_point("worse", 60.0, 60.0)]
    front = analysis.analyse("s", "p", trials)
    text = analysis.front_markdown(front)
    lines = text.splitlines()
    assert lines[0].startswith("**Front: 4 of 5 points**") and "hypervolume" in lines[0] and lines[1] == ""
    outside = text.split("```")[0::2]                       # the text around the code block
    assert not [line for part in outside for line in part.splitlines() if line.startswith("#")]
    headers, rows = description_table(text)
    assert headers == ["trial", "val_top1", "comp. %", "alpha", "lr", "gate", "retrains"]

    def alone(point):                                        # brute force: the hypervolume lost without it
        rest = [[t.accuracy, t.computation] for t in front.front if t is not point]
        every = [[t.accuracy, t.computation] for t in front.front]
        return pareto.hypervolume_2d(every, front.reference, analysis.DIRECTIONS) - \
            pareto.hypervolume_2d(rest, front.reference, analysis.DIRECTIONS)

    others = sorted((t for t in front.front if t is not front.knee), key=alone, reverse=True)
    assert [row_trial(row[0]) for row in rows] == [front.knee.trial_id, *(t.trial_id for t in others)]
    assert rows[0][0] == "**mid**" and front.knee.trial_id == "mid" and not rows[1][0].startswith("**")
    mid = dict(zip(headers, rows[0]))
    assert (mid["alpha"], mid["lr"], mid["retrains"]) == ("2.68", "0.00374", "no")
    below = text.split(analysis.SCHEDULES_HEAD)[1].split("Retrains:")[0].strip().splitlines()   # under the table
    assert below == ["- mid: 10.3 / 0.0161 (it. 0) → 2.68 / 0.00374 (it. 300, copied cheap)"]
    assert text.rindex("| top") < text.index(analysis.SCHEDULES_HEAD)
    assert dict(zip(headers, rows[1]))["retrains"] == "yes"
    for point in (front.knee, others[0]):                    # "retrains" explained in the words the export uses
        assert f"**{analysis.RETRAIN[point.reproducibility.reproducible]}**: {point.reproducibility.sentence}" in text
    uri, commands = description_commands(text)
    assert uri is None and [r.split()[0] for r, _ in commands] == [row_trial(row[0]) for row in rows]
    section = ui.trials_view("s")["compareRunSections"][0]
    assert (section["columns"], section["cardHeight"]) == (1, 500)


def test_export_file_and_description_say_the_same_of_a_changed_trial(tmp_path):
    """An MO-PBT trial whose hyperparameters changed: its export file says (provenance note and
    header) the sentence the description's "retrains" column points to; an unchanged one says
    it retrains."""
    changed = pbt_point("mid", 70.0, 30.0, [(0, 10.34, 0.0161, None), (300, 2.68, 0.00374, "cheap")])
    same = pbt_point("cheap", 15.0, 5.0, [(0, 10.34, 0.0161, None)])
    text = analysis.front_markdown(analysis.analyse("s", "p", [changed, same]))
    for point, reproducible in ((changed, False), (same, True)):
        doc = export_document(point, dict(TINY_TRAIN), selected_by="test", experiment="e", tracking_uri="sqlite:///x",
                              checkpoint_uri=None, code_version="test", scheduler="mopbt", schedule=point.schedule)
        provenance = doc["export"]["provenance"]
        assert provenance["reproducible"] is reproducible and provenance["note"] == point.reproducibility.sentence
        assert f"**{analysis.RETRAIN[reproducible]}**: {provenance['note']}" in text
        header = [line for line in write_export(doc, tmp_path / f"{point.trial_id}.yaml").read_text().splitlines()
                  if line.startswith("#")]
        assert ("# Reproduce it: skipnet train --config" in "\n".join(header)) is reproducible
        assert reproducible or f"# {provenance['note']}" in header
        assert (doc["hrl"]["alpha"], doc["hrl"]["lr"]) == (point.schedule[-1]["hrl.alpha"], point.schedule[-1]["hrl.lr"])


def test_export_with_no_trial_meeting_the_constraint(searches, mlflow_server, tmp_path):
    out = tmp_path / "best.yaml"
    result = skipnet("export", searches["fifo"].search_id, "--max-computation", "0.001", "-o", str(out),
                     "--tracking-uri", mlflow_server["url"])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--max-computation" in result.stderr and "the closest is trial" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_no_environment_secret_reaches_mlflow(searches, mlflow_server):
    client = MlflowClient(mlflow_server["url"])
    for name in ("front-fifo", "front-moasha"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert len(runs) > 1
        for run in runs:
            for key, value in {**run.data.params, **run.data.tags}.items():
                assert FAKE_SECRET not in value and FAKE_SECRET not in key, (run.info.run_id, key)


@pytest.mark.parametrize("stage,iteration,expected", [
    ("pipeline", 8, ("pipeline", 4, 4)),         # ran to the end
    ("pipeline", 6, ("pipeline", 4, 2)),         # stopped during HRL
    ("pipeline", 2, ("sp", 2, 4)),               # stopped before HRL began
    ("hrl", 3, ("hrl", 4, 3)),
])
def test_reproducing_config_cuts_the_schedule_where_the_trial_stopped(stage, iteration, expected):
    cfg = reproducing_config(dict(TINY_TRAIN, stage=stage), iteration)
    assert (cfg["stage"], cfg["sp"]["iterations"], cfg["hrl"]["iterations"]) == expected
    assert cfg["sp"]["eval_every"] == cfg["sp"]["iterations"] and cfg["hrl"]["eval_every"] == cfg["hrl"]["iterations"]
    assert TINY_TRAIN["sp"]["iterations"] == 4                # the input is not modified


def test_mlflow_outage_loses_nothing_and_sync_backfills_once(local_ray, tmp_path):
    """The tracking server is stopped mid-search; Tune keeps every result; sync-mlflow copies
    them to MLflow once the server is back, and a second sync adds nothing."""
    (tmp_path / "mlflow").mkdir()
    server = MLflowServer(tmp_path / "mlflow").start()
    exp = experiment(tmp_path, server.url, "outage", num_samples=2, budget={"iterations_per_step": 2, "max_steps": 4})
    client = MlflowClient(server.url)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("summary", run_search(exp)), daemon=True)
    try:
        thread.start()
        deadline = time.time() + 300
        while True:                                     # stop the server once a trial has logged a result
            experiment_ = client.get_experiment_by_name("outage")
            runs = client.search_runs([experiment_.experiment_id], "tags.trial_id != ''") if experiment_ else []
            if any(client.get_metric_history(r.info.run_id, "val_top1") for r in runs):
                break
            assert thread.is_alive() and time.time() < deadline, "the search logged nothing"
            time.sleep(0.5)
        server.stop()
        thread.join(timeout=400)
        assert not thread.is_alive()
    except BaseException:
        server.stop()
        raise
    summary = box["summary"]
    assert summary.errors == 0 and all(row["training_iteration"] == 4 for row in summary.trials)
    server.start()
    before = {r.data.tags["trial_id"]: len(client.get_metric_history(r.info.run_id, "training_iteration"))
              for r in client.search_runs([experiment_.experiment_id], "tags.trial_id != ''")}
    assert sum(before.values()) < 8, "the outage came too late to miss anything"
    synced_at = time.time() * 1000
    result = skipnet("sync-mlflow", summary.path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLflow updated" in result.stdout
    runs = client.search_runs([experiment_.experiment_id], f"tags.`mlflow.parentRunId` = '{summary.parent_run_id}'")
    assert len(runs) == 2
    frames = ExperimentAnalysis(summary.path).trial_dataframes
    for run in runs:
        for key in ("training_iteration", "val_top1", "val_computation_pct"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
        assert run.info.status == "FINISHED" and run.data.tags["tune_status"] == "completed"
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["checkpoint", "train_config.yaml"]
        assert "pid" not in run.data.metrics and "timestamp" not in run.data.metrics     # Ray's bookkeeping
        # ended when the trial ended (its last result, or later if the callback saw the end), not at the sync
        last = frames[run.data.tags["trial_id"]]["timestamp"].max() * 1000
        assert run.info.start_time <= last <= run.info.end_time < synced_at
    parent = client.get_run(summary.parent_run_id).info
    assert parent.status == "FINISHED" and parent.end_time == max(r.info.end_time for r in runs)
    assert sync_mlflow(summary.path) == {"runs_created": 0, "results_logged": 0, "checkpoints_logged": 0,
                                         "runs_ended": 0}
    server.stop()
