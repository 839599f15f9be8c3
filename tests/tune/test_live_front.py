"""The live front of a running search: ``LiveFront``'s logic, and a real search (local Ray, a real
MLflow server) whose parent run's hypervolume history is replayed from its trials' results and
whose parent run's description shows its last front (``assert_front_shown``)."""
import json
import math
import shlex

import pytest
from mlflow.tracking import MlflowClient

from skipnet.cli import build_parser
from skipnet.errors import ConfigError
from skipnet.fronts import analysis, pareto
from skipnet.tracking import runs, ui
from skipnet.tune.experiment import load_experiment
from skipnet.tune.live_front import LiveFront
from skipnet.tune.runner import run_search
from test_search import description_commands, description_table, experiment, row_trial

REFERENCE = (10.0, 100.0)                        # 10 classes: chance accuracy, full computation


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def result(step, top1, comp, trained=2, classes=10):
    return {"training_iteration": step, "val_top1": top1, "val_computation_pct": comp,
            "iterations_trained": trained, "iteration": 2 * step, "num_classes": classes}


def hv(points):
    return 100.0 * pareto.hypervolume_2d(points, REFERENCE, analysis.DIRECTIONS) / ((100.0 - REFERENCE[0]) * REFERENCE[1])


def test_live_front_throttles_keeps_each_trials_latest_and_counts_iterations():
    clock = Clock()
    live = LiveFront("s", "parent", interval_s=30.0, offset=10.0, clock=clock)
    assert not live.pending and not live.due() and live.update() is None      # nothing before the first result
    live.add("a", {"training_iteration": 1, "iterations_trained": 2})        # no metrics: nothing to rank yet
    assert live.due() and live.update() is None
    live.add("a", result(2, 40.0, 80.0), {"hrl.alpha": 0.1})
    first = live.update({"a": "run-a"})
    assert first.step == 14 and first.results == 2                         # SP offset + 2 + 2
    assert first.front.hypervolume_pct == pytest.approx(hv([(40.0, 80.0)]))
    assert first.front.trials[0].run_id == "run-a" and first.front.trials[0].config == {"hrl.alpha": "0.1"}
    live.logged(first)
    assert not live.pending and not live.due()
    live.add("b", result(1, 30.0, 50.0))
    assert live.pending and not live.due()                                  # throttled
    clock.now += 29.9
    assert not live.due()
    clock.now += 0.1
    assert live.due()
    live.add("a", result(3, 60.0, 70.0))
    live.add("a", result(3, 99.0, 1.0))        # a step reported again (after a restore): the first one stands
    live.add("a", result(2, 99.0, 1.0))        # an earlier step: not the trial's latest
    update = live.update()
    assert update.step == 10 + 2 * 6 and update.results == 6               # every result's compute counts
    assert sorted((t.trial_id, t.accuracy, t.steps) for t in update.front.trials) == [("a", 60.0, 3), ("b", 30.0, 1)]
    assert update.front.hypervolume_pct == pytest.approx(hv([(60.0, 70.0), (30.0, 50.0)]))
    assert len(update.front.front) == 2
    live.retry_later()                          # logging it failed: still pending, throttled again
    assert live.pending and not live.due()
    clock.now += 30.0
    assert live.due()
    live.logged(update)
    assert not live.pending and not live.due()

    resumed = LiveFront("s", "parent", interval_s=30.0, offset=10.0, clock=clock)
    resumed.set_state(live.get_state())
    assert not resumed.pending
    resumed.add("c", result(1, 20.0, 90.0))
    assert resumed.due()                                                     # a new process updates at once
    again = resumed.update()
    assert again.step == update.step + 2 and len(again.front.trials) == 3


