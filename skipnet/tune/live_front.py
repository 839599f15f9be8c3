"""``LiveFront``: a search's accuracy/computation front, kept current while the search runs.

Pure logic, no MLflow: :class:`~skipnet.tune.mlflow_callback.MLflowSearchCallback` feeds it every
result of the searched trials (never those of a shared SP phase) and logs what it computes to the
search's parent run.

* **The front** is over each trial's latest result so far, with the rule MLflow applies to the
  trial's child run: the result at its highest ``training_iteration``, the first one reported at
  that step (the callback logs no step twice). So the last live front is the one
  ``skipnet pareto`` computes from MLflow afterwards (same points, same default reference). A
  final report's threshold curve adds the trial's threshold points (``analysis.with_threshold_points``).
* **The step** of an update is the compute the search has spent so far: ``iterations_trained``
  summed over every result seen (a step redone after a restore counts again, as in
  ``runner.search_cost``), plus ``offset``: the iterations of a shared SP phase, which ran before
  the first searched result (each unshared pipeline trial reports its own SP iterations). The
  parent run's ``pareto_hypervolume_pct`` history is thus hypervolume against compute.
  ``skipnet pareto`` logs its figures at step 0, which no live update uses (every result trains).
* **Throttle**: an update is due when results arrived since the last one and ``interval_s``
  seconds have passed since it (the first result is due at once); the callback makes a last
  update at the end of the search whenever something is pending.

``get_state``/``set_state`` carry the points and the iterations across ``skipnet resume``
(Tune checkpoints callback state with the experiment); results reported after the last
experiment checkpoint before a crash are reported again by the resumed trials.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from skipnet.errors import SkipNetError
from skipnet.fronts.analysis import (CURVE_PREFIX, SearchFront, TrialPoint, analyse, final_config, parse_schedule,
                            with_threshold_points)


@dataclass(frozen=True)
class FrontUpdate:
    front: SearchFront
    step: int            # training iterations spent by the search when it was computed
    results: int         # results seen by then (the update is current up to these)


class LiveFront:
    scheduler: str | None = None                     # (a front pickled by an older version has none)

    def __init__(self, search_id: str, parent_run_id: str, interval_s: float = 30.0, offset: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, scheduler: str | None = None) -> None:
        self.search_id, self.parent_run_id, self.scheduler = search_id, parent_run_id, scheduler
        self.interval_s, self.offset, self.clock = interval_s, offset, clock
        self.points: dict[str, dict[str, Any]] = {}      # trial id -> its latest point (plain data)
        self.iterations = 0.0                            # iterations_trained over every result seen
        self.results = 0                                 # results seen
        self._logged_results = 0                         # results the last logged update covered
        self._logged_at: float | None = None             # clock() of the last logged update

    @property
    def step(self) -> int:
        return int(round(self.offset + self.iterations))

    @property
    def pending(self) -> bool:
        """Results arrived since the last logged update."""
        return self.results > self._logged_results

    def due(self) -> bool:
        return self.pending and (self._logged_at is None or self.clock() - self._logged_at >= self.interval_s)

    def add(self, trial_id: str, result: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> None:
        """One reported result of a searched trial (``config``: its flat config, for the CSV; the
        hyperparameters the result was trained with are its ``hyperparameter_schedule``'s last:
        Tune's config of a trial changes as PBT exploits, before the callback sees the result)."""
        self.results += 1
        self.iterations += _number(result.get("iterations_trained"), 0.0)
        step = int(_number(result.get("training_iteration"), 0))
        known = self.points.get(trial_id)
        if known is not None and step <= known["steps"]:
            return                               # MLflow keeps the first report of a step
        schedule = parse_schedule(result.get("hyperparameter_schedule"))
        self.points[trial_id] = {
            "accuracy": _number(result.get("val_top1")), "computation": _number(result.get("val_computation_pct")),
            "steps": step, "iteration": int(_number(result.get("iteration"), 0)),
            "num_classes": int(_number(result.get("num_classes"), 0)) or None,
            "config": final_config({k: str(v) for k, v in (config or {}).items()}, schedule),
            "schedule": schedule,
            # the threshold curve of a trial's final report: its other candidate points
            "metrics": {k: float(v) for k, v in result.items() if (k.startswith(CURVE_PREFIX) or k == "gate_threshold")
                        and isinstance(v, (int, float)) and not isinstance(v, bool)}}

    def update(self, run_ids: Mapping[str, str] | None = None) -> FrontUpdate | None:
        """The front over the points so far; None until some trial reported both metrics."""
        run_ids = run_ids or {}
        trials = [point for tid, p in sorted(self.points.items()) for point in with_threshold_points(TrialPoint(
            run_id=run_ids.get(tid, ""), trial_id=tid, search_id=self.search_id, parent_run_id=self.parent_run_id,
            accuracy=p["accuracy"], computation=p["computation"], steps=p["steps"], iteration=p["iteration"],
            num_classes=p["num_classes"], status="running", config=p["config"], metrics=p.get("metrics", {}),
            schedule=p.get("schedule", []), scheduler=self.scheduler))]
        try:
            front = analyse(self.search_id, self.parent_run_id, trials)
        except SkipNetError:                     # no trial reported both metrics yet
            return None
        return FrontUpdate(front, self.step, self.results)

    def logged(self, update: FrontUpdate) -> None:
        """``update`` reached MLflow: the throttle starts again from now."""
        self._logged_results = max(self._logged_results, update.results)
        self._logged_at = self.clock()

    def retry_later(self) -> None:
        """Logging an update failed: try again once the interval has passed (or at the end)."""
        self._logged_at = self.clock()

    def get_state(self) -> dict[str, Any]:
        return {"points": self.points, "iterations": self.iterations, "results": self.results,
                "logged_results": self._logged_results}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.points = dict(state.get("points", {}))
        self.iterations = float(state.get("iterations", 0.0))
        self.results = int(state.get("results", 0))
        self._logged_results = int(state.get("logged_results", 0))
        self._logged_at = None                   # a new process: the next result is due at once


def _number(value: Any, default: float = math.nan) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)
