"""Tests of skipnet.fronts.pareto: agreement with Optuna's front and ranks, brute-force hypervolume."""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.study._multi_objective import _fast_non_domination_rank, _is_pareto_front

from skipnet.fronts import pareto

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Small integer grids make ties and exact duplicates common.
GRID = st.integers(min_value=0, max_value=4)


@st.composite
def point_sets(draw, n_objectives: int, max_size: int = 25):
    rows = draw(st.lists(st.tuples(*[GRID] * n_objectives), max_size=max_size))
    directions = draw(
        st.lists(
            st.sampled_from(["minimize", "maximize"]),
            min_size=n_objectives,
            max_size=n_objectives,
        )
    )
    return np.array(rows, dtype=float).reshape(-1, n_objectives), directions


def _optuna_losses(points: np.ndarray, directions: list[str]) -> np.ndarray:
    return points * np.array([-1.0 if d == "maximize" else 1.0 for d in directions])


# --------------------------------------------------------------------------- front and ranks


@pytest.mark.parametrize("n_objectives", [2, 3])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_front_equals_optuna(n_objectives, data):
    points, directions = data.draw(point_sets(n_objectives))
    ours = pareto.is_pareto_front(points, directions)
    if len(points) == 0:
        assert ours.shape == (0,)
        return
    expected = _is_pareto_front(_optuna_losses(points, directions), assume_unique_lexsorted=False)
    np.testing.assert_array_equal(ours, expected)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_front_equals_optuna_best_trials(data):
    """The same check through Optuna's public API, study.best_trials."""
    n_objectives = data.draw(st.sampled_from([2, 3]))
    points, directions = data.draw(point_sets(n_objectives, max_size=12))
    study = optuna.create_study(directions=directions)
    study.add_trials([optuna.trial.create_trial(values=list(row)) for row in points])
    expected = {t.number for t in study.best_trials}
    assert set(np.flatnonzero(pareto.is_pareto_front(points, directions))) == expected


@pytest.mark.parametrize("n_objectives", [2, 3])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_ranks_equal_optuna_and_peel_fronts(n_objectives, data):
    points, directions = data.draw(point_sets(n_objectives))
    ranks = pareto.nondominated_rank(points, directions)
    if len(points) == 0:
        assert ranks.shape == (0,)
        return
    np.testing.assert_array_equal(
        ranks, _fast_non_domination_rank(_optuna_losses(points, directions))
    )
    # Rank r is the front of what is left after removing ranks < r.
    remaining = np.arange(len(points))
    for rank in range(ranks.max() + 1):
        on_front = pareto.is_pareto_front(points[remaining], directions)
        np.testing.assert_array_equal(on_front, ranks[remaining] == rank)
        remaining = remaining[~on_front]
    assert remaining.size == 0


def test_front_hand_example_with_duplicates_and_nan():
    # (accuracy, computation %): accuracy maximised, computation minimised.
    points = [[0.9, 60], [0.6, 20], [0.95, 95], [0.85, 70], [0.6, 20], [np.nan, 1], [0.6, 25]]
    directions = ["maximize", "minimize"]
    np.testing.assert_array_equal(
        pareto.is_pareto_front(points, directions), [1, 1, 1, 0, 1, 0, 0]
    )
    np.testing.assert_array_equal(
        pareto.nondominated_rank(points, directions), [0, 0, 0, 1, 0, pareto.NAN_RANK, 1]
    )


def test_edge_cases():
    assert pareto.is_pareto_front([]).shape == (0,)
    assert pareto.nondominated_rank(np.empty((0, 2))).shape == (0,)
    assert pareto.crowding_distance([]).shape == (0,)
    assert pareto.hypervolume_2d(np.empty((0, 2)), (1, 1)) == 0.0
    assert pareto.hypervolume_contribution(np.empty((0, 2)), (1, 1)).shape == (0,)
    np.testing.assert_array_equal(pareto.is_pareto_front([[3.0, 1.0]]), [True])
    np.testing.assert_array_equal(pareto.nondominated_rank([[3.0, 1.0]]), [0])
    assert pareto.knee_point([[3.0, 1.0]]) == 0
    equal = [[1.0, 2.0, 3.0]] * 4
    assert pareto.is_pareto_front(equal).all()
    assert (pareto.nondominated_rank(equal) == 0).all()
    assert np.isinf(pareto.crowding_distance(equal)).all()
    all_nan = [[np.nan, 1.0], [2.0, np.nan]]
    assert not pareto.is_pareto_front(all_nan).any()
    assert (pareto.nondominated_rank(all_nan) == pareto.NAN_RANK).all()
    np.testing.assert_array_equal(pareto.crowding_distance(all_nan), [0.0, 0.0])
    with pytest.raises(ValueError, match="no point has finite values"):
        pareto.knee_point(all_nan)