def test_a_final_report_with_a_threshold_curve_adds_its_points():
    """The curve of a trial's final report adds its threshold points (``a@0.2``) to the live
    front, labelled and on the trial's run, and survive a resume."""
    live = LiveFront("s", "parent", interval_s=0.0)
    live.add("b", result(1, 50.0, 40.0))
    final = dict(result(2, 60.0, 50.0), gate_threshold=0.5, **{
        "threshold_curve/0.2/val_top1": 70.0, "threshold_curve/0.2/val_computation_pct": 80.0,
        "threshold_curve/0.5/val_top1": 60.0, "threshold_curve/0.5/val_computation_pct": 50.0,
        "threshold_curve/0.7/val_top1": 45.0, "threshold_curve/0.7/val_computation_pct": 45.0})
    live.add("a", final, {"hrl.alpha": 0.1, "model.gate_threshold": 0.5})
    update = live.update({"a": "run-a", "b": "run-b"})
    points = {t.trial_id: t for t in update.front.trials}
    assert sorted(points) == ["a", "a@0.2", "a@0.7", "b"]
    swept = points["a@0.2"]
    assert swept.swept and swept.run_id == "run-a" and swept.config["model.gate_threshold"] == "0.2"
    assert (swept.accuracy, swept.computation) == (70.0, 80.0)
    assert {t.trial_id for t in update.front.front} == {"a", "a@0.2", "b"}          # a@0.7 is dominated by b
    assert update.front.hypervolume_pct == pytest.approx(hv([(60.0, 50.0), (70.0, 80.0), (50.0, 40.0)]))
    resumed = LiveFront("s", "parent")
    resumed.set_state(json.loads(json.dumps(live.get_state())))                  # the state survives a resume
    assert sorted(t.trial_id for t in resumed.update().front.trials) == sorted(points)


def test_interval_zero_updates_on_every_result():
    live = LiveFront("s", "parent", interval_s=0.0)
    for step in (1, 2, 3):
        live.add("a", result(step, 10.0 * step, 50.0))
        assert live.due()
        live.logged(live.update())
        assert not live.due()


@pytest.mark.parametrize("value", [-1, "soon", float("nan")])
def test_front_interval_is_validated_naming_the_key(tmp_path, value):
    path = tmp_path / "bad.yaml"
    path.write_text(f"mlflow: {{front_interval_s: {value!r}}}\n".replace("nan", ".nan"))
    with pytest.raises(ConfigError, match=r"bad.yaml: mlflow.front_interval_s: must be a number"):
        load_experiment(path)


