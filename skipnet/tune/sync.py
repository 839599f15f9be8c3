"""``skipnet sync-mlflow``: what a search's Tune storage holds, made into MLflow runs.

Reads the search directory (a local path or a URI): ``skipnet_search.json`` (the experiment and
its MLflow parent run), then each Tune experiment in it, the shared SP phase's (``sp/``) first,
trial by trial (Tune's experiment state, and each trial's result file, last checkpoint and
error file: ``skipnet.tune.result_logs``). Each trial becomes a ``StoredTrial`` with the
config and tags the search's callback gives its run, and ``skipnet.tracking.sync`` adds to
MLflow what it lacks of it. A parent run still running ends, at its last trial's end, once
every trial has ended.
"""
from __future__ import annotations

from skipnet.core import storage
from skipnet.core.config import flatten, load_train_config
from skipnet.errors import SkipNetError
from skipnet.tracking.runs import SearchTracker
from skipnet.tracking.sync import COUNTS, StoredTrial, sync_trial
from skipnet.tune.experiment import ExperimentConfig
from skipnet.tune.mlflow_callback import _get, full_train_config
from skipnet.tune.result_logs import error_time, last_checkpoint, trial_results
from skipnet.tune.runner import changing_keys, load_space, read_search_meta, search_tags
from skipnet.tune.sharing import SP_DIR, plan_sharing, sp_key

STATUS = {"TERMINATED": "finished", "ERROR": "failed"}      # Tune's trial status -> StoredTrial's; else running


def sync_mlflow(path: str) -> dict[str, int]:
    """Copy into MLflow what Tune's storage at ``path`` holds and MLflow lacks: child runs (the
    shared SP phase's too), results (by step), last checkpoints and end states; returns what
    was added (``skipnet.tracking.sync.COUNTS``). Idempotent, and what it creates or ends gets
    the trials' own times (see ``skipnet.tracking.sync``)."""
    meta, exp = read_search_meta(path)
    root = storage.resolve(path)                # as Tune names checkpoints, whichever way PATH is written
    tracker = SearchTracker(meta["tracking_uri"], exp.mlflow.experiment_name)
    tracker.parent_run_id = meta["parent_run_id"]
    plan, _ = plan_sharing(exp, load_space(exp))
    tags = search_tags(exp, meta["search_id"])
    counts = dict.fromkeys(COUNTS, 0)
    finished, sp_runs = True, None
    if plan is not None and storage.is_dir(storage.join(root, SP_DIR)):   # the shared SP phase, as build_sp_tuner logs it
        sp_runs = {}
        finished = _sync_trials(tracker, storage.join(root, SP_DIR), exp, dict(tags, role="sp"), plan.steps, counts,
                                sp_runs_out=sp_runs)
    try:
        finished &= _sync_trials(tracker, root, exp, dict(tags, role="hrl") if plan is not None else tags,
                                 plan.hrl_steps if plan is not None else exp.budget.max_steps, counts,
                                 sp_runs=sp_runs, later=changing_keys(exp))
    except _NoTuneState as e:
        if sp_runs is None:                                     # nothing at all to read
            raise SkipNetError(f"sync-mlflow: {path}: Tune has no readable experiment state there ({e})") from None
        finished = False                                        # stopped during the SP phase
    if finished:
        tracker.close_search("FINISHED")
    return counts


class _NoTuneState(Exception):
    pass


def _sync_trials(tracker: SearchTracker, root: str, exp: ExperimentConfig, tags: dict[str, str], max_steps: int,
                 counts: dict[str, int], *, sp_runs: dict[str, str] | None = None,
                 sp_runs_out: dict[str, str] | None = None, later: frozenset[str] = frozenset()) -> bool:
    """``sync_mlflow`` for one Tune experiment at ``root`` (the searched trials', or the SP
    phase's with ``sp_runs_out`` collecting SP key -> run), a local path or a URI. True if every
    trial has ended. ``later``: keys logged as params once the trial has ended (``changing_keys``)."""
    from ray.tune import ExperimentAnalysis
    try:
        analysis = ExperimentAnalysis(root)
    except Exception as e:
        raise _NoTuneState(str(e)) from None
    base = exp.base_train()
    finished = True
    for trial in analysis.trials:
        trial_dir = storage.join(root, trial.storage.trial_dir_name)
        config = full_train_config(trial.config, base)
        run_tags = dict(tags, trial_id=trial.trial_id, gate=str(_get(trial.config, "model.gate") or tags["gate"]))
        if sp_runs and sp_runs.get(sp_key(config)):
            run_tags["sp_run_id"] = sp_runs[sp_key(config)]
        status = STATUS.get(trial.status, "running")
        stored = StoredTrial(trial.trial_id, config, run_tags, status, trial_results(trial_dir),
                             checkpoint=last_checkpoint(trial_dir) if status != "running" else None,
                             error_time=error_time(trial_dir) if status == "failed" else None)
        run_id = sync_trial(tracker, stored, counts, max_steps=max_steps, later=later)
        if sp_runs_out is not None:
            sp_runs_out[sp_key(load_train_config(None, flatten(trial.config), base=base))] = run_id
        finished &= status != "running"
    return finished
