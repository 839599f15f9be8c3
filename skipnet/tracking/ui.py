"""What the MLflow UI shows of a search: its trials' table, its front and how to export a trial.

MLflow 3.17's UI (the bundle in ``mlflow/server/js/build``) decides, and this module sets what it
lets a store set:

* **GenAI or model training** is a per-browser setting, not the experiment's: the sidebar switch,
  kept in the browser's local storage (``mlflow.workflowType``, default ``genai``) and overridden
  per page by the URL parameter ``workflowType=machine_learning``. In GenAI mode an experiment
  opens on its "Overview" of traces and a run's page links back to "Evaluations". The experiment
  tag ``mlflow.experimentKind`` is no longer read to choose (a feature flag fixed on makes the
  kind follow the switch); it is set anyway (``custom_model_development``), for older UIs. So
  every link written here carries ``workflowType=machine_learning``.
* **The description** of an experiment or a run is its tag ``mlflow.note.content``, rendered as
  markdown by showdown: tables without borders or cell padding (cells run together unless
  padded: :data:`skipnet.fronts.analysis.CELL_GAP`), headings as plain text, HTML attributes stripped;
  a run's page shows its first 150 pixels (a line and about three table rows) above "Show
  more". The experiment's shows on top of every tab, the GenAI overview too: it links to the
  latest search's trials and front. The parent run's holds the front, best points first
  (:func:`skipnet.fronts.analysis.front_markdown`), with one ``skipnet export`` command per front point.
* **The runs table** nests child runs under their parent, collapsed, only while it is sorted by
  start time without a filter; its columns are chosen per browser. A *saved view* (experiment
  tag ``mlflow.sharedViewState.<key>``: name, creation time and the table's state as JSON; the
  Runs tab's "Views" menu lists them, ``?viewStateShareKey=<key>`` opens one) sets the filter,
  the sort, the columns and the charts. Each search gets one: its trials (not its shared SP
  runs), front first, with validation accuracy, computation, the routing metrics (Spearman rho of
  per-image computation with difficulty, distinct execution paths), alpha, lr, gate and Pareto rank,
  and a chart section whose scatter is accuracy against computation, one card a row, 500 px high
  (a section's ``columns`` and ``cardHeight``; by default three 360-px cards share the chart
  pane beside the runs list, and the chart's toolbar covers the top of its tiny plot). No view can be made the
  default, nor can a view expand nested runs (MLflow drops ``runsExpanded`` from saved views).
* **Run colours** (tag ``mlflow.runColor``) colour a run in the table and the charts: front
  trials orange, the others grey, so the front stands out in the scatter; the parent run blue.
* **Chart or table** is the URL parameter ``compareRunsMode=CHART``; the experiment's
  description links to both.

This module builds on :mod:`skipnet.tracking.runs` (the runs themselves, the store's default
URI, the retry switch), which never imports it: a new search's runs are created there, and
``prepare_ui`` then sets what the UI shows of them.
"""
from __future__ import annotations

import contextlib
import json
import re
import time

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from skipnet.fronts.analysis import SearchFront, TrialPoint, front_markdown
from skipnet.fronts.pareto import NAN_RANK
from skipnet.tracking.runs import default_tracking_uri, no_retries

NOTE = "mlflow.note.content"                      # description of a run or an experiment (markdown)
KIND = "mlflow.experimentKind"
SAVED_VIEW = "mlflow.sharedViewState."            # + key: a saved view of the Runs tab
RUN_COLOR = "mlflow.runColor"
FRONT_COLOR, OTHER_COLOR, SEARCH_COLOR = "#e8590c", "#adb5bd", "#1c7ed6"     # front trials, others, parent
TRIAL_COLUMNS = {"metrics.`val_top1`": 150, "metrics.`val_computation_pct`": 170,
                 "metrics.`val_difficulty_spearman`": 170, "metrics.`val_distinct_paths`": 150,
                 "params.`hrl.alpha`": 150, "params.`hrl.lr`": 150, "params.`model.gate`": 150,
                 "tags.`pareto_rank`": 110}   # column: width (routing: rho with difficulty, execution paths)
_EXPERIMENT_NOTE = "**SkipNet searches.**"        # how an experiment description written here starts


def view_key(search_id: str) -> str:
    """The key of a search's saved view (tag names allow letters, digits, ``_ . -``)."""
    return "skipnet-" + re.sub(r"[^A-Za-z0-9_.-]", "-", search_id)


def trials_link(experiment_id: str, search_id: str, charts: bool = False) -> str:
    """A link (relative: it works on any host serving the UI) to the search's saved view, as a
    table or (``charts``) as charts."""
    return (f"#/experiments/{experiment_id}/runs?viewStateShareKey={view_key(search_id)}&workflowType=machine_learning"
            + ("&compareRunsMode=CHART" if charts else ""))