def test_front_interval_default(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\n")
    assert load_experiment(path).mlflow.front_interval_s == 30.0


def test_search_logs_its_front_as_results_arrive(tmp_path, mlflow_server, local_ray):
    url = mlflow_server["url"]
    exp = experiment(tmp_path, url, "live-front", num_samples=4, budget={"iterations_per_step": 2, "max_steps": 3},
                     mlflow={"tracking_uri": url, "experiment_name": "live-front", "front_interval_s": 0})
    summary = run_search(exp)
    assert summary.errors == 0 and len(summary.trials) == 4
    client = MlflowClient(url)
    parent = summary.parent_run_id

    # every result in the order the callback saw it (it logs each as it arrives, one at a time)
    reports = []
    for run in client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"):
        series = {key: {m.step: m for m in client.get_metric_history(run.info.run_id, key)}
                  for key in ("val_top1", "val_computation_pct", "iterations_trained")}
        for step, top1 in series["val_top1"].items():
            reports.append((top1.timestamp, run.data.tags["trial_id"], top1.value,
                            series["val_computation_pct"][step].value, series["iterations_trained"][step].value))
    reports.sort()
    assert len(reports) == 12 and len({r[0] for r in reports}) == 12

    def expected(spent):
        """The hypervolume % of each trial's latest result once ``spent`` iterations were reported."""
        latest, total = {}, 0.0
        for _, trial, top1, comp, trained in reports:
            if total >= spent:
                break
            latest[trial], total = (top1, comp), total + trained
        assert total == spent, f"no prefix of the results spent {spent} iterations"
        return hv(list(latest.values())), len(analysis.analyse("s", "p", [
            analysis.TrialPoint("", t, "s", "p", a, c, 0, 0, 10, "") for t, (a, c) in latest.items()]).front)

    history = client.get_metric_history(parent, "pareto_hypervolume_pct")
    sizes = {m.step: m.value for m in client.get_metric_history(parent, "pareto_front_size")}
    steps = [m.step for m in history]
    assert len(history) > 1 and steps == sorted(set(steps)) and steps[0] > 0, steps
    assert set(sizes) == set(steps)
    for m in history:
        value, size = expected(m.step)
        assert m.value == pytest.approx(value, abs=1e-6), m.step
        assert sizes[m.step] == size
    assert steps[-1] == sum(r[4] for r in reports) == 4 * 3 * 2             # the last update covers every result

    # the last live front is the one skipnet pareto computes from MLflow afterwards
    after = analysis.analyse(summary.search_id, parent, runs.search_trials(client, client.get_run(parent)))
    assert history[-1].value == pytest.approx(after.hypervolume_pct, abs=1e-6)
    assert sizes[steps[-1]] == len(after.front)
    assert {a.path for a in client.list_artifacts(parent, "pareto")} == \
        {"pareto/front.png", "pareto/front.html", "pareto/front.csv"}
    csv = client.download_artifacts(parent, "pareto/front.csv", str(tmp_path))
    rows = open(csv).read().strip().splitlines()
    assert len(rows) == 1 + len(after.front)
    assert {row.split(",")[2] for row in rows[1:]} == {t.run_id for t in after.front}     # the trials' runs
    assert math.isfinite(client.get_run(parent).data.metrics["pareto_hypervolume_pct"])
    assert_front_shown(client, parent, "after 24 training iterations")      # the last live update's


def assert_front_shown(client, parent_run_id, when):
    """The MLflow UI shows the search's front (what ``skipnet pareto`` computes from MLflow now):
    the parent run's description (``when`` its update) has one table row per front point, best
    first (the knee, then by the hypervolume each adds), with its metrics, its final alpha and
    whether retraining reproduces it, and an export command that selects exactly it, run
    through the real CLI parser and selection; each trial's run carries its rank and colour;
    the search's saved view, run as the UI runs it, lists the search's runs front first."""
    parent = client.get_run(parent_run_id)
    front = analysis.analyse(parent.data.tags["search_id"], parent_run_id, runs.search_trials(client, parent))
    text = parent.data.tags[ui.NOTE]
    assert text.startswith(f"**Front: {len(front.front)} of {len(front.trials)} points**, hypervolume "
                           f"{front.hypervolume_pct:.2f} %;") and f"This front: {when}" in text
    headers, rows = description_table(text)
    shown = [row_trial(row[0]) for row in rows]                        # threshold points: ID@T
    best = front.best_first()
    assert shown == [t.trial_id for t in best] and best[0].trial_id == front.knee.trial_id
    for t, row in zip(best, rows):
        cell = dict(zip(headers, row))
        assert (cell["val_top1"], cell["comp. %"]) == (f"{t.accuracy:.2f}", f"{t.computation:.2f}"), t.trial_id
        assert row[0].startswith("**") == (t.trial_id == front.knee.trial_id)     # the knee, in bold
        assert float(cell["alpha"]) == pytest.approx(float(t.config["hrl.alpha"]), rel=1e-3)
        assert cell["retrains"] == analysis.RETRAIN[t.reproducibility.reproducible]
        assert t.reproducibility.sentence in text                    # what "retrains" says, word for word
    uri, commands = description_commands(text)
    assert uri == (None if client.tracking_uri == runs.default_tracking_uri() else client.tracking_uri)
    assert len(commands) == len(best) and max(len(line) for line in text.split("```")[1].splitlines()) <= 100
    for t, (remark, command) in zip(best, commands):
        assert remark.split()[0] == t.trial_id
        argv = shlex.split(command)
        args = build_parser().parse_args(argv[1:])
        assert argv[0] == "skipnet" and args.command == "export" and args.search == front.search_id
        store = runs.open_store(args.tracking_uri or uri)
        trials = [p for run in runs.find_searches(store, args.search) for p in runs.search_trials(store, run)]
        picked = analysis.select(trials, max_computation=args.max_computation, min_accuracy=args.min_accuracy,
                                 knee=args.knee, trial_id=args.trial)
        assert picked.trial_id == t.trial_id, (command, picked.trial_id)
    ranks = ui.run_ranks(front.trials, front.rank)       # a trial's best point (its own or ID@T)
    for run_id, rank in ranks.items():
        tags = client.get_run(run_id).data.tags
        assert tags["pareto_rank"] == ("" if rank == pareto.NAN_RANK else str(rank))
        assert tags[ui.RUN_COLOR] == (ui.FRONT_COLOR if rank == 0 else ui.OTHER_COLOR)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[ui.KIND] == "custom_model_development"
    view = json.loads(experiment.tags[ui.SAVED_VIEW + ui.view_key(front.search_id)])
    state = json.loads(view["state"])
    listed = client.search_runs([experiment.experiment_id], filter_string=state["searchFilter"],
                                order_by=[f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"])
    assert {r.info.run_id for r in listed} == {parent_run_id, *ranks}          # no shared SP run
    front_runs = {run_id for run_id, rank in ranks.items() if rank == 0}     # copies of a front point too
    assert {r.info.run_id for r in listed[:len(front_runs)]} == front_runs