def test_normalize_and_direction_errors():
    np.testing.assert_array_equal(
        pareto.normalize([[0.9, 60.0], [0.0, 0.0]], ["maximize", "min"]), [[-0.9, 60.0], [0.0, 0.0]]
    )
    assert pareto.normalize([], ["max", "min"]).shape == (0, 2)
    with pytest.raises(ValueError, match=r"directions\[1\] must be one of"):
        pareto.normalize([[1.0, 2.0]], ["maximize", "smaller"])
    with pytest.raises(ValueError, match="expected 2, got 1"):
        pareto.is_pareto_front([[1.0, 2.0]], ["maximize"])
    with pytest.raises(ValueError, match="not a string"):
        pareto.is_pareto_front([[1.0]], "maximize")
    with pytest.raises(ValueError, match="2-D array"):
        pareto.is_pareto_front([1.0, 2.0])
    with pytest.raises(ValueError, match="exactly 2 objectives"):
        pareto.hypervolume_2d([[1.0, 2.0, 3.0]], (4, 4, 4))


# --------------------------------------------------------------------------- hypervolume


def _brute_force_hv(losses: np.ndarray, ref: np.ndarray) -> int:
    """Counts the unit cells [i, i+1] x [j, j+1] below ref that some point weakly dominates."""
    count = 0
    for i in range(int(losses[:, 0].min(initial=ref[0])), int(ref[0])):
        for j in range(int(losses[:, 1].min(initial=ref[1])), int(ref[1])):
            count += bool(np.any((losses[:, 0] <= i) & (losses[:, 1] <= j)))
    return count


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_hypervolume_equals_unit_cell_count(data):
    points, directions = data.draw(point_sets(2))
    ref = np.array(data.draw(st.tuples(GRID, GRID)), dtype=float)
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    # ref is given in the points' own directions, like the points.
    hv = pareto.hypervolume_2d(points, ref * signs, directions)
    assert hv == _brute_force_hv(points * signs, ref)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_hypervolume_contribution_is_leave_one_out(data):
    points, directions = data.draw(point_sets(2, max_size=15))
    ref = [-1.0 if d == "maximize" else 5.0 for d in directions]  # beyond the grid's worst
    contribution = pareto.hypervolume_contribution(points, ref, directions)
    total = pareto.hypervolume_2d(points, ref, directions)
    for i in range(len(points)):
        without = pareto.hypervolume_2d(np.delete(points, i, axis=0), ref, directions)
        assert contribution[i] == pytest.approx(total - without)


def test_hypervolume_hand_example():
    points = [[0.9, 60], [0.6, 20], [0.95, 95], [0.85, 70], [np.nan, 1], [0.5, 100]]
    directions = ["maximize", "minimize"]
    # Boxes against ref (0, 100): 0.05*5 + 0.3*40 + 0.6*80; (0.5, 100) touches ref: nothing.
    assert pareto.hypervolume_2d(points, (0.0, 100.0), directions) == pytest.approx(60.25)
    np.testing.assert_allclose(
        pareto.hypervolume_contribution(points, (0.0, 100.0), directions),
        # Without (0.9, 60), the dominated (0.85, 70) takes back 0.25 * 25 of its 0.3 * 35.
        [0.3 * 35 - 0.25 * 25, 0.6 * 40, 0.05 * 5, 0, 0, 0],
    )


# --------------------------------------------------------------------------- crowding and knee


def test_crowding_distance_hand_example():
    points = np.array([[1, 5], [2, 3], [4, 2], [5, 1], [3, 4], [2, 3], [np.nan, 0]], dtype=float)
    distance = pareto.crowding_distance(points)
    # Front {(1,5),(2,3),(4,2),(5,1)}, both ranges 4: (2,3) -> 3/4 + 3/4, (4,2) -> 3/4 + 2/4.
    # (3,4) is alone in rank 1; the duplicate (2,3) shares its value; NaN gets 0.
    np.testing.assert_allclose(distance, [math.inf, 1.5, 1.25, math.inf, math.inf, 1.5, 0.0])
    # Flipping both objectives to "maximize" on negated values changes nothing.
    np.testing.assert_allclose(pareto.crowding_distance(-points, ["max", "max"]), distance)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_crowding_distance_ignores_order(data):
    points, directions = data.draw(point_sets(3))
    permutation = data.draw(st.permutations(range(len(points))))
    distance = pareto.crowding_distance(points, directions)
    permuted = pareto.crowding_distance(points[list(permutation)], directions)
    np.testing.assert_array_equal(permuted, distance[list(permutation)])


def test_knee_point_on_convex_front():
    # (accuracy %, computation %) on a convex front, plus a dominated point and a NaN row.
    points = [[100, 100], [90, 40], [80, 20], [50, 10], [0, 0], [70, 50], [np.nan, 5]]
    directions = ["maximize", "minimize"]
    # Scaled losses (x, y): (0,1) (.1,.4) (.2,.2) (.5,.1) (1,0): 1-x-y is largest at (.2,.2).
    assert pareto.knee_point(points, directions) == 2
    # Two distinct front points: both lie on the line, the lowest index wins.
    assert pareto.knee_point([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) == 0
