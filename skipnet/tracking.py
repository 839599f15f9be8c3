"""MLflow bookkeeping of searches: one parent run per search, one child run per trial.

Talks to MLflow through ``MlflowClient`` only (no global active run), so it works the same
against the embedded SQLite store and a remote tracking server, where artifacts are uploaded
through the server. Child runs are found again by their ``trial_id`` tag: a resumed search
reuses them, never duplicates them. Only the trial's config is logged as params: nothing from
the environment reaches MLflow.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from skipnet.config import flatten

DEFAULT_DB = "mlflow.db"


def default_tracking_uri() -> str:
    """The embedded store: SQLite in the working directory."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000"
    return f"open {uri} in a browser"


def _param_value(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 6000 else text[:5997] + "..."


class SearchTracker:
    """Parent and child runs of one search in one MLflow experiment."""

    def __init__(self, tracking_uri: str | None, experiment_name: str) -> None:
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        existing = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment_name)
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}

    # -- parent -------------------------------------------------------------------------------
    def start_search(self, search_id: str, spec: dict[str, Any], space: dict[str, Any],
                     parent_run_id: str | None = None) -> str:
        """Create the parent run (or reopen ``parent_run_id`` on resume); returns its id."""
        if parent_run_id:
            self.parent_run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
            return parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=search_id,
                                     tags={"search_id": search_id, "skipnet.kind": "search"})
        self.parent_run_id = run.info.run_id
        params = [Param(k, _param_value(v)) for k, v in flatten({"experiment": spec}).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_run_id, params=params[i:i + 100])
        self.client.log_dict(self.parent_run_id, spec, "experiment.yaml")
        self.client.log_dict(self.parent_run_id, space, "search_space.yaml")
        return self.parent_run_id

    def end_search(self, status: str = "FINISHED") -> None:
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status)

    # -- children -----------------------------------------------------------------------------
    def child_run(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> str:
        """The child run of ``trial_id``: found by tag if it exists (resume), else created."""
        if trial_id in self._children:
            return self._children[trial_id]
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.trial_id = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=trial_id,
                                         tags={"mlflow.parentRunId": self.parent_run_id, "trial_id": trial_id, **tags})
            run_id = run.info.run_id
            params = [Param(k, _param_value(v)) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._children[trial_id] = run_id
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def end_child(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    def log_checkpoint(self, run_id: str, directory: str | os.PathLike) -> None:
        """Upload a checkpoint directory as the run's ``checkpoint`` artifact (through the server)."""
        self.client.log_artifacts(run_id, str(directory), artifact_path="checkpoint")

    def children(self) -> list:
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                                       max_results=10000)
