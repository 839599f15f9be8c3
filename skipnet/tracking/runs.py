"""MLflow bookkeeping of searches: one parent run per search, one child run per trial.

Talks to MLflow through ``MlflowClient`` only (no global active run), so it works the same
against the embedded SQLite store and a remote tracking server, where artifacts are uploaded
through the server. Child runs are found again by their ``trial_id`` tag: a resumed search or a
``sync-mlflow`` reuses them, never duplicates them. Only the trial's config is logged as params:
nothing from the environment reaches MLflow. Params cannot change once logged, and PBT changes
a trial's hyperparameters while it trains: the keys a search mutates are therefore logged when
the trial ends, with the values it ended with (``log_final_params``); until then its reported
``alpha`` and ``lr`` metrics and its ``hyperparameter_schedule`` tag hold the current ones.
Ray's own bookkeeping in a result (``pid``, ``hostname``, ``timestamp`` ...) is not a metric.

Reading back: ``open_store`` checks the store before anything is created, ``find_searches``
resolves what a user names (parent run id, search id or experiment name) and ``search_trials``
returns each trial's last reported point, which ``skipnet pareto`` and ``skipnet export`` use.

What the MLflow UI shows of these runs (saved views, run colours, descriptions, Pareto rank
tags) is :mod:`skipnet.tracking.ui`, which builds on this module; this one never imports it.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from skipnet.core.config import flatten
from skipnet.errors import ConfigError, SkipNetError
from skipnet.fronts.analysis import TrialPoint, final_config, parse_schedule, with_threshold_points

DEFAULT_DB = "mlflow.db"
TRAIN_CONFIG_ARTIFACT = "train_config.yaml"
CHECKPOINT_ARTIFACT = "checkpoint"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def default_tracking_uri() -> str:
    """The embedded store: SQLite in the working directory."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000"
    return f"open {uri} in a browser"


def server_reachable(uri: str, timeout: float = 3.0) -> bool:
    """True if ``uri`` is not a server, or the server answers ``/health`` within ``timeout``."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_store(uri: str, *, field: str = "mlflow.tracking_uri", must_exist: bool = False) -> None:
    """Fail in one line, before anything is written, if the store cannot be used.

    A server must answer; a SQLite file must exist when reading (``must_exist``), since
    opening a missing one would create an empty store.
    """
    if uri.startswith(("http://", "https://")):
        if not server_reachable(uri):
            raise ConfigError(field, uri, "the URL of a running MLflow tracking server (no answer from its /health)")
    elif uri.startswith("sqlite:///") and must_exist and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(field, uri, "an existing MLflow SQLite store (run a search first, or name the store)")


def open_store(uri: str | None, *, field: str = "--tracking-uri") -> MlflowClient:
    """A client of an existing store (for reading searches back)."""
    uri = resolve_uri(uri)
    check_store(uri, field=field, must_exist=True)
    return MlflowClient(tracking_uri=uri)


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout (``+dirty`` if edited)."""
    from skipnet.version import __version__
    root = Path(__file__).resolve().parents[2]       # skipnet/tracking/runs.py -> the checkout
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__


#: String-valued results, kept as tags of the trial's run (MLflow metrics are numbers only).
RESULT_TAGS = ("val_difficulty_source", "test_difficulty_source")


def result_tags(result: dict[str, Any]) -> dict[str, str]:
    """The tags a result carries: its string values of ``RESULT_TAGS`` (what the routing
    metrics' ``difficulty_spearman`` was measured against)."""
    return {k: result[k] for k in RESULT_TAGS if isinstance(result.get(k), str)}


def completion_tags(last_result: dict[str, Any], max_steps: int) -> dict[str, str]:
    """``stopped_early`` and ``tune_status`` of a trial that ended normally after ``last_result``
    (``max_steps``: the steps of a trial that ran to the end)."""
    stopped = int(last_result.get("training_iteration", 0)) < max_steps and not last_result.get("engine_done")
    return {"stopped_early": str(stopped).lower(), "tune_status": "stopped" if stopped else "completed"}


#: What Ray Tune adds to every result about the process and its clocks, not about the model:
#: not logged as metrics (``training_iteration`` is the step; ``time_this_iter_s`` and
#: ``time_total_s``, what the trial's steps cost, stay).
RAY_BOOKKEEPING = frozenset({
    "pid", "hostname", "node_ip", "date", "timestamp", "time_since_restore", "iterations_since_restore",
    "timesteps_since_restore", "timesteps_total", "timesteps_this_iter", "episodes_total", "episodes_this_iter",
    "experiment_tag", "trial_id", "done", "should_checkpoint", "checkpoint_dir_name"})


