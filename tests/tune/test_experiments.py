"""Shipped experiment files validate; bad experiment files fail in one line naming the key."""
import math
from pathlib import Path

import pytest

from skipnet.errors import ConfigError
from skipnet.tune.experiment import load_experiment
from skipnet.tune.runner import build_scheduler, _search, load_space

ROOT = Path(__file__).resolve().parents[2]


SEARCHES = sorted(p for p in (ROOT / "experiments").glob("*.yaml") if p.name != "quickstart_train.yaml")


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.name)
def test_shipped_experiments_validate_and_build(path):
    exp = load_experiment(path)
    space = load_space(exp)
    assert space.params
    build_scheduler(exp)
    _search(exp, space)


def test_quickstart_is_laptop_sized_and_shares_sp():
    from skipnet.tune.sharing import plan_sharing
    exp = load_experiment(ROOT / "experiments/quickstart.yaml")
    grid = [len(d.values) for d in load_space(exp).params.values() if d.kind == "grid"]
    assert exp.num_samples * math.prod(grid) >= 8 and exp.train["data"]["name"] == "synthetic" and exp.resources.gpu == 0
    plan, _ = plan_sharing(exp, load_space(exp))
    assert len(plan.variants) == 2                       # one SP per gate type


@pytest.mark.parametrize("name", ["cifar10_pbt.yaml", "cifar10_mopbt.yaml", "quickstart_mopbt.yaml",
                                  "cifar10_pareto_optuna.yaml"])
def test_pipeline_experiments_share_one_sp_per_gate_type(name):
    from skipnet.tune.sharing import plan_sharing
    exp = load_experiment(ROOT / "experiments" / name)
    plan, reason = plan_sharing(exp, load_space(exp))
    assert plan is not None, reason
    assert sorted(v["model.gate"] for v in plan.variants) == sorted(load_space(exp).params["model.gate"].values)


@pytest.mark.parametrize("text,needle", [
    ("scheduler: {type: hyperband}", "scheduler.type: must be one of fifo, asha, pbt, moasha"),
    ("num_samples: 0", "num_samples: must be a positive integer"),
    ("budget: {max_steps: 2}\nscheduler: {type: asha, grace_period: 3}", "scheduler.grace_period: must be <= budget.max_steps"),
    ("train: {hrl: {alpha: -1}}", "train.hrl.alpha: must be a number >= 0"),
    ("train: {model: {arhc: x}}", "train.model.arhc: must be a known key"),
    ("scheduler: {type: pbt}", "scheduler.mutations"),
    ("scheduler: {type: mopbt}", "scheduler.mutations: must be a search-space file of mutated keys for mopbt"),
    ("scheduler: {type: mopbt, diversity: wide}", "scheduler.diversity: must be one of crowding, scattered"),
    ("searcher: {type: optuna-mo}\nscheduler: {type: asha}", "scheduler.type: must be fifo or moasha"),
    ("resources: {cpu: 0}", "resources: must be cpu > 0"),
    ("numsamples: 3", "numsamples: must be a known key"),
    ("name: [1, 2]", "name: must be a string"),
    ("budget: [1]", "budget: must be a mapping"),
    ("a: b: c", "valid YAML"),
])
def test_bad_experiment_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
