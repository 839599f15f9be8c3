"""Multi-objective asynchronous successive halving (MOASHA) as a Ray Tune scheduler.

ASHA stops the trials that are not among the best ``1/reduction_factor`` at each rung by one
metric. SkipNet trades accuracy against computation, so one metric cannot say who is best;
MOASHA (after Syne Tune's ``MOASHA``) sorts a rung's results by non-dominated rank, then by
a diversity tie breaker, both computed by :mod:`skipnet.fronts.pareto`.
"""
from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from skipnet.fronts import pareto

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)

_SIGNS = {"min": 1.0, "max": -1.0}
_TIE_BREAKERS = ("crowding", "hypervolume")
# Reference point of the hypervolume tie breaker, in objectives scaled to [0, 1] per rung:
# 10% past the worst value, so that the extremes of a front also get a positive contribution.
_HV_REF = 1.1


class _Rung:
    """Results recorded at one milestone, as loss vectors (one sign per metric: lower is better).

    Args:
        milestone: value of ``time_attr`` at which results are recorded.
        signs: +1 for a minimised metric, -1 for a maximised one.
        reduction_factor: only the best ``1/reduction_factor`` of the results continue.
        tie_breaker: ``"crowding"`` or ``"hypervolume"``; higher is better among equal ranks.
    """

    def __init__(
        self, milestone: float, signs: np.ndarray, reduction_factor: float, tie_breaker: str
    ):
        self.milestone = milestone
        self.signs = signs
        self.reduction_factor = reduction_factor
        self.tie_breaker = tie_breaker
        self.recorded: dict[str, np.ndarray] = {}

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self.recorded

    def record(self, trial_id: str, values: Sequence[float]) -> None:
        """Stores a trial's metric values (None counts as NaN, i.e. as the worst result)."""
        raw = [math.nan if v is None else float(v) for v in values]
        self.recorded[trial_id] = self.signs * np.asarray(raw, dtype=float)

    def promotes(self, trial_id: str, values: Sequence[float]) -> bool:
        """Records ``values`` for the trial and says whether it may go on past this rung."""
        self.record(trial_id, values)
        n = len(self.recorded)
        if n < self.reduction_factor:
            return True  # too few results to judge: promote, as asynchronous ASHA does
        ids = list(self.recorded)
        losses = np.stack([self.recorded[i] for i in ids])
        rank = pareto.nondominated_rank(losses)
        priority = self._priority(losses, rank)
        me = ids.index(trial_id)
        ahead = (rank < rank[me]) | ((rank == rank[me]) & (priority > priority[me]))
        return int(ahead.sum()) < int(n / self.reduction_factor)

    def _priority(self, losses: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Tie breaker within a rank; a copy of an earlier result gets -1, below every original:
        it adds nothing to the front (e.g. several collapsed models that skip every block)."""
        copy = np.zeros(len(losses), dtype=bool)
        seen: set[bytes] = set()
        for i, row in enumerate(losses):
            copy[i] = row.tobytes() in seen and bool(np.isfinite(row).all())
            seen.add(row.tobytes())
        priority = np.full(len(losses), -1.0)
        priority[~copy] = self._diversity(losses[~copy], rank[~copy])
        return priority

    def _diversity(self, losses: np.ndarray, rank: np.ndarray) -> np.ndarray:
        if self.tie_breaker == "crowding":
            return pareto.crowding_distance(losses)
        # Exclusive hypervolume within each rank, objectives scaled to [0, 1] over the rung.
        finite = np.where(np.isfinite(losses), losses, np.nan)
        low, high = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
        span = np.where(high > low, high - low, 1.0)
        scaled = (losses - low) / span
        priority = np.zeros(len(losses))
        for r in np.unique(rank[rank != pareto.NAN_RANK]):
            members = np.flatnonzero(rank == r)
            priority[members] = pareto.hypervolume_contribution(
                scaled[members], (_HV_REF, _HV_REF)
            )
        return priority

    def n_front(self) -> int:
        if not self.recorded:
            return 0
        return int(pareto.is_pareto_front(np.stack(list(self.recorded.values()))).sum())


class MOASHA(FIFOScheduler):
    """Asynchronous successive halving that promotes by Pareto rank over several metrics.

    Rule: rungs sit at ``grace_period * reduction_factor**k`` for every such milestone below
    ``max_t``. When a trial's ``time_attr`` first reaches a rung's milestone (the highest one
    it has reached, if a result skips some), its metric vector is recorded in that rung; with
    ``n`` vectors recorded there (its own included) the trial continues iff fewer than
    ``floor(n / reduction_factor)`` of them sort strictly ahead of it by (non-dominated rank
    ascending, then tie breaker descending: crowding distance within its rank, or exclusive
    hypervolume contribution within its rank with objectives scaled to [0, 1] over the rung; an
    exact copy of an earlier result at the rung sorts after every original of its rank).
    While a rung holds fewer than ``reduction_factor`` results the trial continues (so the first
    trials at a rung are promoted, as in asynchronous ASHA), a result at or past ``max_t`` stops
    the trial, and a result without ``time_attr`` or without every metric leaves it running.

    Metrics and modes are fixed here, so ``tune.TuneConfig`` needs no ``metric``/``mode``; if it
    has them, the metric must be one of ``metrics`` with the same mode (it then only serves
    Tune's best-result reporting).

    Args:
        metrics: names of the reported metrics to trade off, e.g. ``["val_acc", "compute_pct"]``.
        modes: ``"min"`` or ``"max"`` for each metric.
        time_attr: monotonically increasing progress key of the results.
        max_t: trials stop once ``time_attr`` reaches it.
        grace_period: first milestone; no trial is stopped earlier (same units as ``max_t``).
        reduction_factor: about ``1/reduction_factor`` of the trials pass each rung.
        tie_breaker: ``"crowding"`` (NSGA-II crowding distance) or ``"hypervolume"``
            (2 metrics only).

    Example:
        >>> MOASHA(["val_acc", "compute_pct"], ["max", "min"], max_t=9)  # doctest: +SKIP
    """

    def __init__(
        self,
        metrics: Sequence[str],
        modes: Sequence[str],
        time_attr: str = "training_iteration",
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 3,
        tie_breaker: str = "crowding",
    ):
        metrics, modes = _check_names(metrics, "metrics"), _check_names(modes, "modes")
        if not metrics:
            raise ValueError("MOASHA: metrics must name at least one metric (got [])")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"MOASHA: metrics must be distinct (got {metrics!r})")
        if len(modes) != len(metrics):
            raise ValueError(
                f"MOASHA: modes must have one entry per metric "
                f"(got {len(modes)} modes for {len(metrics)} metrics: {modes!r} for {metrics!r})"
            )
        for metric, mode in zip(metrics, modes):
            if mode not in _SIGNS:
                raise ValueError(
                    f"MOASHA: mode of {metric!r} must be 'min' or 'max' (got {mode!r})"
                )
        if not max_t > 0:
            raise ValueError(f"MOASHA: max_t must be > 0 (got {max_t!r})")
        if not 1 <= grace_period <= max_t:
            relation = f"{grace_period} < 1" if grace_period < 1 else f"{grace_period} > {max_t}"
            raise ValueError(f"MOASHA: grace_period must be >= 1 and <= max_t (got {relation})")
        if not reduction_factor > 1:
            raise ValueError(f"MOASHA: reduction_factor must be > 1 (got {reduction_factor!r})")
        if tie_breaker not in _TIE_BREAKERS:
            raise ValueError(
                f"MOASHA: tie_breaker must be 'crowding' or 'hypervolume' (got {tie_breaker!r})"
            )
        if tie_breaker == "hypervolume" and len(metrics) != 2:
            raise ValueError(
                f"MOASHA: tie_breaker='hypervolume' needs exactly 2 metrics (got {len(metrics)})"
            )
        super().__init__()
        self._metrics = metrics
        self._modes = modes
        self._time_attr = time_attr
        self._max_t = max_t
        self._reduction_factor = reduction_factor
        self._tie_breaker = tie_breaker
        signs = np.array([_SIGNS[m] for m in modes])
        milestones = []
        milestone = grace_period
        while milestone < max_t:
            milestones.append(milestone)
            milestone *= reduction_factor
        # Highest milestone first, so a result finds its rung with the first match.
        self._rungs = [
            _Rung(m, signs, reduction_factor, tie_breaker) for m in reversed(milestones)
        ]
        self._live: set[str] = set()
        self._warned: set[str] = set()
        self._num_stopped = 0

    @property
    def metrics(self) -> list[str]:
        return list(self._metrics)

    @property
    def modes(self) -> list[str]:
        return list(self._modes)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Called by Tune with ``TuneConfig``'s metric and mode before the first trial.

        Accepts none, or a metric of ours with its own mode; anything else returns False,
        which makes Tune raise that the scheduler already has its own metric and mode.
        """
        if metric is None:
            return mode is None
        if metric not in self._metrics:
            return False
        return mode is None or mode == self._modes[self._metrics.index(metric)]

    def on_trial_add(self, tune_controller: "TuneController", trial: Trial) -> None:
        """Called when a trial is added to the experiment."""
        self._live.add(trial.trial_id)

    def on_trial_result(
        self, tune_controller: "TuneController", trial: Trial, result: dict
    ) -> str:
        """Called on each intermediate result: CONTINUE or STOP by the rule in the class doc."""
        if self._time_attr not in result:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            self._num_stopped += 1
            return TrialScheduler.STOP
        rung = self._rung_for(trial.trial_id, result)
        if rung is None:
            return TrialScheduler.CONTINUE
        if rung.promotes(trial.trial_id, [result[m] for m in self._metrics]):
            return TrialScheduler.CONTINUE
        self._num_stopped += 1
        return TrialScheduler.STOP

    def on_trial_complete(
        self, tune_controller: "TuneController", trial: Trial, result: dict
    ) -> None:
        """Called when a trial ends (by itself or stopped): its last result is recorded."""
        if result and self._time_attr in result:
            rung = self._rung_for(trial.trial_id, result)
            if rung is not None:
                rung.record(trial.trial_id, [result[m] for m in self._metrics])
        self._live.discard(trial.trial_id)

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial) -> None:
        """Called when a pending or paused trial is removed; its recorded results stay."""
        self._live.discard(trial.trial_id)

    def _rung_for(self, trial_id: str, result: dict) -> _Rung | None:
        """The highest rung the result has reached, unless the trial is recorded there already."""
        missing = [m for m in self._metrics if m not in result]
        if missing:
            if trial_id not in self._warned:
                self._warned.add(trial_id)
                logger.warning(
                    "MOASHA: result of trial %s lacks metric(s) %s; no decision is taken on "
                    "such results (reported keys: %s)", trial_id, missing, sorted(result)
                )
            return None
        t = result[self._time_attr]
        for rung in self._rungs:
            if t >= rung.milestone:
                return None if trial_id in rung else rung
        return None

    def debug_string(self) -> str:
        """One line per rung: milestone, results recorded, how many of them are non-dominated."""
        rungs = " | ".join(
            f"t>={r.milestone}: {len(r.recorded)} recorded, {r.n_front()} on front"
            for r in reversed(self._rungs)
        )
        return f"Using MOASHA ({self._tie_breaker}): num_stopped={self._num_stopped}\n{rungs}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _check_names(values: Any, field: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(
            f"MOASHA: {field} must be a list with one entry per objective, not a string "
            f"(got {values!r}; use [{values!r}])"
        )
    return list(values)
