"""Accuracy/computation fronts of searches: trials -> non-dominated rank, front, hypervolume, knee.

A trial is the point its last report gives (validation top-1 %, higher is better; computation %
of the plain ResNet's FLOPs, lower is better). ``analyse`` ranks a search's trials with
:mod:`skipnet.pareto` and measures the front against a reference point: by default 100 %
computation and chance accuracy (100 / classes %), so a front that beats guessing at full cost
scores 0. Pure data: MLflow reading lives in :mod:`skipnet.tracking`, plots in :mod:`skipnet.plots`.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skipnet import pareto
from skipnet.errors import SkipNetError

DIRECTIONS = ("maximize", "minimize")       # (accuracy, computation)


@dataclass(frozen=True)
class TrialPoint:
    """One trial of a search as its MLflow run holds it."""

    run_id: str
    trial_id: str
    search_id: str
    parent_run_id: str
    accuracy: float               # val_top1 at the last report, %
    computation: float            # val_computation_pct at the last report, %
    steps: int                    # Tune reports (training_iteration)
    iteration: int                # training iterations done (both stages)
    num_classes: int | None
    status: str
    checkpoint_path: str | None = None       # where Tune keeps the trial's last checkpoint
    config: dict[str, str] = field(default_factory=dict)     # the run's params (flat)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return math.isfinite(self.accuracy) and math.isfinite(self.computation)


@dataclass(frozen=True)
class SearchFront:
    search_id: str
    parent_run_id: str
    trials: list[TrialPoint]           # every trial, in the order of ``rank``
    rank: np.ndarray                   # non-dominated rank per trial (0 = front, NAN_RANK = no metrics)
    reference: tuple[float, float]     # (accuracy %, computation %)
    hypervolume: float                 # area in %^2 dominated by the front inside the reference box
    knee: TrialPoint | None

    @property
    def front(self) -> list[TrialPoint]:
        """The non-dominated trials, cheapest first (ties: most accurate first)."""
        members = [t for t, r in zip(self.trials, self.rank) if r == 0]
        return sorted(members, key=lambda t: (t.computation, -t.accuracy, t.trial_id))

    @property
    def hypervolume_pct(self) -> float:
        """Hypervolume as a % of the whole reference box (100 = a perfect, free model)."""
        box = (100.0 - self.reference[0]) * self.reference[1]
        return 100.0 * self.hypervolume / box if box > 0 else float("nan")


def chance_accuracy(trials: list[TrialPoint]) -> float:
    classes = {t.num_classes for t in trials if t.num_classes}
    return 100.0 / max(classes) if classes else 0.0


def analyse(search_id: str, parent_run_id: str, trials: list[TrialPoint],
            reference: tuple[float | None, float | None] = (None, None)) -> SearchFront:
    """Rank ``trials``, find the front, its hypervolume against ``reference`` and its knee."""
    if not any(t.valid for t in trials):
        raise SkipNetError(f"search {search_id} has no trial that reported val_top1 and val_computation_pct yet")
    ref = (chance_accuracy(trials) if reference[0] is None else float(reference[0]),
           100.0 if reference[1] is None else float(reference[1]))
    points = np.array([[t.accuracy, t.computation] for t in trials], dtype=float)
    rank = pareto.nondominated_rank(points, DIRECTIONS)
    hv = pareto.hypervolume_2d(points, ref, DIRECTIONS)
    knee = trials[pareto.knee_point(points, DIRECTIONS)]
    return SearchFront(search_id, parent_run_id, trials, rank, ref, hv, knee)


def front_csv(front: SearchFront) -> str:
    """The front as CSV: one row per non-dominated trial, cheapest first."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = sorted({k for t in front.front for k in t.config if k.startswith(("hrl.", "sp.lr", "model.", "seed"))})
    writer.writerow(["search_id", "trial_id", "run_id", "val_top1", "val_computation_pct", "steps", "knee", *keys])
    for t in front.front:
        writer.writerow([t.search_id, t.trial_id, t.run_id, f"{t.accuracy:.4f}", f"{t.computation:.4f}", t.steps,
                         str(front.knee is not None and t.run_id == front.knee.run_id).lower(),
                         *[t.config.get(k, "") for k in keys]])
    return out.getvalue()


def select(trials: list[TrialPoint], *, max_computation: float | None = None,
           min_accuracy: float | None = None, knee: bool = False, label: str = "the search") -> TrialPoint:
    """The trial an export names: the most accurate one at or under ``max_computation`` %, the
    cheapest one at or above ``min_accuracy`` %, or the knee of the front.

    Raises:
        SkipNetError: no trial meets the constraint; the message names the closest one.
    """
    valid = [t for t in trials if t.valid]
    if not valid:
        raise SkipNetError(f"{label} has no trial that reported val_top1 and val_computation_pct")
    if knee:
        points = np.array([[t.accuracy, t.computation] for t in valid])
        return valid[pareto.knee_point(points, DIRECTIONS)]
    if max_computation is not None:
        ok = [t for t in valid if t.computation <= max_computation]
        if not ok:
            near = min(valid, key=lambda t: (t.computation, -t.accuracy))
            raise SkipNetError(f"--max-computation {max_computation:g}: no trial of {label} runs at or under it; "
                               f"the closest is trial {near.trial_id} ({near.search_id}) at "
                               f"{near.computation:.2f} % computation, {near.accuracy:.2f} % accuracy")
        return max(ok, key=lambda t: (t.accuracy, -t.computation))
    if min_accuracy is not None:
        ok = [t for t in valid if t.accuracy >= min_accuracy]
        if not ok:
            near = max(valid, key=lambda t: (t.accuracy, -t.computation))
            raise SkipNetError(f"--min-accuracy {min_accuracy:g}: no trial of {label} reaches it; "
                               f"the closest is trial {near.trial_id} ({near.search_id}) at "
                               f"{near.accuracy:.2f} % accuracy, {near.computation:.2f} % computation")
        return min(ok, key=lambda t: (t.computation, -t.accuracy))
    raise ValueError("select needs max_computation, min_accuracy or knee")


def table(front: SearchFront) -> list[dict[str, Any]]:
    return [{"trial": t.trial_id, "val_top1": t.accuracy, "computation_pct": t.computation, "steps": t.steps,
             "knee": front.knee is not None and t.run_id == front.knee.run_id, "run_id": t.run_id}
            for t in front.front]