def _param_value(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 6000 else text[:5997] + "..."


class SearchTracker:
    """Parent and child runs of one search in one MLflow experiment."""

    def __init__(self, tracking_uri: str | None, experiment_name: str) -> None:
        self.uri = resolve_uri(tracking_uri)
        check_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        existing = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment_name)
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}

    # -- parent -------------------------------------------------------------------------------
    def start_search(self, search_id: str, spec: dict[str, Any], space: dict[str, Any],
                     parent_run_id: str | None = None) -> str:
        """Create the parent run (or reopen ``parent_run_id`` on resume); returns its id. What the
        UI shows of a new search is set by :func:`skipnet.tracking.ui.prepare_ui`."""
        if parent_run_id:
            self.parent_run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
            return parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=search_id,
                                     tags={"search_id": search_id, "skipnet.kind": "search",
                                           "skipnet.version": code_version()})
        self.parent_run_id = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in flatten({"experiment": spec}).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_run_id, params=params[i:i + 100])
        self.client.log_dict(self.parent_run_id, spec, "experiment.yaml")
        self.client.log_dict(self.parent_run_id, space, "search_space.yaml")
        return self.parent_run_id

    def end_search(self, status: str = "FINISHED", end_time: int | None = None) -> None:
        """End the parent run at ``end_time`` (ms since the epoch; default now, for a search
        ending as this is called)."""
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status, end_time=end_time)

    def close_search(self, status: str = "FINISHED") -> bool:
        """End the parent run if it is still running, at its last child run's end (the search
        ended then, not now); a parent already ended keeps its status and end time. True if it
        ended it. For bookkeeping that ran no trial: ``sync-mlflow``, a resume with nothing left."""
        if not self.parent_run_id or self.client.get_run(self.parent_run_id).info.status != "RUNNING":
            return False
        ends = [r.info.end_time for r in self.children() if r.info.end_time]
        self.end_search(status, end_time=max(ends) if ends else None)
        return True

    def reopen_search(self) -> bool:
        """A resume: the parent run of a search stopped on purpose (``KILLED``) runs again; a
        finished or failed one keeps its record. True if it was reopened."""
        return self.reopen(self.parent_run_id)

    def reopen(self, run_id: str | None) -> bool:
        """``run_id`` back to ``RUNNING`` if it was ``KILLED`` (its trial continues). True if so."""
        if not run_id or self.client.get_run(run_id).info.status != "KILLED":
            return False
        self.client.update_run(run_id, status="RUNNING")
        return True

    # -- children -----------------------------------------------------------------------------
    def find_child(self, trial_id: str) -> str | None:
        if trial_id in self._children:
            return self._children[trial_id]
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.trial_id = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        if found:
            self._children[trial_id] = found[0].info.run_id
        return self._children.get(trial_id)

    def child_run(self, trial_id: str, config: dict[str, Any], tags: dict[str, str],
                  start_time: int | None = None, later: frozenset[str] | set[str] = frozenset()) -> str:
        """The child run of ``trial_id``: found by tag if it exists (resume), else created with
        the trial's whole training config as params and as ``train_config.yaml``, started at
        ``start_time`` (ms since the epoch; default now, as the trial starts), tagged
        ``skipnet.kind`` ``trial`` (``sp`` for a shared SP run, tag ``role=sp``).

        ``later``: flat keys whose value may still change (a PBT search's mutations): not logged
        now but by ``log_final_params`` as the trial ends (``train_config.yaml`` is the starting
        config)."""
        run_id = self.find_child(trial_id)
        if run_id is not None:
            return run_id
        kind = "sp" if tags.get("role") == "sp" else "trial"      # a shared SP run is not a trial
        run = self.client.create_run(self.experiment_id, run_name=trial_id, start_time=start_time,
                                     tags={"mlflow.parentRunId": self.parent_run_id, "trial_id": trial_id,
                                           "skipnet.kind": kind, **tags})
        run_id = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in flatten(config).items() if k not in later]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])
        self.client.log_dict(run_id, config, TRAIN_CONFIG_ARTIFACT)
        self._children[trial_id] = run_id
        return run_id

    def log_final_params(self, run_id: str, config: dict[str, Any], keys: frozenset[str] | set[str],
                         have: dict[str, str] | None = None) -> None:
        """The values of ``keys`` (flat) in ``config``, the trial's config as it ended, as params of
        its run (what ``child_run`` left for later); keys the run already has (``have``: its
        params, read when not given) stay as they are: params are immutable, and a run started by
        an older version keeps its starting values (``search_trials`` corrects them from the
        schedule)."""
        if not keys:
            return
        have = self.client.get_run(run_id).data.params if have is None else have
        values = {k: v for k, v in flatten(config).items() if k in keys and k not in have}
        if values:
            self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in values.items()])

    def logged_steps(self, run_id: str) -> set[int]:
        """Steps whose result is in MLflow (every result carries ``training_iteration``)."""
        return {m.step for m in self.client.get_metric_history(run_id, "training_iteration")}

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int, timestamp: int | None = None) -> None:
        """Numeric, finite ``metrics`` at ``step``, stamped ``timestamp`` (ms; default now); strings
        are not metrics (see ``result_tags``), nor is Ray's bookkeeping (``RAY_BOOKKEEPING``)."""
        now = int(time.time() * 1000) if timestamp is None else int(timestamp)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 and k not in RAY_BOOKKEEPING]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_child(self, run_id: str, status: str, tags: dict[str, str] | None = None,
                  end_time: int | None = None) -> None:
        """Tag and end a trial's run at ``end_time`` (ms; default now, for a trial ending as this
        is called; ``sync-mlflow`` passes the trial's real end)."""
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status, end_time=end_time)

    def log_checkpoint(self, run_id: str, directory: str | os.PathLike) -> None:
        """Upload a checkpoint directory as the run's ``checkpoint`` artifact (through the server)."""
        self.client.log_artifacts(run_id, str(directory), artifact_path=CHECKPOINT_ARTIFACT)

    def has_checkpoint(self, run_id: str) -> bool:
        return bool(self.client.list_artifacts(run_id, CHECKPOINT_ARTIFACT))

    def children(self) -> list:
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                                       max_results=10000)


