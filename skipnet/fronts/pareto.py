"""Pareto fronts, non-dominated ranks, crowding, hypervolume and knee point, as array functions.

SkipNet models trade validation accuracy (higher is better) against computation % (lower is
better); searches are compared by the front of their trials. Every function takes ``points``,
an ``(n_points, n_objectives)`` array-like, and ``directions``, one ``"minimize"``/``"maximize"``
(or ``"min"``/``"max"``) per column, all minimised when None. Numpy in, numpy out: the maths
of the fronts layer, which imports no ray, mlflow or optuna (nor anything of skipnet's).

Conventions: a point dominates another if it is no worse in every objective and strictly better
in at least one. Duplicates of a non-dominated point are all on the front. Rows containing NaN
are never on a front, get rank :data:`NAN_RANK` and crowding distance 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "NAN_RANK",
    "crowding_distance",
    "hypervolume_2d",
    "hypervolume_contribution",
    "is_pareto_front",
    "knee_point",
    "nondominated_rank",
    "normalize",
]

#: Rank given to rows containing NaN: larger than any real rank, so they sort last.
NAN_RANK = int(np.iinfo(np.int64).max)

_SIGNS = {"minimize": 1.0, "min": 1.0, "maximize": -1.0, "max": -1.0}


def _signs(directions: Sequence[Any] | None, n_objectives: int) -> np.ndarray:
    if directions is None:
        return np.ones(n_objectives)
    if isinstance(directions, str):
        raise ValueError(
            f"directions must be a sequence with one entry per objective, not a string "
            f"(got {directions!r}; use [{directions!r}])"
        )
    directions = list(directions)
    if len(directions) != n_objectives:
        raise ValueError(
            f"directions must have one entry per objective column: expected {n_objectives}, "
            f"got {len(directions)} ({directions!r})"
        )
    signs = []
    for i, d in enumerate(directions):
        key = str(getattr(d, "name", d)).lower()  # also takes optuna's StudyDirection
        if key not in _SIGNS:
            raise ValueError(
                f"directions[{i}] must be one of 'minimize', 'maximize', 'min', 'max' (got {d!r})"
            )
        signs.append(_SIGNS[key])
    return np.asarray(signs)


def _as_2d(points: Any, directions: Sequence[Any] | None) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim == 1 and arr.size == 0:  # [] -> no points
        arr = arr.reshape(0, 0 if directions is None else len(list(directions)))
    if arr.ndim != 2:
        raise ValueError(
            f"points must be a 2-D array of shape (n_points, n_objectives) (got shape {arr.shape})"
        )
    if arr.shape[0] and arr.shape[1] == 0:
        raise ValueError("points need at least one objective column (got shape (n, 0))")
    return arr


def normalize(values: Any, directions: Sequence[Any] | None) -> np.ndarray:
    """Returns ``values`` as a float ``(n, m)`` array in which every objective is minimised.

    Maximised columns are negated, so one "lower is better" comparison serves every objective.
    """
    arr = _as_2d(values, directions)
    # "+ 0.0" turns -0.0 into 0.0 so that row uniqueness does not depend on the sign of zero.
    return arr * _signs(directions, arr.shape[1]) + 0.0


def _valid_rows(losses: np.ndarray) -> np.ndarray:
    return ~np.isnan(losses).any(axis=1)


def _unique_rows(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows in lexicographic order, and for each input row the index of its own."""
    unique, inverse = np.unique(losses, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


def _front_of_unique_sorted(unique: np.ndarray) -> np.ndarray:
    """Front mask of distinct, lexsorted loss rows: a row can only be dominated by earlier ones."""
    n, m = unique.shape
    on_front = np.zeros(n, dtype=bool)
    if n == 0:
        return on_front
    if m == 1:
        on_front[0] = True
    elif m == 2:
        # Sorted by the first loss, a row is on the front iff its second loss beats all before it.
        cummin = np.minimum.accumulate(unique[:, 1])
        on_front[0] = True
        on_front[1:] = cummin[1:] < cummin[:-1]
    else:
        # The first remaining row is non-dominated (nothing later dominates it after lexsort);
        # keep only rows strictly better than it somewhere, i.e. rows it does not dominate.
        remaining = np.arange(n)
        while remaining.size:
            top = remaining[0]
            on_front[top] = True
            remaining = remaining[np.any(unique[remaining] < unique[top], axis=1)]
    return on_front


def is_pareto_front(points: Any, directions: Sequence[Any] | None = None) -> np.ndarray:
    """Boolean mask of the non-dominated points.

    Duplicates of a non-dominated point are all on the front; rows with NaN never are.
    2-D uses one pass over the lexsorted distinct rows; more objectives peel the front greedily.
    """
    losses = normalize(points, directions)
    mask = np.zeros(len(losses), dtype=bool)
    valid = _valid_rows(losses)
    if valid.any():
        unique, inverse = _unique_rows(losses[valid])
        mask[valid] = _front_of_unique_sorted(unique)[inverse]
    return mask


def nondominated_rank(points: Any, directions: Sequence[Any] | None = None) -> np.ndarray:
    """Non-dominated rank of each point: 0 for the front, 1 for the front of the rest, and so on.

    Rows with NaN get :data:`NAN_RANK`. This is the primary sort key of NSGA-II and MOASHA.
    """
    losses = normalize(points, directions)
    ranks = np.full(len(losses), NAN_RANK, dtype=np.int64)
    valid = _valid_rows(losses)
    if not valid.any():
        return ranks
    unique, inverse = _unique_rows(losses[valid])
    unique_ranks = np.empty(len(unique), dtype=np.int64)
    remaining = np.arange(len(unique))
    rank = 0
    while remaining.size:  # a subset of distinct lexsorted rows is still distinct and lexsorted
        on_front = _front_of_unique_sorted(unique[remaining])
        unique_ranks[remaining[on_front]] = rank
        remaining = remaining[~on_front]
        rank += 1
    ranks[valid] = unique_ranks[inverse]
    return ranks


def _crowding_of_unique(unique: np.ndarray) -> np.ndarray:
    k, m = unique.shape
    if k <= 2:
        return np.full(k, np.inf)
    distance = np.zeros(k)
    for j in range(m):
        order = np.argsort(unique[:, j], kind="stable")  # deterministic: rows are lexsorted
        column = unique[order, j]
        span = column[-1] - column[0]
        if not span > 0:
            continue  # a constant objective separates nobody
        distance[order[0]] = distance[order[-1]] = np.inf
        if np.isfinite(span):
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def crowding_distance(points: Any, directions: Sequence[Any] | None = None) -> np.ndarray:
    """NSGA-II crowding distance of each point within its own non-dominated rank.

    For each objective the rank's distinct points are sorted; the two extremes get infinity and
    every other point adds the gap between its neighbours divided by the objective's range.
    Larger means more isolated, i.e. more worth keeping for diversity. Computed on distinct
    points (duplicates share a value), so a rank with one or two distinct points is all
    infinite. Rows with NaN get 0.
    """
    losses = normalize(points, directions)
    ranks = nondominated_rank(losses)
    distance = np.zeros(len(losses))
    for rank in np.unique(ranks[ranks != NAN_RANK]):
        members = np.flatnonzero(ranks == rank)
        unique, inverse = _unique_rows(losses[members])
        distance[members] = _crowding_of_unique(unique)[inverse]
    return distance


def _losses_and_ref_2d(
    points: Any, ref: Any, directions: Sequence[Any] | None, caller: str
) -> tuple[np.ndarray, np.ndarray]:
    losses = normalize(points, directions)
    if len(losses) and losses.shape[1] != 2:
        raise ValueError(f"{caller} needs exactly 2 objectives (got {losses.shape[1]})")
    ref_losses = normalize(np.asarray(ref, dtype=float).reshape(1, -1), directions)[0]
    if ref_losses.shape != (2,) or np.isnan(ref_losses).any():
        raise ValueError(f"{caller}: ref must be 2 numbers, not NaN (got {ref!r})")
    return losses, ref_losses


def _strictly_better(losses: np.ndarray, ref_losses: np.ndarray) -> np.ndarray:
    return _valid_rows(losses) & np.all(losses < ref_losses, axis=1)


def hypervolume_2d(points: Any, ref: Any, directions: Sequence[Any] | None = None) -> float:
    """Area dominated by the points and bounded by the reference point ``ref``.

    ``ref`` is given in the same units and directions as the points (for accuracy/computation,
    e.g. ``(0.0, 100.0)``). Points not strictly better than ``ref`` in both objectives, and
    rows with NaN, contribute nothing. Larger is better: it rewards a front for being both
    close to the ideal and spread out.
    """
    losses, ref_losses = _losses_and_ref_2d(points, ref, directions, "hypervolume_2d")
    inside = losses[_strictly_better(losses, ref_losses)]
    if len(inside) == 0:
        return 0.0
    unique, _ = _unique_rows(inside)
    front = unique[_front_of_unique_sorted(unique)]  # first loss increasing, second decreasing
    widths = np.append(front[1:, 0], ref_losses[0]) - front[:, 0]
    heights = ref_losses[1] - front[:, 1]
    return float(np.sum(widths * heights))


def hypervolume_contribution(
    points: Any, ref: Any, directions: Sequence[Any] | None = None
) -> np.ndarray:
    """Exclusive hypervolume of each point: how much ``hypervolume_2d`` drops without it.

    Dominated points, points not strictly better than ``ref`` and rows with NaN contribute 0,
    and so does each copy of a duplicated point (removing one copy leaves the other). 2-D only.
    """
    losses, ref_losses = _losses_and_ref_2d(points, ref, directions, "hypervolume_contribution")
    contribution = np.zeros(len(losses))
    inside = np.flatnonzero(_strictly_better(losses, ref_losses))
    if inside.size == 0:
        return contribution
    unique, inverse, counts = np.unique(
        losses[inside], axis=0, return_inverse=True, return_counts=True
    )
    total = hypervolume_2d(unique, ref_losses)
    unique_contribution = np.zeros(len(unique))
    # Leave-one-out: without a front point, points it alone dominated may join the front.
    for i in np.flatnonzero(_front_of_unique_sorted(unique) & (counts == 1)):
        unique_contribution[i] = total - hypervolume_2d(np.delete(unique, i, axis=0), ref_losses)
    contribution[inside] = unique_contribution[inverse.reshape(-1)]
    return contribution


def knee_point(points: Any, directions: Sequence[Any] | None = None) -> int:
    """Index of the knee of the 2-D front: the best-balanced trade-off.

    Definition: scale each objective of the front (finite rows only) to [0, 1], best value 0;
    the two extreme front points then lie at (0, 1) and (1, 0). The knee is the front point
    with the largest distance from the line through them, on the side of the ideal point (0, 0),
    i.e. the largest ``1 - x - y``. Ties (fewer than three distinct front points, or a front
    with no point past the line) go to the lowest index.

    Raises:
        ValueError: no row is finite, or the points do not have 2 objectives.
    """
    losses = normalize(points, directions)
    if len(losses) and losses.shape[1] != 2:
        raise ValueError(f"knee_point needs exactly 2 objectives (got {losses.shape[1]})")
    finite = np.flatnonzero(np.isfinite(losses).all(axis=1))
    if finite.size == 0:
        raise ValueError("knee_point: no point has finite values in every objective")
    front_index = finite[is_pareto_front(losses[finite])]
    front = losses[front_index]
    low, span = front.min(axis=0), np.ptp(front, axis=0)
    scaled = np.where(span > 0, (front - low) / np.where(span > 0, span, 1.0), 0.0)
    return int(front_index[np.argmax(1.0 - scaled.sum(axis=1))])
