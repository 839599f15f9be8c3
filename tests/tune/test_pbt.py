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


def test_front_ends_are_the_best_member_on_each_objective():
    from skipnet.tune.pbt import front_ends
    assert front_ends(POINTS, ["max", "min"]) == {0, 3}
    assert front_ends(np.array([[np.nan, np.nan]]), ["max", "min"]) == set()


@pytest.mark.parametrize("points, lower", [
    ({"a": (99.4, 100.0), "b": (93.8, 47.5)}, []),                        # two reported: both ends
    ({"a": (99.4, 100.0), "b": (93.8, 47.5), "c": (97.8, 56.8)}, ["c"]),   # the middle may copy an end
    ({"a": (99.4, 100.0), "b": (93.8, 47.5), "c": (97.8, 56.8), "d": (84.0, 48.3)}, ["d"]),   # dominated
])
def test_mopbt_never_exploits_an_end_of_the_front(points, lower):
    """The asynchronous population's first decisions see only the members that have reported:
    the quickstart's MO-PBT put the least-computation member of two in the lower quantile, and
    all four recurrent members ended as copies of the one at 100 % computation."""
    from types import SimpleNamespace

    from skipnet.tune.pbt import MOPBT
    scheduler = MOPBT(["val_top1", "val_computation_pct"], ["max", "min"], perturbation_interval=1,
                      quantile_fraction=0.25, hyperparam_mutations={"lr": [0.1, 0.01]})
    scheduler._trial_state = {name: SimpleNamespace(last_score=acc, last_result={
        "val_top1": acc, "val_computation_pct": comp}) for name, (acc, comp) in points.items()}
    got, upper = scheduler._quantiles_of(list(points))
    assert got == lower and set(upper).isdisjoint(got)


def test_mopbt_donor_dominates_the_member_or_there_is_none():
    """A member copies a top member that dominates it, never the front's other end: measured on
    test_search's MO-PBT, members at 100 % computation (59-63 %) copied one that skipped every
    block (13-15 % at 13.3 %) and the whole population ended at 13.3 %."""
    import random

    from skipnet.tune.pbt import dominating_donor
    random.seed(0)
    member = (63.0, 100.0)
    donors = [(68.0, 100.0), (13.0, 13.3), (66.0, 97.7)]     # the first and the last dominate it
    assert {dominating_donor(member, donors, ["max", "min"]) for _ in range(50)} == {0, 2}
    assert dominating_donor(member, [(13.0, 13.3), (63.0, 100.0)], ["max", "min"]) is None   # an end, a tie
    assert dominating_donor((np.nan, np.nan), [(90.0, 50.0)], ["max", "min"]) is None
    assert dominating_donor((60.0, 50.0), [(np.nan, np.nan), (60.0, 40.0)], ["max", "min"]) == 1