# -- reading searches back ----------------------------------------------------------------------
def find_searches(client: MlflowClient, spec: str) -> list:
    """Parent runs named by ``spec``: a parent run id, a search id (``quickstart-20261125-...``)
    or an MLflow experiment name (all of its searches)."""
    if not spec or "'" in spec or '"' in spec:
        raise ConfigError("SEARCH", spec, "an MLflow parent run id, a search id or an experiment name, without quotes")
    if _RUN_ID.match(spec):
        try:
            run = client.get_run(spec)
        except Exception:
            run = None
        if run is not None and run.data.tags.get("skipnet.kind") == "search":
            return [run]
    experiments = client.search_experiments(max_results=1000)
    ids = [e.experiment_id for e in experiments]
    if ids:
        runs = client.search_runs(ids, filter_string=f"tags.search_id = '{spec}' and tags.`skipnet.kind` = 'search'")
        if runs:
            return runs
    experiment = client.get_experiment_by_name(spec)
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`skipnet.kind` = 'search'",
                                  order_by=["attributes.start_time ASC"])
        if runs:
            return runs
    names = sorted(e.name for e in experiments)
    raise ConfigError("SEARCH", spec, "an MLflow parent run id, a search id or an experiment name holding "
                                      f"searches (experiments here: {', '.join(names) or 'none'})")


