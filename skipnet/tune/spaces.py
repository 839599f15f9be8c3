"""Search spaces as data: YAML distributions over TrainConfig keys, validated into frozen objects.

A search-space file maps dotted ``TrainConfig`` keys (``hrl.alpha``) or nested sections
(``hrl: {alpha: ...}``) to distributions such as ``{type: loguniform, low: 1.0e-3, high: 1}``.
Everything is checked up front -- the key exists, the type is known, the bounds make sense and
every value is one ``TrainConfig`` accepts -- so a typo fails in one line naming the key
(``x.yaml: hrl.alpha.low: must be a number > 0 (got -1)``), not hours later inside a trial.

The pure functions at the bottom translate one ``SearchSpace`` for each consumer:
``to_tune_space`` (nested Tune ``param_space``), ``to_optuna_distributions`` (dotted keys, for
``OptunaSearch``), ``constants`` and ``to_pbt_mutations`` (``hyperparam_mutations``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import optuna.distributions as od
from ray import tune

from skipnet.core.config import TrainConfig, flatten, from_dict, read_yaml, set_dotted
from skipnet.errors import ConfigError

__all__ = [
    "Choice", "Constant", "Distribution", "Grid", "LogUniform", "QLogUniform", "QUniform",
    "RandInt", "SearchSpace", "Uniform", "check_pbt_mutations", "constants",
    "flatten_trial_config", "to_optuna_distributions", "to_pbt_mutations", "to_tune_space",
    "unflatten",
]


# -- distributions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distribution:
    """One hyper-parameter's distribution; subclasses hold the parameters of one YAML ``type``."""

    kind: ClassVar[str]

    def check(self, key: str) -> None:
        """Range checks that types alone do not express; ``key`` names the hyper-parameter."""

    def values_to_check(self) -> dict[str, Any]:
        """``{field: value}`` that must each be a value ``TrainConfig`` accepts for the key."""
        return {}


