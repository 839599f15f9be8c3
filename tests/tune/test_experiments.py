"""Shipped experiment files validate; bad experiment files fail in one line naming the key."""
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


def test_quickstart_is_laptop_sized():
    exp = load_experiment(ROOT / "experiments/quickstart.yaml")
    assert exp.num_samples >= 8 and exp.train["data"]["name"] == "synthetic" and exp.resources.gpu == 0


@pytest.mark.parametrize("text,needle", [
    ("scheduler: {type: hyperband}", "scheduler.type: must be one of fifo, asha, pbt, moasha"),
    ("num_samples: 0", "num_samples: must be a positive integer"),
    ("budget: {max_steps: 2}\nscheduler: {type: asha, grace_period: 3}", "scheduler.grace_period: must be <= budget.max_steps"),
    ("train: {hrl: {alpha: -1}}", "train.hrl.alpha: must be a number >= 0"),
    ("train: {model: {arhc: x}}", "train.model.arhc: must be a known key"),
    ("scheduler: {type: pbt}", "scheduler.mutations"),
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
