"""MLflow made to hold what a search's own storage holds of its trials (``skipnet sync-mlflow``).

The search layer reads its storage (``skipnet.tune.sync``: Tune's experiment state and result
files) into one ``StoredTrial`` per trial; ``sync_trial`` then adds to MLflow what it lacks of
that trial: its child run, its results (by step), its last checkpoint and its end state.

Idempotent: what MLflow holds stays as it is, so a second sync, or a sync of a search the
callback logged whole, changes nothing. A run already ended with the status its trial has
keeps its tags and end time (the callback saw the trial end). What sync creates or ends gets
the trial's own times, never the time of the sync: a run starts at its first result (its time
less the iteration's), its results keep their timestamps, and it ends at its last result (or,
failing before any, when its error was written).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skipnet.core import storage
from skipnet.tracking.runs import SearchTracker, completion_tags, result_tags

#: What a sync counts, in the order ``skipnet sync-mlflow`` reports it.
COUNTS = ("runs_created", "results_logged", "checkpoints_logged", "runs_ended")


@dataclass
class StoredTrial:
    """One trial as the search's storage holds it."""

    trial_id: str
    config: dict[str, Any]                    # its whole training config: the run's params
    tags: dict[str, str]                      # the tags of its run, where the run has to be created
    status: str                               # "running", "finished" or "failed"
    results: list[dict[str, Any]] = field(default_factory=list)   # its reports in order, one per step
    checkpoint: str | None = None             # an ended trial's last checkpoint directory (path or URI)
    error_time: float | None = None           # a failed trial's: when its error was written (s since the epoch)


def sync_trial(tracker: SearchTracker, trial: StoredTrial, counts: dict[str, int], *, max_steps: int,
               later: frozenset[str] = frozenset()) -> str:
    """Add to the search's MLflow runs (``tracker``, its parent run set) what they lack of
    ``trial``; returns its run id. ``counts`` (keys ``COUNTS``) adds up what was added;
    ``max_steps``: the steps a trial that ran to the end reported (``completion_tags``);
    ``later``: keys logged as params once the trial has ended (``SearchTracker.child_run``)."""
    results = trial.results
    run_id = tracker.find_child(trial.trial_id)
    if run_id is None:                                      # the callback missed the trial's start
        run_id = tracker.child_run(trial.trial_id, trial.config, trial.tags, start_time=_started_at(results),
                                   later=later)
        counts["runs_created"] += 1
    logged = tracker.logged_steps(run_id)
    for result in results:
        step = int(result.get("training_iteration", 0))
        if step and step not in logged:
            tracker.log_metrics(run_id, result, step, timestamp=_ms(result.get("timestamp")))
            logged.add(step)
            counts["results_logged"] += 1
    run = tracker.client.get_run(run_id)
    schedule = next((r["hyperparameter_schedule"] for r in reversed(results) if r.get("hyperparameter_schedule")), None)
    if schedule and run.data.tags.get("hyperparameter_schedule") != schedule:
        tracker.set_tags(run_id, {"hyperparameter_schedule": schedule})
    latest = {k: v for r in results for k, v in result_tags(r).items()}   # the latest of each
    if any(run.data.tags.get(k) != v for k, v in latest.items()):
        tracker.set_tags(run_id, latest)
    if trial.status == "running":
        return run_id
    tracker.log_final_params(run_id, trial.config, later, have=run.data.params)   # the stored config: the final one
    if trial.status == "finished" and trial.checkpoint is not None and not tracker.has_checkpoint(run_id):
        with storage.local_copy(trial.checkpoint) as directory:      # MLflow uploads a local directory
            tracker.log_checkpoint(run_id, directory)
        counts["checkpoints_logged"] += 1
    status = "FINISHED" if trial.status == "finished" else "FAILED"
    if run.info.status == status:
        return run_id                                       # ended as the storage says: its record stands
    if status == "FINISHED":
        end = completion_tags(results[-1] if results else {}, max_steps)
        if trial.checkpoint is not None:
            end["checkpoint_path"] = trial.checkpoint           # a URI keeps its scheme
    else:
        end = {"tune_status": "error"}
    ended = _ended_at(trial)
    tracker.end_child(run_id, status, end, end_time=max(ended, run.info.start_time or 0) if ended else None)
    counts["runs_ended"] += 1
    return run_id


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(float(seconds) * 1000)


def _started_at(results: list[dict[str, Any]]) -> int | None:
    """When the trial started (ms), as its first result says: its time less the iteration's."""
    if not results or "timestamp" not in results[0]:
        return None
    return _ms(float(results[0]["timestamp"]) - float(results[0].get("time_this_iter_s", 0.0)))


def _ended_at(trial: StoredTrial) -> int | None:
    """When the trial ended (ms): its last result's timestamp, or for a trial that failed before
    reporting anything, when its error was written."""
    if trial.results and "timestamp" in trial.results[-1]:
        return _ms(trial.results[-1]["timestamp"])
    return _ms(trial.error_time)