@dataclass(frozen=True)
class LogUniform(Distribution):
    """Floats between ``low`` and ``high``, uniform in log space (``low > 0``)."""

    kind: ClassVar[str] = "loguniform"
    low: float
    high: float

    def check(self, key: str) -> None:
        _require(self.low > 0, f"{key}.low", self.low, "a number > 0 (log scale)")
        _require(self.high > self.low, f"{key}.high", self.high, f"a number > low ({self.low})")

    def values_to_check(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform(Distribution):
    """Floats uniform between ``low`` and ``high``."""

    kind: ClassVar[str] = "uniform"
    low: float
    high: float

    def check(self, key: str) -> None:
        _require(self.high > self.low, f"{key}.high", self.high, f"a number > low ({self.low})")

    def values_to_check(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class QUniform(Distribution):
    """Uniform between ``low`` and ``high``, rounded to a multiple of ``q``."""

    kind: ClassVar[str] = "quniform"
    low: float
    high: float
    q: float

    def check(self, key: str) -> None:
        _require(self.q > 0, f"{key}.q", self.q, "a number > 0")
        _require(self.high > self.low, f"{key}.high", self.high, f"a number > low ({self.low})")
        _check_multiples(self, key)

    def values_to_check(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class QLogUniform(LogUniform):
    """Log-uniform between ``low`` and ``high``, rounded to a multiple of ``q`` (Tune only)."""

    kind: ClassVar[str] = "qloguniform"
    q: float = 0.0   # always given in YAML; the default only satisfies dataclass field order

    def check(self, key: str) -> None:
        _require(self.q > 0, f"{key}.q", self.q, "a number > 0")
        super().check(key)
        _check_multiples(self, key)


@dataclass(frozen=True)
class RandInt(Distribution):
    """Integers ``low <= x < high`` (Tune's convention: ``high`` is excluded)."""

    kind: ClassVar[str] = "randint"
    low: int
    high: int

    def check(self, key: str) -> None:
        _require(self.high > self.low, f"{key}.high", self.high,
                 f"an integer > low ({self.low}; high is excluded)")

    def values_to_check(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high - 1}


@dataclass(frozen=True)
class Choice(Distribution):
    """One of ``values``, each equally likely."""

    kind: ClassVar[str] = "choice"
    values: tuple[Any, ...]

    def check(self, key: str) -> None:
        _require(len(self.values) > 0, f"{key}.values", list(self.values), "a non-empty list")

    def values_to_check(self) -> dict[str, Any]:
        return {f"values[{i}]": v for i, v in enumerate(self.values)}


@dataclass(frozen=True)
class Grid(Choice):
    """Every one of ``values`` (Tune ``grid_search``: one trial per value and sample)."""

    kind: ClassVar[str] = "grid"


@dataclass(frozen=True)
class Constant(Distribution):
    """A fixed ``value`` (set for every trial, never searched)."""

    kind: ClassVar[str] = "constant"
    value: Any

    def values_to_check(self) -> dict[str, Any]:
        return {"value": self.value}


_KINDS: dict[str, type[Distribution]] = {
    cls.kind: cls for cls in (LogUniform, Uniform, QUniform, QLogUniform, RandInt, Choice, Grid,
                              Constant)
}
_CONTINUOUS = (LogUniform, Uniform, QUniform, RandInt)   # QLogUniform is a LogUniform


# -- the space ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchSpace:
    """Validated distributions keyed by dotted ``TrainConfig`` key (``"hrl.alpha"``)."""

    params: dict[str, Distribution]
    source: str | None = field(default=None, compare=False)   # file, for error messages

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        """Read and validate a search-space file; errors are attributed to ``path``."""
        return cls.from_dict(read_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "SearchSpace":
        """Validate a mapping of dotted keys or nested sections to distribution mappings."""
        try:
            if not isinstance(data, dict) or not data:
                raise ConfigError("<top level>", data, "a non-empty mapping of TrainConfig keys to "
                                  "distributions, e.g. {hrl.alpha: {type: loguniform, ...}}")
            specs: dict[str, Any] = {}
            _collect(data, "", specs)
            params = {key: _parse(key, spec) for key, spec in specs.items()}
        except ConfigError as e:
            raise e.with_source(source) if source else e
        return cls(params, source)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain ``{key: {type: ..., ...}}`` (for provenance files and MLflow params)."""
        out = {}
        for key, d in self.params.items():
            fields = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
            out[key] = {"type": d.kind, **{n: list(v) if isinstance(v, tuple) else v
                                           for n, v in fields.items()}}
        return out


def _require(ok: bool, path: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(path, value, accepted)


def _check_multiples(d: QUniform | QLogUniform, key: str) -> None:
    """Tune (and Optuna's step) need both bounds on the grid of ``q``."""
    for name in ("low", "high"):
        value = getattr(d, name)
        _require(math.isclose(value / d.q, round(value / d.q)), f"{key}.{name}", value,
                 f"a multiple of q ({d.q})")


def _leaf_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        out += _leaf_keys(tp, f"{key}.") if dataclasses.is_dataclass(tp) else [key]
    return out


def _key_type(key: str) -> Any:
    """The annotated type of dotted ``key`` in ``TrainConfig`` (a dataclass for a section)."""
    tp: Any = TrainConfig
    for part in key.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            close = difflib.get_close_matches(key, _leaf_keys(), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else \
                f" (sections: {', '.join(typing.get_type_hints(TrainConfig))})"
            raise ConfigError(key, key, f"a TrainConfig key such as hrl.alpha{hint}")
        tp = hints[part]
    return tp


def _collect(data: dict, prefix: str, out: dict[str, Any]) -> None:
    """Flatten nested sections into ``out[dotted_key] = spec``, guided by TrainConfig's shape."""
    for name, spec in data.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str):
            raise ConfigError(key, name, "a string key")
        tp = _key_type(key)
        if dataclasses.is_dataclass(tp):
            section = ", ".join(typing.get_type_hints(tp))
            if not isinstance(spec, dict) or "type" in spec:
                raise ConfigError(key, spec, f"a section of distributions, one per key (keys: {section})")
            _collect(spec, f"{key}.", out)
        elif key in out:
            raise ConfigError(key, spec, "given once (it appears both dotted and nested)")
        else:
            out[key] = spec


def _parse(key: str, spec: Any) -> Distribution:
    """One distribution mapping -> ``Distribution``, checked against the key's config type."""
    if not isinstance(spec, dict):
        raise ConfigError(key, spec, "a distribution mapping such as {type: loguniform, low: 0.001, high: 1}")
    kind = spec.get("type")
    if kind not in _KINDS:
        raise ConfigError(f"{key}.type", kind, f"one of {', '.join(_KINDS)}")
    cls = _KINDS[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    for name in spec:
        _require(name == "type" or name in names, f"{key}.{name}", spec[name],
                 f"absent: {kind} takes only type, {', '.join(names)}")
    for name in names:
        _require(name in spec, f"{key}.{name}", None, f"set: {kind} needs {', '.join(names)}")
    dist = from_dict(cls, {n: spec[n] for n in names}, key)
    dist.check(key)
    _check_against_config(key, dist)
    return dist


def _check_against_config(key: str, dist: Distribution) -> None:
    """Every value the distribution can produce must be one ``TrainConfig`` accepts for ``key``."""
    integer_steps = isinstance(dist, (QUniform, QLogUniform)) and float(dist.q).is_integer()
    if _key_type(key) is int and isinstance(dist, (LogUniform, Uniform, QUniform)) \
            and not integer_steps:
        raise ConfigError(f"{key}.type", dist.kind, f"randint, choice, grid, constant or a "
                          f"quantized type with integer q, since {key} is an integer")
    for name, value in dist.values_to_check().items():
        try:
            from_dict(TrainConfig, set_dotted({}, key, value)).validate()   # also checks arch and gate names
        except ConfigError as e:
            raise ConfigError(f"{key}.{name}", value, e.accepted) from None


# -- translations -------------------------------------------------------------------------------

def to_tune_space(space: SearchSpace) -> dict[str, Any]:
    """Nested Tune ``param_space`` shaped like TrainConfig: ``{"hrl": {"alpha": tune.loguniform}}``.

    Grids become ``{"grid_search": [...]}`` and constants plain values.
    """
    out: dict[str, Any] = {}
    for key, d in space.params.items():
        set_dotted(out, key, _tune_domain(d))
    return out


def _tune_domain(d: Distribution) -> Any:
    if isinstance(d, QLogUniform):
        return tune.qloguniform(d.low, d.high, d.q)
    if isinstance(d, LogUniform):
        return tune.loguniform(d.low, d.high)
    if isinstance(d, QUniform):
        return tune.quniform(d.low, d.high, d.q)
    if isinstance(d, Uniform):
        return tune.uniform(d.low, d.high)
    if isinstance(d, RandInt):
        return tune.randint(d.low, d.high)
    if isinstance(d, Grid):
        return tune.grid_search(list(d.values))
    if isinstance(d, Choice):
        return tune.choice(list(d.values))
    if isinstance(d, Constant):
        return d.value
    raise TypeError(f"unhandled distribution {d!r}")   # internal: every kind is handled above


def to_optuna_distributions(space: SearchSpace) -> dict[str, od.BaseDistribution]:
    """Optuna distributions keyed by dotted key, for ``OptunaSearch(space=...)`` (TPE, NSGA).

    Constants are left out (see :func:`constants`); ``randint``'s excluded ``high`` becomes
    Optuna's inclusive ``high - 1``. Grids and ``qloguniform`` have no Optuna equivalent.
    Note ``OptunaSearch`` returns these dotted keys flat in the trial config; see :func:`unflatten`.
    """
    out: dict[str, od.BaseDistribution] = {}
    try:
        for key, d in space.params.items():
            if isinstance(d, Grid):
                raise ConfigError(f"{key}.type", d.kind, "choice for Optuna (TPE samples, it does "
                                  "not enumerate a grid; use searcher grid to run every value)")
            if isinstance(d, QLogUniform):
                raise ConfigError(f"{key}.type", d.kind, "loguniform or quniform for Optuna "
                                  "(it has no log scale with a step)")
            if isinstance(d, LogUniform):
                out[key] = od.FloatDistribution(d.low, d.high, log=True)
            elif isinstance(d, QUniform):
                out[key] = od.FloatDistribution(d.low, d.high, step=d.q)
            elif isinstance(d, Uniform):
                out[key] = od.FloatDistribution(d.low, d.high)
            elif isinstance(d, RandInt):
                out[key] = od.IntDistribution(d.low, d.high - 1)
            elif isinstance(d, Choice):
                for i, v in enumerate(d.values):
                    _require(v is None or isinstance(v, (bool, int, float, str)),
                             f"{key}.values[{i}]", v, "a number, string, boolean or null for Optuna")
                out[key] = od.CategoricalDistribution(list(d.values))
    except ConfigError as e:
        raise e.with_source(space.source) if space.source else e
    return out


def constants(space: SearchSpace) -> dict[str, Any]:
    """The ``constant`` entries as ``{dotted_key: value}`` (fixed for every trial)."""
    return {k: d.value for k, d in space.params.items() if isinstance(d, Constant)}


def check_pbt_mutations(space: SearchSpace) -> None:
    """Refuse what PBT must not mutate on exploit: anything but a numeric training setting.

    The gate type and the rest of ``model``/``data`` change the network or the data, so a
    cloned checkpoint would no longer fit; they are carried over from the exploited trial.
    """
    where = f"{space.source}: pbt mutations" if space.source else "pbt mutations"
    for key, d in space.params.items():
        tp = _key_type(key)
        numeric = tp in (int, float) or typing.get_args(tp) and \
            all(a in (int, float, type(None)) for a in typing.get_args(tp))
        if key.split(".")[0] in ("model", "data") or not numeric:
            why = "the gate type is never mutated" if key == "model.gate" else \
                "it changes the network, data or run, so it is carried over on exploit"
            raise ConfigError(key, d.kind, "a continuous hyper-parameter such as hrl.lr or "
                              f"hrl.alpha ({why})", source=where)
        if not isinstance(d, (*_CONTINUOUS, Choice)) or isinstance(d, Grid):
            raise ConfigError(f"{key}.type", d.kind, "loguniform, uniform, quniform, qloguniform, "
                              "randint or choice (PBT resamples or perturbs, it does not enumerate "
                              "grids or keep constants)", source=where)


def to_pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """Nested ``hyperparam_mutations`` for ``PopulationBasedTraining``, after checking it.

    Continuous distributions become Tune domains (resampled or perturbed by PBT); a choice
    becomes the list PBT steps through.
    """
    check_pbt_mutations(space)
    out: dict[str, Any] = {}
    for key, d in space.params.items():
        set_dotted(out, key, list(d.values) if isinstance(d, Choice) else _tune_domain(d))
    return out


def pbt_bounds(space: SearchSpace) -> dict[str, tuple[float, float]]:
    """``{key: (low, high)}`` of the numeric mutations: PBT's perturbation (x 0.8 or x 1.2) must
    stay inside them."""
    return {key: (d.low, d.high - 1 if isinstance(d, RandInt) else d.high)
            for key, d in space.params.items() if isinstance(d, (*_CONTINUOUS, RandInt))}


# -- trial configs ------------------------------------------------------------------------------

def flatten_trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """``{dotted_key: value}`` from a trial config holding nested sections, dotted keys or both.

    Tune's param_space gives nested sections while ``OptunaSearch`` gives dotted keys; a key
    given both ways is an error rather than a silent pick.
    """
    out: dict[str, Any] = {}
    for name, value in config.items():
        items = flatten({name: value}).items() if isinstance(value, dict) else [(name, value)]
        for key, leaf in items:
            _require(key not in out, key, leaf, "given once (it appears both dotted and nested)")
            out[key] = leaf
    return out


def unflatten(config: dict[str, Any]) -> dict[str, Any]:
    """Nested dict (TrainConfig's shape) from a trial config with dotted and/or nested keys."""
    out: dict[str, Any] = {}
    for key, value in flatten_trial_config(config).items():
        set_dotted(out, key, value)
    return out
