"""``MLflowSearchCallback``: Tune trial events -> MLflow child runs under the search's parent run.

Runs in the driver. Per trial: a child run on start (found again on resume), every result as
metrics at step ``training_iteration`` (steps already logged are skipped, so a resumed search
repeats none), and on completion the status, a ``stopped_early`` tag and the best checkpoint as
an artifact.
"""
from __future__ import annotations

import logging
from typing import Any

from ray import tune

from skipnet.tracking import SearchTracker

log = logging.getLogger(__name__)


class MLflowSearchCallback(tune.Callback):
    def __init__(self, tracking_uri: str | None, experiment_name: str, parent_run_id: str,
                 tags: dict[str, str], max_steps: int, base_train: dict[str, Any] | None = None) -> None:
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.base_train = base_train or {}
        self.parent_run_id, self.tags, self.max_steps = parent_run_id, tags, max_steps
        self._tracker: SearchTracker | None = None
        self._last_step: dict[str, int] = {}

    @property
    def tracker(self) -> SearchTracker:
        if self._tracker is None:
            self._tracker = SearchTracker(self.tracking_uri, self.experiment_name)
            self._tracker.parent_run_id = self.parent_run_id
        return self._tracker

    def _run(self, trial) -> str:
        config = trial.config
        tags = dict(self.tags, trial_id=trial.trial_id,
                    gate=str(_get(config, "model.gate") or self.tags.get("gate", "")))
        run_id = self.tracker.child_run(trial.trial_id, self._full_config(config), tags)
        if run_id not in self._last_step:
            history = self.tracker.client.get_metric_history(run_id, "training_iteration")
            self._last_step[run_id] = max((m.step for m in history), default=0)
        return run_id

    def _full_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The trial's whole TrainConfig (shared settings plus its sampled values)."""
        from skipnet.config import flatten, load_train_config, to_dict
        try:
            return to_dict(load_train_config(None, flatten(config), base=dict(self.base_train)))
        except Exception:                       # never let bookkeeping fail a trial
            return config

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._run(trial)

    def on_trial_result(self, iteration, trials, trial, result: dict[str, Any], **info) -> None:
        run_id = self._run(trial)
        step = int(result.get("training_iteration", 0))
        if step <= self._last_step.get(run_id, 0):
            return                                   # already logged before a restart
        self.tracker.log_metrics(run_id, result, step)
        self._last_step[run_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._run(trial)
        last = trial.last_result or {}
        stopped = int(last.get("training_iteration", 0)) < self.max_steps and not last.get("engine_done")
        self._log_best_checkpoint(run_id, trial)
        self.tracker.end_child(run_id, "FINISHED", {"stopped_early": str(stopped).lower(),
                                                    "tune_status": "stopped" if stopped else "completed"})

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.tracker.end_child(self._run(trial), "FAILED", {"tune_status": "error"})

    def on_experiment_end(self, trials, **info) -> None:
        if self._tracker is not None:
            self.tracker.end_search("FINISHED")

    def _log_best_checkpoint(self, run_id: str, trial) -> None:
        manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
        best = getattr(manager, "best_checkpoint_result", None) if manager else None
        checkpoint = best.checkpoint if best is not None else trial.checkpoint
        if checkpoint is None:
            return
        try:
            with checkpoint.as_directory() as directory:
                self.tracker.log_checkpoint(run_id, directory)
        except Exception as e:   # a missing artifact must not fail the search; Tune storage keeps it
            log.warning("could not log the checkpoint of %s to MLflow: %s", trial.trial_id, e)

    def __getstate__(self):                          # Tune pickles callbacks into its experiment state
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state


def _get(config: dict, dotted: str):
    if dotted in config:
        return config[dotted]
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
