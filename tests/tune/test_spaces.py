"""Search spaces: shipped files load, every type translates to Tune / Optuna / PBT, bad input fails
in one ConfigError naming the key. Pure translation tests: no ``ray.init``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna.distributions as od
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from skipnet.errors import ConfigError
from skipnet.tune.spaces import (Choice, Constant, Grid, LogUniform, QLogUniform, QUniform, RandInt,
                                 SearchSpace, Uniform, check_pbt_mutations, constants,
                                 flatten_trial_config, to_optuna_distributions, to_pbt_mutations,
                                 to_tune_space, unflatten)

ROOT = Path(__file__).resolve().parents[2]

# One entry per distribution type, each on a TrainConfig key whose type it suits.
ALL_TYPES = {
    "hrl.alpha": {"type": "loguniform", "low": 1.0e-3, "high": 1.0},
    "hrl.momentum": {"type": "uniform", "low": 0.5, "high": 0.95},
    "hrl.batch_size": {"type": "quniform", "low": 32, "high": 256, "q": 32},
    "hrl.temperature": {"type": "qloguniform", "low": 0.5, "high": 8.0, "q": 0.5},
    "hrl.iterations": {"type": "randint", "low": 100, "high": 1000},
    "model.gate": {"type": "choice", "values": ["feedforward_conv", "recurrent"]},
    "hrl.rl_weight": {"type": "grid", "values": [0.01, 0.1]},
    "data.name": {"type": "constant", "value": "synthetic"},
}


def _sample(domain: Domain, n: int = 200) -> list:
    return list(domain.sample(size=n, random_state=np.random.default_rng(0)))


# -- shipped files ------------------------------------------------------------------------------

def test_shipped_alpha_lr_gate():
    space = SearchSpace.from_yaml(ROOT / "search_spaces/alpha_lr_gate.yaml")
    assert space.params == {
        "hrl.alpha": LogUniform(1e-3, 1.0),
        "hrl.lr": LogUniform(1e-5, 1e-3),
        "model.gate": Choice(("feedforward_conv", "recurrent")),
    }
    assert set(to_optuna_distributions(space)) == set(space.params)


def test_shipped_pbt_mutations():
    space = SearchSpace.from_yaml(ROOT / "search_spaces/pbt_mutations.yaml")
    assert space.params == {"hrl.lr": LogUniform(1e-5, 1e-3), "hrl.alpha": LogUniform(1e-3, 1.0)}
    check_pbt_mutations(space)


@pytest.mark.parametrize("name", ["alpha_lr_gate.yaml", "pbt_mutations.yaml"])
def test_shipped_files_start_with_a_comment(name):
    assert (ROOT / "search_spaces" / name).read_text().startswith("# ")


# -- parsing ------------------------------------------------------------------------------------

def test_every_type_parses_to_its_class():
    space = SearchSpace.from_dict(ALL_TYPES)
    assert space.params == {
        "hrl.alpha": LogUniform(1e-3, 1.0),
        "hrl.momentum": Uniform(0.5, 0.95),
        "hrl.batch_size": QUniform(32.0, 256.0, 32.0),
        "hrl.temperature": QLogUniform(0.5, 8.0, 0.5),
        "hrl.iterations": RandInt(100, 1000),
        "model.gate": Choice(("feedforward_conv", "recurrent")),
        "hrl.rl_weight": Grid((0.01, 0.1)),
        "data.name": Constant("synthetic"),
    }


def test_nested_and_dotted_yaml_give_the_same_space(tmp_path):
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("hrl.alpha: {type: loguniform, low: 1.0e-3, high: 1.0}\n"
                      "hrl.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
                      "model.gate: {type: choice, values: [feedforward_conv, recurrent]}\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("hrl:\n"
                      "  alpha: {type: loguniform, low: 1.0e-3, high: 1.0}\n"
                      "  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
                      "model:\n"
                      "  gate: {type: choice, values: [feedforward_conv, recurrent]}\n")
    assert SearchSpace.from_yaml(dotted) == SearchSpace.from_yaml(nested)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("hrl.alpha: {type: loguniform, low: 1e-3, high: 1}\n")   # PyYAML: '1e-3' str
    assert SearchSpace.from_yaml(path).params["hrl.alpha"] == LogUniform(1e-3, 1.0)


def test_a_quoted_exponent_is_a_string_everywhere(tmp_path):
    """One reader for every file: ``1e-3`` is a number in a training config and a search space
    alike, and the same value quoted is a string, refused as a number in both."""
    from skipnet.core.config import load_train_config
    (tmp_path / "t.yaml").write_text("hrl: {lr: 1e-3}\n")
    assert load_train_config(tmp_path / "t.yaml").hrl.lr == 1e-3
    (tmp_path / "q.yaml").write_text('hrl: {lr: "1e-3"}\n')
    with pytest.raises(ConfigError, match=r"hrl.lr: must be a number .*'1e-3'"):
        load_train_config(tmp_path / "q.yaml")
    (tmp_path / "s.yaml").write_text('hrl.alpha: {type: loguniform, low: "1e-3", high: 1}\n')
    with pytest.raises(ConfigError, match=r"hrl.alpha.low: must be a number .*'1e-3'"):
        SearchSpace.from_yaml(tmp_path / "s.yaml")


@settings(max_examples=50, deadline=None)
@given(low=st.floats(1e-6, 1.0), ratio=st.floats(1.01, 1e3),
       gate=st.sampled_from(["recurrent", "feedforward_conv"]))
def test_to_dict_round_trips(low, ratio, gate):
    space = SearchSpace.from_dict({"hrl.lr": {"type": "loguniform", "low": low, "high": low * ratio},
                                   "model.gate": {"type": "constant", "value": gate}})
    assert SearchSpace.from_dict(space.to_dict()) == space


# -- Tune ---------------------------------------------------------------------------------------

def test_to_tune_space_is_nested_and_samples_in_range():
    tune_space = to_tune_space(SearchSpace.from_dict(ALL_TYPES))
    assert set(tune_space) == {"hrl", "model", "data"}
    hrl = tune_space["hrl"]

    alpha = _sample(hrl["alpha"])
    assert isinstance(hrl["alpha"], Float) and all(1e-3 <= v <= 1.0 for v in alpha)
    assert min(alpha) < 1e-2 and max(alpha) > 1e-1          # log scale reaches both decades

    assert all(0.5 <= v <= 0.95 for v in _sample(hrl["momentum"]))

    batch = _sample(hrl["batch_size"])
    assert all(32 <= v <= 256 and v % 32 == 0 for v in batch)

    temp = _sample(hrl["temperature"])
    assert all(0.5 <= v <= 8.0 and (v / 0.5).is_integer() for v in temp)

    iters = _sample(hrl["iterations"])
    assert isinstance(hrl["iterations"], Integer)
    assert all(isinstance(v, (int, np.integer)) and 100 <= v < 1000 for v in iters)

    gate = tune_space["model"]["gate"]
    assert isinstance(gate, Categorical)
    assert set(_sample(gate)) == {"feedforward_conv", "recurrent"}

    assert hrl["rl_weight"] == {"grid_search": [0.01, 0.1]}
    assert tune_space["data"]["name"] == "synthetic"


# -- Optuna -------------------------------------------------------------------------------------

def _tpe_space() -> SearchSpace:
    return SearchSpace.from_dict({k: v for k, v in ALL_TYPES.items()
                                  if v["type"] not in ("grid", "qloguniform")})


def test_to_optuna_distributions_types_bounds_and_log():
    dists = to_optuna_distributions(_tpe_space())
    assert dists == {
        "hrl.alpha": od.FloatDistribution(1e-3, 1.0, log=True),
        "hrl.momentum": od.FloatDistribution(0.5, 0.95),
        "hrl.batch_size": od.FloatDistribution(32.0, 256.0, step=32.0),
        "hrl.iterations": od.IntDistribution(100, 999),     # Tune's high is excluded, Optuna's not
        "model.gate": od.CategoricalDistribution(["feedforward_conv", "recurrent"]),
    }
    assert dists["hrl.alpha"].log and not dists["hrl.momentum"].log


def test_constants_are_returned_separately():
    space = _tpe_space()
    assert constants(space) == {"data.name": "synthetic"}
    assert "data.name" not in to_optuna_distributions(space)


@pytest.mark.parametrize("metric,mode", [("val_acc", "max"),
                                         (["val_acc", "computation_pct"], ["max", "min"])])
def test_optuna_search_accepts_the_distributions(metric, mode):
    space = SearchSpace.from_yaml(ROOT / "search_spaces/alpha_lr_gate.yaml")
    searcher = OptunaSearch(space=to_optuna_distributions(space), metric=metric, mode=mode, seed=0)
    config = searcher.suggest("trial_1")
    assert set(config) == {"hrl.alpha", "hrl.lr", "model.gate"}       # dotted, flat
    nested = unflatten({**config, "data": {"name": "synthetic"}})
    assert 1e-3 <= nested["hrl"]["alpha"] <= 1.0 and 1e-5 <= nested["hrl"]["lr"] <= 1e-3
    assert nested["model"]["gate"] in ("feedforward_conv", "recurrent")


# -- PBT ----------------------------------------------------------------------------------------

def test_to_pbt_mutations_builds_a_real_scheduler():
    space = SearchSpace.from_yaml(ROOT / "search_spaces/pbt_mutations.yaml")
    mutations = to_pbt_mutations(space)
    assert set(mutations) == {"hrl"} and set(mutations["hrl"]) == {"lr", "alpha"}
    assert all(1e-5 <= v <= 1e-3 for v in _sample(mutations["hrl"]["lr"]))
    PopulationBasedTraining(time_attr="training_iteration", metric="val_acc", mode="max",
                            perturbation_interval=2, hyperparam_mutations=mutations)


def test_pbt_choice_becomes_a_list():
    space = SearchSpace.from_dict({"hrl.batch_size": {"type": "choice", "values": [64, 128]},
                                   "hrl.iterations": {"type": "randint", "low": 10, "high": 20}})
    mutations = to_pbt_mutations(space)
    assert mutations["hrl"]["batch_size"] == [64, 128]
    assert isinstance(mutations["hrl"]["iterations"], Integer)


# -- trial configs ------------------------------------------------------------------------------

def test_flatten_and_unflatten_mixed_trial_configs():
    config = {"hrl": {"iterations": 5}, "hrl.alpha": 0.1, "model.gate": "recurrent"}
    assert flatten_trial_config(config) == {"hrl.iterations": 5, "hrl.alpha": 0.1,
                                            "model.gate": "recurrent"}
    assert unflatten(config) == {"hrl": {"iterations": 5, "alpha": 0.1}, "model": {"gate": "recurrent"}}
    with pytest.raises(ConfigError, match="hrl.alpha"):
        flatten_trial_config({"hrl": {"alpha": 0.2}, "hrl.alpha": 0.1})


# -- malformed input ----------------------------------------------------------------------------

LOG = {"type": "loguniform", "low": 1e-3, "high": 1.0}

MALFORMED = [   # (id, data, key path the message must name, fragment of what is accepted)
    ("unknown key", {"hrl.alpah": LOG}, "hrl.alpah:", "did you mean hrl.alpha"),
    ("unknown section", {"hlr": {"alpha": LOG}}, "hlr:", "TrainConfig key"),
    ("unknown type", {"hrl.alpha": {"type": "normal", "low": 0, "high": 1}},
     "hrl.alpha.type:", "loguniform, uniform, quniform, qloguniform, randint, choice, grid, constant"),
    ("low >= high", {"hrl.alpha": {"type": "uniform", "low": 0.5, "high": 0.5}}, "hrl.alpha.high:", "> low"),
    ("negative low, log", {"hrl.alpha": {"type": "loguniform", "low": -1, "high": 1}},
     "hrl.alpha.low:", "a number > 0"),
    ("randint low >= high", {"hrl.iterations": {"type": "randint", "low": 5, "high": 5}},
     "hrl.iterations.high:", "> low"),
    ("empty choice", {"model.gate": {"type": "choice", "values": []}}, "model.gate.values:", "non-empty"),
    ("empty grid", {"model.gate": {"type": "grid", "values": []}}, "model.gate.values:", "non-empty"),
    ("missing field", {"hrl.alpha": {"type": "loguniform", "low": 1e-3}}, "hrl.alpha.high:", "needs low, high"),
    ("missing type", {"hrl.alpha": {"low": 1e-3, "high": 1}}, "hrl.alpha.type:", "one of loguniform"),
    ("extra field", {"hrl.alpha": {**LOG, "step": 2}}, "hrl.alpha.step:", "takes only type, low, high"),
    ("non-mapping distribution", {"hrl.alpha": 0.1}, "hrl.alpha:", "distribution mapping"),
    ("non-mapping file", ["hrl.alpha"], "<top level>:", "mapping"),
    ("section given a distribution", {"hrl": LOG}, "hrl:", "section of distributions"),
    ("q <= 0", {"hrl.batch_size": {"type": "quniform", "low": 32, "high": 256, "q": 0}},
     "hrl.batch_size.q:", "> 0"),
    ("bound off the q grid", {"hrl.batch_size": {"type": "quniform", "low": 30, "high": 256, "q": 32}},
     "hrl.batch_size.low:", "multiple of q"),
    ("wrong value type", {"hrl.alpha": {"type": "uniform", "low": "small", "high": 1}},
     "hrl.alpha.low:", "a number"),
    ("float dist on int key", {"hrl.batch_size": {"type": "uniform", "low": 1, "high": 8}},
     "hrl.batch_size.type:", "integer"),
    ("value out of config range", {"hrl.momentum": {"type": "uniform", "low": 0.5, "high": 1.5}},
     "hrl.momentum.high:", "[0, 1)"),
    ("unknown gate", {"model.gate": {"type": "choice", "values": ["recurrent", "recurent"]}},
     "model.gate.values[1]:", "feedforward_conv"),
    ("key both nested and dotted", {"hrl.alpha": LOG, "hrl": {"alpha": LOG}}, "hrl.alpha:", "given once"),
]


@pytest.mark.parametrize("data,path,accepted", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_spaces_name_the_key(data, path, accepted):
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict(data, source="search_spaces/x.yaml")
    message = str(info.value)
    assert message.startswith(f"search_spaces/x.yaml: {path}"), message
    assert accepted in message and "\n" not in message


def test_negative_low_renders_like_the_cli_example():
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict({"hrl.alpha": {"type": "loguniform", "low": -1, "high": 1}}, source="x.yaml")
    assert str(info.value).startswith("x.yaml: hrl.alpha.low: must be a number > 0")
    assert info.value.path == "hrl.alpha.low" and info.value.value == -1


def test_bad_yaml_is_one_line_with_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("hrl.alpha: {type: loguniform, low: 1.0e-3\nhrl.lr: [\n")
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_yaml(path)
    assert str(info.value).startswith(f"{path}: <yaml>:") and "line" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="an existing YAML file"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")


def test_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("hrl:\n  alpha: {type: loguniform, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: hrl\.alpha\.low: must be a number > 0"):
        SearchSpace.from_yaml(path)


def test_pbt_refuses_the_gate():
    space = SearchSpace.from_yaml(ROOT / "search_spaces/alpha_lr_gate.yaml")
    with pytest.raises(ConfigError) as info:
        to_pbt_mutations(space)
    assert (f"{space.source}: pbt mutations: model.gate: must be a continuous hyper-parameter such "
            "as hrl.lr or hrl.alpha (the gate type is never mutated)") in str(info.value)
    no_source = SearchSpace.from_dict({"model.gate": {"type": "choice", "values": ["recurrent"]}})
    with pytest.raises(ConfigError, match=r"^pbt mutations: model\.gate: must be a continuous"):
        check_pbt_mutations(no_source)


@pytest.mark.parametrize("data,path", [
    ({"hrl.alpha": {"type": "grid", "values": [0.1, 0.2]}}, "hrl.alpha.type"),
    ({"hrl.alpha": {"type": "constant", "value": 0.1}}, "hrl.alpha.type"),
    ({"data.name": {"type": "choice", "values": ["synthetic", "cifar10"]}}, "data.name"),
    ({"model.arch": {"type": "choice", "values": ["cifar10_rnn_gate_38"]}}, "model.arch"),
])
def test_pbt_refuses_what_it_cannot_mutate(data, path):
    with pytest.raises(ConfigError, match=rf"pbt mutations: {path}:"):
        check_pbt_mutations(SearchSpace.from_dict(data))


@pytest.mark.parametrize("data,path,accepted", [
    ({"hrl.alpha": {"type": "grid", "values": [0.1, 0.2]}}, "hrl.alpha.type", "searcher grid"),
    ({"hrl.temperature": {"type": "qloguniform", "low": 0.5, "high": 8, "q": 0.5}},
     "hrl.temperature.type", "loguniform or quniform"),
    ({"hrl.lr_milestones": {"type": "choice", "values": [[10], [20, 30]]}},
     "hrl.lr_milestones.values[0]", "for Optuna"),
])
def test_optuna_refuses_what_tpe_cannot_sample(data, path, accepted):
    with pytest.raises(ConfigError) as info:
        to_optuna_distributions(SearchSpace.from_dict(data, source="x.yaml"))
    assert str(info.value).startswith(f"x.yaml: {path}:") and accepted in str(info.value)


def test_config_errors_survive_pickling():
    """Ray pickles a trial's error to the driver (a reused actor's ``reset`` raising one): it must
    come back as the same error, else Tune ends the whole search ("Failed to deserialize")."""
    import pickle
    err = ConfigError("data.root", "/no/cifar", "an existing directory", source="x.yaml")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ConfigError and str(back) == str(err) and back.path == "data.root"


def test_a_trial_config_leaves_the_experiments_train_sections_alone():
    """Each trial's whole config is built from the experiment's ``train`` plus the trial's values:
    the experiment's nested sections must not take the last trial's values (a search's driver
    builds one per result; a model.gate once leaked into the next search run in the process)."""
    from skipnet.core.config import load_train_config
    base = {"model": {"arch": "cifar10_rnn_gate_38"}, "hrl": {"alpha": 1.0}}
    config = load_train_config(None, {"model.gate": "feedforward_conv", "hrl.alpha": 5.0}, base=base)
    assert (config.model.gate, config.hrl.alpha) == ("feedforward_conv", 5.0)
    assert base == {"model": {"arch": "cifar10_rnn_gate_38"}, "hrl": {"alpha": 1.0}}