def run_link(experiment_id: str, run_id: str = "{run_id}") -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def trials_view(search_id: str) -> dict:
    """The state of the search's saved view, in MLflow's keys: the search's parent and trial runs
    (a filter flattens the table), front first, the useful columns, every run in the charts, and
    a first chart section with the accuracy/computation scatter."""
    return {
        "searchFilter": f"tags.search_id = '{search_id}' AND tags.`skipnet.kind` != 'sp'",
        "orderByKey": "tags.`pareto_rank`", "orderByAsc": True,
        "selectedColumns": list(TRIAL_COLUMNS), "columnOrder": list(TRIAL_COLUMNS), "columnWidths": TRIAL_COLUMNS,
        "runsHiddenMode": "SHOW_ALL",
        "compareRunSections": [{"uuid": "skipnet-front", "name": "Accuracy/computation front", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False,
                                "columns": 1, "cardHeight": 500}],
        "compareRunCharts": [{"uuid": "skipnet-front-scatter", "type": "SCATTER", "metricSectionId": "skipnet-front",
                              "displayName": "val_top1 against val_computation_pct (front: orange)",
                              "runsCountToCompare": 1000, "deleted": False, "isGenerated": False,
                              "xaxis": {"key": "val_computation_pct", "type": "METRIC"},
                              "yaxis": {"key": "val_top1", "type": "METRIC"}}],
        "isAccordionReordered": True}


def prepare_ui(client: MlflowClient, experiment_id: str, search_id: str, parent_run_id: str) -> None:
    """At a search's start: the experiment's kind (unless set), the search's saved view, the
    experiment's description pointing at this search (unless a user wrote another) and the
    parent run's description until the first front replaces it."""
    experiment = client.get_experiment(experiment_id)
    if KIND not in experiment.tags:
        client.set_experiment_tag(experiment_id, KIND, "custom_model_development")
    now = int(time.time() * 1000)
    client.set_experiment_tag(experiment_id, SAVED_VIEW + view_key(search_id), json.dumps(
        {"name": f"{search_id}: trials, front first", "createdAt": now, "updatedAt": now,
         "state": json.dumps(trials_view(search_id))}))
    if experiment.tags.get(NOTE, _EXPERIMENT_NOTE).startswith(_EXPERIMENT_NOTE):
        client.set_experiment_tag(experiment_id, NOTE, (
            f"{_EXPERIMENT_NOTE} Latest, {search_id}: [its front and export commands]"
            f"({run_link(experiment_id, parent_run_id)}) · [its trials, front first]"
            f"({trials_link(experiment_id, search_id)}) · [accuracy against computation]"
            f"({trials_link(experiment_id, search_id, charts=True)}).\n\nEach search is a run named after it: its "
            "description holds the search's accuracy/computation front with the `skipnet export` command of each "
            "front trial, and its child runs are its trials. Earlier searches: the Views menu of the Runs tab."))
    client.log_batch(parent_run_id, tags=[RunTag(RUN_COLOR, SEARCH_COLOR), RunTag(NOTE, (
        "**Running**: the accuracy/computation front and its export commands appear here with the first "
        f"results. [The trials so far]({trials_link(experiment_id, search_id)})."))])


def run_ranks(points: list[TrialPoint], ranks) -> dict[str, int]:
    """Run id -> the best (lowest) rank of its points: a trial is on the front when its own
    point or one of its threshold points is."""
    best: dict[str, int] = {}
    for point, rank in zip(points, ranks):
        if point.run_id:
            best[point.run_id] = min(int(rank), best.get(point.run_id, NAN_RANK))
    return best


def tag_ranks(client: MlflowClient, points: list[TrialPoint], ranks,
              shown: dict[str, int] | None = None) -> dict[str, int]:
    """``pareto=true|false``, ``pareto_rank`` (0 = the front; the best of the run's points,
    ``run_ranks``) and the run colour (front trials stand out) on every trial's run. ``shown``:
    run id -> rank already tagged (left alone); returns it updated."""
    shown = dict(shown or {})
    for run_id, rank in run_ranks(points, ranks).items():
        if shown.get(run_id) == rank:
            continue
        client.log_batch(run_id, tags=[
            RunTag("pareto", str(rank == 0).lower()), RunTag("pareto_rank", "" if rank == NAN_RANK else str(rank)),
            RunTag(RUN_COLOR, FRONT_COLOR if rank == 0 else OTHER_COLOR)])
        shown[run_id] = rank
    return shown


def show_front(client: MlflowClient, front: SearchFront, *, experiment_id: str | None = None, when: str = "",
               shown: dict[str, int] | None = None, retry: bool = True) -> dict[str, int]:
    """Put ``front`` where the UI shows it: each trial's ``pareto``, ``pareto_rank`` and run
    colour (``tag_ranks``), and the parent run's description
    (:func:`~skipnet.fronts.analysis.front_markdown`, ``when`` saying how current it is).

    ``shown``: run id -> rank already tagged (those runs are left alone); returns it updated.
    ``retry=False``: fail at once instead of MLflow's minutes of retries (the live front)."""
    with contextlib.nullcontext() if retry else no_retries():
        shown = tag_ranks(client, front.trials, front.rank, shown)
        if experiment_id is None:
            experiment_id = client.get_run(front.parent_run_id).info.experiment_id
        uri = client.tracking_uri
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        client.set_tag(front.parent_run_id, NOTE, front_markdown(
            front, tracking_uri=None if uri == default_tracking_uri() else uri,
            run_link=run_link(experiment_id), trials_link=trials_link(experiment_id, front.search_id),
            when=f"{when}, updated {stamp}" if when else f"updated {stamp}"))
    return shown
