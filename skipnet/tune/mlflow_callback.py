"""``MLflowSearchCallback``: Tune trial events -> MLflow child runs under the search's parent run.

Runs in the driver. Per trial: a child run on start (found again on resume), every result as
metrics at step ``training_iteration`` (steps already logged are skipped, so a resumed search
repeats none; its strings, such as ``val_difficulty_source``, as tags; Ray's bookkeeping such as
``pid`` not at all), and on completion the status, a ``stopped_early`` tag and the trial's last
checkpoint (the model its last metrics describe) as an artifact. Under PBT the keys the search
mutates (``later``) become params only then, with the values the trial ended with: params cannot
change, and logged at the start they showed a member's starting alpha and lr for good.

The searched trials' callback (``front_interval_s`` set; not the shared SP phase's) also keeps the
parent run's front current (:mod:`skipnet.tune.live_front`): at most every ``front_interval_s``
seconds, and once more at the end if results arrived since, it logs ``pareto/front.png``,
``front.html`` and ``front.csv`` and the metrics ``pareto_hypervolume_pct`` and
``pareto_front_size`` at step = training iterations the search has spent so far, writes the
front with its export commands into the parent run's description and tags the trials' Pareto
ranks and run colours (:mod:`skipnet.tracking.ui`).

MLflow is a mirror, never a dependency of the search: if the tracking server stops answering,
the callback says so once, stops calling it (a short ``/health`` probe every ``retry_s``
seconds decides when to try again) and the search goes on; Tune's own storage keeps every
result, and ``skipnet sync-mlflow`` copies what MLflow missed.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from skipnet.tracking.runs import SearchTracker, brief_retries, completion_tags, result_tags, server_reachable

log = logging.getLogger(__name__)


class MLflowSearchCallback(tune.Callback):
    later: frozenset[str] = frozenset()              # (a callback pickled by an older version has none)

    def __init__(self, tracking_uri: str | None, experiment_name: str, parent_run_id: str,
                 tags: dict[str, str], max_steps: int, base_train: dict[str, Any] | None = None,
                 search_path: str | None = None, retry_s: float = 30.0,
                 sp_runs: dict[str, str] | None = None, ends_search: bool = True,
                 front_interval_s: float | None = None, front_offset: float = 0.0,
                 later: frozenset[str] = frozenset()) -> None:
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.later = frozenset(later)                    # flat keys PBT mutates: params at the trial's end
        self.sp_runs, self.ends_search = sp_runs, ends_search    # SP key -> SP run (lineage); SP phase: False
        self.base_train = base_train or {}
        self.parent_run_id, self.tags, self.max_steps = parent_run_id, tags, max_steps
        self.search_path, self.retry_s = search_path, retry_s
        self._tracker: SearchTracker | None = None
        self._last_step: dict[str, int] = {}
        self._schedules: dict[str, str] = {}             # run -> hyperparameter_schedule last tagged
        self._result_tags: dict[str, dict[str, str]] = {}   # run -> string results last tagged (result_tags)
        self._offline_since: float | None = None
        self._last_probe = 0.0
        self.missed = 0                                  # events not mirrored while MLflow was down
        self._ran = False                                # a trial started or ended in this fit
        self.live = None                                 # the live front (searched trials only)
        self._shown: dict[str, int] = {}                 # run -> Pareto rank tagged by the live front
        if front_interval_s is not None:
            from skipnet.tune.live_front import LiveFront
            self.live = LiveFront(tags.get("search_id", ""), parent_run_id, front_interval_s, front_offset,
                                  scheduler=tags.get("scheduler"))

    @property
    def tracker(self) -> SearchTracker:
        if self._tracker is None:
            self._tracker = SearchTracker(self.tracking_uri, self.experiment_name)
            self._tracker.parent_run_id = self.parent_run_id
        return self._tracker

    # -- MLflow outages -----------------------------------------------------------------------
    def _mirror(self, what: str, fn, *args) -> None:
        """Run ``fn`` unless MLflow is known to be down; a failure marks it down.

        A server is probed first (2 s at most) and ``fn``'s requests are retried briefly, so a
        server that is stopped, or stops during ``fn``, costs seconds, not the MLflow client's
        minutes of retries."""
        if self._offline_since is not None:
            now = time.monotonic()
            if now - self._last_probe < self.retry_s or not server_reachable(self.tracker_uri, timeout=2.0):
                self._last_probe = now
                self.missed += 1
                return
            log.warning("MLflow answers again; results missed meanwhile: skipnet sync-mlflow %s", self.search_path)
            self._offline_since = None
        try:
            if not server_reachable(self.tracker_uri, timeout=2.0):
                raise ConnectionError(f"no answer from {self.tracker_uri}/health")
            with brief_retries():
                fn(*args)
        except Exception as e:                       # never let bookkeeping fail the search
            self.missed += 1
            self._offline_since = self._last_probe = time.monotonic()
            log.warning("MLflow unreachable (%s while logging %s): the search goes on and Tune's storage keeps "
                        "every result; afterwards run: skipnet sync-mlflow %s", e.__class__.__name__, what,
                        self.search_path)

    @property
    def tracker_uri(self) -> str:
        from skipnet.tracking.runs import resolve_uri
        return resolve_uri(self.tracking_uri)

    # -- Tune hooks ---------------------------------------------------------------------------
    def _run(self, trial) -> str:
        config = trial.config
        tags = dict(self.tags, trial_id=trial.trial_id,
                    gate=str(_get(config, "model.gate") or self.tags.get("gate", "")))
        train_config = full_train_config(config, self.base_train)
        if self.sp_runs:                             # lineage: the SP run this trial started from
            from skipnet.tune.sharing import sp_key
            sp_run = self.sp_runs.get(sp_key(train_config))
            if sp_run:
                tags["sp_run_id"] = sp_run
        run_id = self.tracker.child_run(trial.trial_id, train_config, tags, later=self.later)
        if run_id not in self._last_step:
            self._last_step[run_id] = max(self.tracker.logged_steps(run_id), default=0)
        return run_id

    def setup(self, **info) -> None:                 # each fit, a resumed one included
        from skipnet.tune.stopping import forward_to_tune
        self._ran = False
        forward_to_tune()                            # stopped while this fit was starting: Tune's stop now

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._ran = True
        self._mirror("a trial start", lambda: self.tracker.reopen(self._run(trial)))   # KILLED: resumed

    def on_trial_result(self, iteration, trials, trial, result: dict[str, Any], **info) -> None:
        from skipnet.tune import cost
        cost.count(result)                           # what the search paid, whether MLflow answers or not
        self._mirror("a result", self._log_result, trial, result)
        if self.live is not None:
            self._add_to_front(trial, result)

    def _log_result(self, trial, result: dict[str, Any]) -> None:
        run_id = self._run(trial)
        step = int(result.get("training_iteration", 0))
        if step <= self._last_step.get(run_id, 0):
            return                                   # already logged before a restart
        self.tracker.log_metrics(run_id, result, step)
        self._last_step[run_id] = step
        schedule = result.get("hyperparameter_schedule")
        if schedule and schedule != self._schedules.get(run_id):     # PBT: what the weights went through
            self.tracker.set_tags(run_id, {"hyperparameter_schedule": schedule})
            self._schedules[run_id] = schedule
        tags = result_tags(result)                   # strings (difficulty_source) are tags, not metrics
        if tags and tags != self._result_tags.get(run_id):
            self.tracker.set_tags(run_id, tags)
            self._result_tags[run_id] = tags

    # -- the live front -------------------------------------------------------------------------
    def _add_to_front(self, trial, result: dict[str, Any]) -> None:
        from skipnet.core.config import flatten
        try:
            self.live.add(trial.trial_id, result, flatten(full_train_config(trial.config, self.base_train)))
        except Exception as e:                       # never let bookkeeping fail the search
            log.warning("live front: result of trial %s left out (%s: %s)", trial.trial_id, type(e).__name__, e)
        if self.live.due() and self._offline_since is None:     # MLflow down: wait, no event is lost
            self._mirror("the live front", self._log_front)

    def _log_front(self) -> None:
        """Draw the front over the results so far and log it to the parent run; show it in the
        parent run's description and the trials' ranks and colours (:mod:`skipnet.tracking.ui`)."""
        from skipnet.fronts import plots
        from skipnet.fronts.analysis import front_csv
        from skipnet.tracking import runs, ui
        update = self.live.update({tid: self.tracker.find_child(tid) or "" for tid in self.live.points})
        if update is None:
            return                                   # no trial reported both metrics yet
        with tempfile.TemporaryDirectory(prefix="skipnet-live-front-") as tmp:
            title = f"{update.front.search_id} after {update.step} training iterations"
            try:
                files = [plots.front_png([update.front], Path(tmp) / "front.png", title=title),
                         plots.front_html([update.front], Path(tmp) / "front.html", title=title)]
            except Exception as e:                   # a drawing problem is not an MLflow outage
                log.warning("live front: plots left out (%s: %s)", type(e).__name__, e)
                files = []
            csv = Path(tmp) / "front.csv"
            csv.write_text(front_csv(update.front))
            try:
                runs.log_live_front(self.tracker.client, update.front, [*files, csv], update.step)
                self._shown = ui.show_front(
                    self.tracker.client, update.front, experiment_id=self.tracker.experiment_id,
                    when=f"after {update.step} training iterations", shown=self._shown, retry=False)
            except Exception as e:                   # the next due update tries again; results go on
                log.warning("live front not logged (%s: %.200s); the next update tries again", type(e).__name__, e)
                self.live.retry_later()
                return
        self.live.logged(update)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ran = True
        self._mirror("a trial end", self._complete, trial)

    def _complete(self, trial) -> None:
        run_id = self._run(trial)
        tags = completion_tags(trial.last_result or {}, self.max_steps)
        checkpoint = trial.checkpoint                # the latest: the model the last metrics describe
        if checkpoint is not None:
            from skipnet.core.storage import uri_of
            tags["checkpoint_path"] = uri_of(checkpoint.path, checkpoint.filesystem)   # s3://... keeps its scheme
            with checkpoint.as_directory() as directory:
                self.tracker.log_checkpoint(run_id, directory)
        self._log_final_params(run_id, trial)
        self.tracker.end_child(run_id, "FINISHED", tags)

    def _log_final_params(self, run_id: str, trial) -> None:
        """The mutated keys' values as the trial ended (Tune's config of the trial holds them)."""
        if self.later:
            self.tracker.log_final_params(run_id, full_train_config(trial.config, self.base_train), self.later)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ran = True
        self._mirror("a trial error", self._failed, trial)

    def _failed(self, trial) -> None:
        run_id = self._run(trial)
        self._log_final_params(run_id, trial)
        self.tracker.end_child(run_id, "FAILED", {"tune_status": "error"})

    def on_experiment_end(self, trials, **info) -> None:
        """The search's last front and the parent run's end, now. A search stopped before its
        trials finished ends its running runs ``KILLED`` (``skipnet.tune.stopping``). A fit that
        ran no trial (a resume of a finished search) changes nothing, unless the parent was left running (the
        driver stopped before getting here): then it is ended at its last trial's end."""
        from skipnet.tune.stopping import end_killed, interrupted
        stopped = interrupted() is not None                  # Ctrl-C, SIGTERM: Tune ended the trials
        if not stopped and not self._ran and not self._parent_running():
            return
        if self.live is not None and self.live.pending:      # a stopped search keeps its last front
            self._mirror("the search's front", self._log_front)
        if stopped:
            self._mirror("the search stop", end_killed, self.tracker)
            return
        if self.ends_search:
            end = self.tracker.end_search if self._ran else self.tracker.close_search
            self._mirror("the search end", end, "FINISHED")
        if self.missed:
            log.warning("MLflow missed %d events of this search: run skipnet sync-mlflow %s", self.missed,
                        self.search_path)

    def _parent_running(self) -> bool:
        """Whether the parent run is still running (True when MLflow cannot say: ``_mirror`` will)."""
        if self._offline_since is not None or not server_reachable(self.tracker_uri, timeout=2.0):
            return True
        try:
            return self.tracker.client.get_run(self.parent_run_id).info.status == "RUNNING"
        except Exception:
            return True

    def get_state(self) -> dict | None:              # Tune checkpoints it with the experiment (resume)
        return {"live_front": self.live.get_state()} if self.live is not None else None

    def set_state(self, state: dict) -> None:
        if self.live is not None and state.get("live_front"):
            self.live.set_state(state["live_front"])

    def __getstate__(self):                          # Tune pickles callbacks into its experiment state
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state


def full_train_config(config: dict[str, Any], base_train: dict[str, Any]) -> dict[str, Any]:
    """The trial's whole TrainConfig (shared settings plus its sampled values) as a dict."""
    from skipnet.core.config import flatten, load_train_config, to_dict
    try:
        return to_dict(load_train_config(None, flatten(config), base=dict(base_train)))
    except Exception:                       # never let bookkeeping fail a trial
        return config


def _get(config: dict, dotted: str):
    if dotted in config:
        return config[dotted]
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
