"""MO-PBT's ordering rule and PBT's bounds, without Ray (the searches are in test_search.py)."""
import numpy as np
import pytest

from skipnet.tune.pbt import WithinBounds, population_order, scattered_position
from skipnet.tune.spaces import SearchSpace, pbt_bounds

# (val_top1 %, computation %): 0-3 form the front, 4 and 5 are dominated, 6 has no metrics
POINTS = np.array([[95.0, 90.0], [90.0, 50.0], [80.0, 20.0], [70.0, 10.0], [85.0, 60.0], [60.0, 80.0],
                   [np.nan, np.nan]])


@pytest.mark.parametrize("diversity", ["crowding", "scattered"])
def test_population_order_puts_the_front_first_its_extremes_first_and_nan_last(diversity):
    order = list(population_order(POINTS, ["max", "min"], diversity))
    assert set(order[:4]) == {0, 1, 2, 3} and set(order[4:6]) == {4, 5} and order[6] == 6
    assert order.index(4) < order.index(5)                 # 4 is dominated by one point, 5 by more
    assert set(order[:2]) == {0, 3}                         # the ends of the front before its middle


def test_scattered_selection_picks_the_farthest_point_next():
    # one front (losses: -accuracy, computation); scaled to [0, 1] the points are A (0, 1),
    # B (1/6, 0.8), C (5/6, 0.1), D (1, 0): A first (best on the first objective), then D (farthest
    # from A), then B (0.26 from its nearest pick, A) before C (0.19 from D)
    losses = np.array([[-100.0, 100.0], [-90.0, 80.0], [-50.0, 10.0], [-40.0, 0.0]])
    position = scattered_position(losses, np.zeros(4, dtype=int))
    assert list(position) == [0, 2, 3, 1]


def test_pbt_perturbations_are_clipped_into_the_search_space():
    space = SearchSpace.from_dict({"hrl.alpha": {"type": "loguniform", "low": 0.01, "high": 1.0},
                                   "hrl.lr": {"type": "uniform", "low": 0.001, "high": 0.1},
                                   "sp.batch_size": {"type": "randint", "low": 8, "high": 33}})
    clip = WithinBounds(pbt_bounds(space))
    assert clip({"hrl": {"alpha": 1.2, "lr": 0.0008}, "sp": {"batch_size": 40}}) == \
        {"hrl": {"alpha": 1.0, "lr": 0.001}, "sp": {"batch_size": 32}}
    assert clip({"hrl.alpha": 0.5, "hrl.lr": 0.05, "sp.batch_size": 8}) == \
        {"hrl.alpha": 0.5, "hrl.lr": 0.05, "sp.batch_size": 8}          # dotted keys; inside: unchanged