def search_trials(client: MlflowClient, parent) -> list[TrialPoint]:
    """Each trial of a search at its last reported step (what its checkpoint holds), followed by
    its threshold-sweep points (``analysis.with_threshold_points``: ``<trial id>@<t>``); the runs
    of a shared SP phase (tag ``role=sp``) are not trials. A trial's config is its params with
    the hyperparameters its schedule (tag ``hyperparameter_schedule``) ended with
    (``analysis.final_config``): a running PBT trial has no params for them yet, and runs logged
    before they were logged at the end hold the starting values."""
    runs = client.search_runs([parent.info.experiment_id], max_results=10000,
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    search_id = parent.data.tags.get("search_id", parent.info.run_name)
    points = []
    for run in runs:
        if run.data.tags.get("role") == "sp":
            continue                          # a shared SP run: where trials started, not a trial
        m = run.data.metrics
        nan = float("nan")
        schedule = parse_schedule(run.data.tags.get("hyperparameter_schedule"))
        points += with_threshold_points(TrialPoint(
            run_id=run.info.run_id, trial_id=run.data.tags.get("trial_id", run.info.run_name),
            search_id=search_id, parent_run_id=parent.info.run_id,
            accuracy=m.get("val_top1", nan), computation=m.get("val_computation_pct", nan),
            steps=int(m.get("training_iteration", 0)), iteration=int(m.get("iteration", 0)),
            num_classes=int(m["num_classes"]) if "num_classes" in m else None,
            status=run.data.tags.get("tune_status", run.info.status.lower()),
            checkpoint_path=run.data.tags.get("checkpoint_path"),
            config=final_config(dict(run.data.params), schedule),
            metrics=dict(m), schedule=schedule, scheduler=run.data.tags.get("scheduler")))
    return sorted(points, key=lambda p: p.trial_id)


def log_front(client: MlflowClient, front, files: list[Path]) -> None:
    """Log the search's own front (``pareto/front.png``, ``front.html``, ``front.csv``) and the
    front's size and hypervolume to its parent run (the trials' ranks: ``ui.show_front``), at
    step 0: the live front of the running search (``log_live_front``) logs at steps > 0
    (training iterations), so MLflow's latest value of ``pareto_hypervolume_pct`` stays the last
    live one, which equals this one at the default reference point. Several searches compared
    go to ``log_overlay`` instead."""
    for path in files:
        client.log_artifact(front.parent_run_id, str(path), artifact_path="pareto")
    now = int(time.time() * 1000)
    client.log_batch(front.parent_run_id, metrics=[
        Metric("pareto_hypervolume", float(front.hypervolume), now, 0),
        Metric("pareto_hypervolume_pct", float(front.hypervolume_pct), now, 0),
        Metric("pareto_front_size", float(len(front.front)), now, 0)])


OVERLAYS = "pareto/overlays"


def overlay_path(search_ids: list[str]) -> str:
    """Where the overlay of several searches' fronts lies in each of their parent runs:
    ``pareto/overlays/<search ids, sorted, joined by _vs_>`` (the first two and a digest of all
    when that grows past 150 characters). The same searches always name the same place, so
    comparing them again replaces their overlay instead of piling up copies."""
    import hashlib
    ids = sorted({re.sub(r"[^A-Za-z0-9._-]", "_", s) for s in search_ids})
    name = "_vs_".join(ids)
    if len(name) > 150:
        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]
        name = f"{'_vs_'.join(ids[:2])[:100]}_and_{len(ids) - 2}_more-{digest}"
    return f"{OVERLAYS}/{name}"


def log_overlay(client: MlflowClient, fronts: list, files: list[Path]) -> str:
    """Log ``files`` (the overlay plots and every front's CSV) under ``overlay_path`` of each
    search's parent run; returns the artifact path. Each parent's own front (``pareto/front.*``)
    and metrics are left as they are: they describe that search alone (each search's trials are
    tagged with their rank in their own search by ``ui.tag_ranks``)."""
    where = overlay_path([f.search_id for f in fronts])
    for front in fronts:
        for path in files:
            client.log_artifact(front.parent_run_id, str(path), artifact_path=where)
    return where


def log_live_front(client: MlflowClient, front, files: list[Path], step: int) -> None:
    """The front of a running search (``MLflowSearchCallback``): ``files`` under ``pareto/`` of the
    parent run (replacing the previous ones), ``pareto_hypervolume_pct`` and ``pareto_front_size``
    at ``step`` = training iterations spent so far (``log_front``, after a search, uses step 0).

    Fails at once rather than retrying: the MLflow client's back-off adds up to minutes against a
    server that stopped meanwhile, which would stall the search's driver, and the next update
    redraws the front anyway."""
    with no_retries():
        for path in files:
            client.log_artifact(front.parent_run_id, str(path), artifact_path="pareto")
        now = int(time.time() * 1000)
        client.log_batch(front.parent_run_id, metrics=[
            Metric("pareto_hypervolume_pct", float(front.hypervolume_pct), now, step),
            Metric("pareto_front_size", float(len(front.front)), now, step)])


@contextlib.contextmanager
def _retry_policy(max_retries: int, backoff_factor: int):
    """MLflow HTTP requests inside the block use this retry policy (the client reads it per request)."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(backoff_factor)}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def no_retries():
    """MLflow HTTP requests inside the block are not retried."""
    return _retry_policy(0, 0)


def brief_retries():
    """MLflow HTTP requests inside the block are retried twice, within about 4 s: a blip is
    ridden out, while a server that stops during a call costs seconds. The client's default
    (7 retries, back-off 2 s doubling up to 120 s) waits about 4 minutes per request."""
    return _retry_policy(2, 1)


def experiment_name(client: MlflowClient, parent) -> str:
    return client.get_experiment(parent.info.experiment_id).name


def download_train_config(client: MlflowClient, run_id: str, directory: str | os.PathLike) -> dict:
    import yaml
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")     # one file: no progress bar
    try:
        path = client.download_artifacts(run_id, TRAIN_CONFIG_ARTIFACT, str(directory))
    except Exception as e:
        raise SkipNetError(f"run {run_id} has no {TRAIN_CONFIG_ARTIFACT} artifact ({e.__class__.__name__}): "
                           "was it logged by skipnet search?") from None
    return yaml.safe_load(Path(path).read_text())
