"""Configuration as data: YAML validated into frozen, typed dataclasses.

``TrainConfig`` describes one training run (model, data, stages, evaluation, device). Files
state only what differs from the defaults; every key is checked, and a wrong key or value
raises ``ConfigError`` naming the dotted key and what is accepted, e.g.
``cfg.yaml: hrl.alpha: must be a number >= 0 (got -1)``. ``--set key=value`` overrides use
the same dotted keys. ``from_dict`` is generic over dataclasses, so the search layer reuses it.
"""
from __future__ import annotations

import copy

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from skipnet.errors import ConfigError

Stage = Literal["base", "sp", "hrl", "pipeline"]
Recipe = Literal["stable", "authors"]

# ``recipe: authors`` restores the authors' exact training where a file leaves these keys unset:
# their recurrent gate, hard gates from the first SP iteration, no REINFORCE baseline, no entropy
# term and one learning rate for blocks and gates. The default recipe ("stable") is what makes
# gates route (README "Training recipes" has the measurements): the recurrent gate's embedding
# is batch-normalized (else its probability is nearly the same for every image); SP runs every
# block for its first third (else SP collapses into skipping);
# HRL compares each image's return with its greedy path's (else an image's difficulty, not its
# actions, drives the policy and input dependence is erased), trains the gates at 10x the
# blocks' learning rate and rewards their entropy a little (else they saturate on a static
# subnetwork before they learn whom to route), gives the gates the prediction loss's
# straight-through gradient beside REINFORCE (a per-image signal of what each block is worth;
# REINFORCE alone finds the per-gate bias long before any input dependence) and adds a
# cross-entropy on random paths (else the blocks co-adapt to the policy's few paths, so that
# hard images gain nothing from more blocks and easy ones lose from fewer).
AUTHORS_RECIPE = {"model.gate_norm": False, "sp.gate_warmup": 0, "sp.lr_warmup": 0, "sp.gate_init_prob": None,
                  "hrl.baseline": "none", "hrl.entropy_weight": 0.0,
                  "hrl.gate_lr_scale": 1.0, "hrl.straight_through": False, "hrl.random_path_weight": 0.0}


@dataclass(frozen=True)
class ModelConfig:
    """Which network: a registry name, optionally with the gate kind or mode overridden."""

    arch: str = "cifar10_rnn_gate_38"
    gate: str | None = None          # feedforward_conv | feedforward_fc | recurrent (aliases accepted)
    mode: Literal["hard", "soft"] = "hard"   # SP gate mode; HRL always uses policy
    gate_norm: bool = True           # batch-normalize the recurrent gate's embedding (skipnet.core.models.gates); authors: false
    gate_threshold: float = 0.5      # evaluation/inference: a block runs when its gate's prob > this (training ignores it)


@dataclass(frozen=True)
class DataConfig:
    name: Literal["cifar10", "cifar100", "svhn", "imagenet", "imagefolder", "synthetic"] = "synthetic"
    root: str | None = None
    download: bool = False
    val_size: int | None = None      # images held out of the training set (default per data set)
    num_workers: int = 0
    image_size: int = 224            # folders only
    synthetic_size: int = 10000
    synthetic_test_size: int = 2000
    # synthetic only: each image's difficulty d is uniform in [low, high] (skipnet.core.data);
    # a higher low end leaves fewer images that the first blocks alone classify
    synthetic_difficulty: tuple[float, ...] = (0.0, 1.0)
    augment: bool = True


@dataclass(frozen=True)
class SPConfig:
    """Supervised stage (``base`` and ``sp``): SGD with step decay; the authors' defaults."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    iterations: int = 64000
    lr_milestones: tuple[int, ...] = (32000, 48000)
    lr_decay: float = 0.1
    eval_every: int = 1000
    # Blocks learn before gates may skip them; otherwise the gates learn to skip untrained blocks,
    # which then get no gradient, and SP collapses into skipping nearly every block.
    gate_warmup: int | None = None   # first iterations run every block; None = a third of iterations, 0 = off
    gate_lr_scale: float = 1.0       # the gates' learning rate is lr * gate_lr_scale
    # The learning rate rises linearly to lr over the first iterations: at full lr from the first
    # step, short runs stay on the loss plateau for a seed-dependent time (plain ResNets too)
    lr_warmup: int | None = None     # iterations; None = as long as the gate warm-up, 0 = off
    # When the warm-up ends the gates start by executing every block with about this probability
    # (skipnet.core.models.gates.start_executing), so SP does not switch off half of the blocks at
    # once while they are still learning; null = the authors' initialisation
    gate_init_prob: float | None = 0.9

    @property
    def warmup_iterations(self) -> int:
        return self.iterations // 3 if self.gate_warmup is None else self.gate_warmup

    @property
    def lr_warmup_iterations(self) -> int:
        return self.warmup_iterations if self.lr_warmup is None else self.lr_warmup


@dataclass(frozen=True)
class HRLConfig:
    """Hybrid RL stage: cross-entropy plus REINFORCE on the gate actions; the authors' defaults."""

    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    iterations: int = 10000
    lr_milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    eval_every: int = 200
    alpha: float = 0.1               # gate cost: reward alpha / num_gates per skipped block
    rl_weight: float = 0.01
    gamma: float = 1.0
    temperature: float = 1.0
    skip_compute: bool = False       # run each block only on the samples that execute it
    baseline: Literal["none", "batch_mean", "greedy"] = "greedy"   # what returns are compared with (skipnet.core.train.steps.advantages); none = the authors
    entropy_weight: float = 0.003    # reward for the gates' entropy (keeps the policy from saturating early); authors: 0
    gate_lr_scale: float = 10.0      # the gates' learning rate is lr * gate_lr_scale; authors: 1
    # the gates also get the prediction loss's straight-through gradient (per image: how much
    # running each block lowered its loss); the policy forward then runs every block; authors: false
    straight_through: bool = True
    # weight of a cross-entropy on random paths (each image keeps each gated block with its own
    # probability, uniform in [0, 1]): every sub-path stays useful; authors: 0
    random_path_weight: float = 1.0
    # share of each batch (its first images; batches are shuffled) that also runs a random path:
    # half the batch costs half that forward and trains the blocks as well (README "Training recipes")
    random_path_fraction: float = 0.5
    init_checkpoint: str | None = None   # SP checkpoint (ours or the authors') for stage hrl


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 256
    max_batches: int | None = None   # cap evaluation batches (quick searches); None = whole split
    # the final evaluation also measures val at each gate threshold: each trained model is a curve
    # of candidate front points; [] = off. Four thresholds besides 0.5: 2.5-4.4 % of a quickstart
    # trial's time (README "Fronts and export"); 0.85 gives each model its low-computation end
    gate_thresholds: tuple[float, ...] = (0.2, 0.35, 0.5, 0.7, 0.85)


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage = "pipeline"
    recipe: Recipe = "stable"        # "authors": their exact SP/HRL settings (AUTHORS_RECIPE) where unset
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sp: SPConfig = field(default_factory=SPConfig)
    hrl: HRLConfig = field(default_factory=HRLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True                 # automatic mixed precision on CUDA (ignored on CPU)
    channels_last: bool = True       # on CUDA (ignored on CPU)
    threads: int | None = None       # CPU threads of torch (None: one per usable CPU, skipnet/core/threads.py); results match bitwise only at equal counts
    output_dir: str = "runs/train"

    def validate(self, check_model: bool = True) -> "TrainConfig":
        """Range checks that types alone do not express; ``check_model`` also looks the
        architecture up in the model registry (which imports torch)."""
        _positive("sp.lr", self.sp.lr)
        _positive("hrl.lr", self.hrl.lr)
        for section, c in (("sp", self.sp), ("hrl", self.hrl)):
            _positive(f"{section}.batch_size", c.batch_size)
            _positive(f"{section}.eval_every", c.eval_every)
            _positive(f"{section}.gate_lr_scale", c.gate_lr_scale)
            if (getattr(c, "gate_warmup", 0) or 0) < 0:
                raise ConfigError(f"{section}.gate_warmup", c.gate_warmup, "an integer >= 0 or null (a third of iterations)")
            if (getattr(c, "lr_warmup", 0) or 0) < 0:
                raise ConfigError(f"{section}.lr_warmup", c.lr_warmup,
                                  "an integer >= 0 or null (as long as the gate warm-up)")
            if c.iterations < 0:
                raise ConfigError(f"{section}.iterations", c.iterations, "an integer >= 0")
            if not 0 <= c.momentum < 1:
                raise ConfigError(f"{section}.momentum", c.momentum, "a number in [0, 1)")
            if c.weight_decay < 0:
                raise ConfigError(f"{section}.weight_decay", c.weight_decay, "a number >= 0")
            if not 0 < c.lr_decay <= 1:
                raise ConfigError(f"{section}.lr_decay", c.lr_decay, "a number in (0, 1]")
        if self.sp.gate_init_prob is not None and not 0 < self.sp.gate_init_prob < 1:
            raise ConfigError("sp.gate_init_prob", self.sp.gate_init_prob,
                              "a number strictly between 0 and 1 or null (the authors' gate initialisation)")
        if self.hrl.alpha < 0:
            raise ConfigError("hrl.alpha", self.hrl.alpha, "a number >= 0")
        if self.hrl.rl_weight < 0:
            raise ConfigError("hrl.rl_weight", self.hrl.rl_weight, "a number >= 0")
        if not 0 <= self.hrl.gamma <= 1:
            raise ConfigError("hrl.gamma", self.hrl.gamma, "a number in [0, 1]")
        _positive("hrl.temperature", self.hrl.temperature)
        if self.hrl.entropy_weight < 0:
            raise ConfigError("hrl.entropy_weight", self.hrl.entropy_weight, "a number >= 0")
        if self.hrl.random_path_weight < 0:
            raise ConfigError("hrl.random_path_weight", self.hrl.random_path_weight, "a number >= 0")
        if not 0 < self.hrl.random_path_fraction <= 1:
            raise ConfigError("hrl.random_path_fraction", self.hrl.random_path_fraction, "a number in (0, 1]")
        _positive("eval.batch_size", self.eval.batch_size)
        _threshold("model.gate_threshold", self.model.gate_threshold)
        for i, t in enumerate(self.eval.gate_thresholds):
            _threshold(f"eval.gate_thresholds[{i}]", t)
        if self.data.val_size is not None and self.data.val_size < 1:
            raise ConfigError("data.val_size", self.data.val_size, "a positive integer (validation selects models)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads", self.threads, "a positive integer or null (one per usable CPU)")
        if self.data.num_workers < 0:
            raise ConfigError("data.num_workers", self.data.num_workers, "an integer >= 0")
        check_difficulty_range(self.data.synthetic_difficulty)
        if check_model:
            _check_model(self.model)
        return self


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, value, "a number > 0")


def _threshold(key: str, value: float) -> None:
    """A gate threshold: a probability strictly inside (0, 1) (0 would execute every block, 1 none)."""
    if not 0 < value < 1:
        raise ConfigError(key, value, "a number strictly between 0 and 1 (the gate probability above which "
                                      "a block executes)")


def check_difficulty_range(value: Any) -> tuple[float, float]:
    """``[low, high]`` with 0 <= low <= high <= 1 as a float pair, else a ConfigError naming
    ``data.synthetic_difficulty``."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
          and 0 <= value[0] <= value[1] <= 1)
    if not ok:
        raise ConfigError("data.synthetic_difficulty", list(value) if isinstance(value, tuple) else value,
                          "a list [low, high] of numbers with 0 <= low <= high <= 1 (the synthetic "
                          "images' difficulty range)")
    return float(value[0]), float(value[1])


def _check_model(model: ModelConfig) -> None:
    """The architecture is registered and the gate kind known (before any data or file is touched)."""
    import difflib

    from skipnet.core.models import list_models
    from skipnet.core.models.gates import parse_gate_kind
    names = list_models(include_aliases=True)
    if model.arch not in names:
        close = difflib.get_close_matches(model.arch, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else \
            "e.g. cifar10_rnn_gate_110, cifar10_resnet_110 or imagenet_rnn_gate_rl_101; skipnet.list_models() lists all"
        raise ConfigError("model.arch", model.arch, f"a registered architecture ({hint})")
    if model.gate is not None:
        parse_gate_kind(model.gate)          # ConfigError naming model.gate and the accepted kinds


# -- generic dict -> dataclass validation ---------------------------------------------------

def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking every key and type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path or "<top level>", data, f"a mapping of {cls.__name__} keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(key, unknown[0], f"a known key (one of {', '.join(fields)})")
    kwargs = {name: _convert(hints[name], value, f"{path}.{name}" if path else name)
              for name, value in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(e.accepted)
        raise ConfigError(path, value, " or ".join(errors + (["null"] if type(None) in args else [])))
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(path, value, f"one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(path, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, value, "a string")
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def to_dict(obj: Any) -> Any:
    """Nested plain dicts/lists of a config dataclass (for YAML, checkpoints and MLflow)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"hrl": {"alpha": 0.1}}`` -> ``{"hrl.alpha": 0.1}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def set_dotted(d: dict, key: str, value: Any) -> dict:
    """Set ``a.b.c`` in nested dict ``d`` (in place), creating sections as needed."""
    parts = key.split(".")
    node = d
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(key, value, f"a key under a section, but {part} is a value")
        node = nxt
    node[parts[-1]] = value
    return d


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3`` (no dot) is a number, as every
    user means it (YAML 1.1 reads it as a string). So a string is always one the user quoted,
    and every config value goes through one type check (``from_dict``): a quoted number is
    refused in training configs, experiments and search spaces alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text as every skipnet file and ``--set`` value is parsed (``_Loader``)."""
    return yaml.load(text, Loader=_Loader)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["hrl.alpha=0.05", "model.gate=recurrent"]`` -> dotted dict; values parsed as YAML."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value (for example hrl.alpha=0.05)")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = load_yaml(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def read_yaml(path: str | Path, key: str = "--config") -> dict:
    """A YAML mapping from ``path``; a missing file or bad YAML is a one-line ConfigError.

    ``key`` names the argument or setting that gave the path, for the missing-file error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "an existing YAML file")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError("<yaml>", getattr(e, "problem", str(e)), f"valid YAML (error at {where})",
                          source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("<top level>", type(data).__name__, "a mapping of keys", source=str(path))
    return data


def apply_recipe(data: dict) -> dict:
    """Fill the keys of ``recipe: authors`` that ``data`` (nested, in place) leaves unset."""
    if data.get("recipe") == "authors":
        for key, value in AUTHORS_RECIPE.items():
            section, name = key.split(".")
            node = data.setdefault(section, {})
            if isinstance(node, dict):
                node.setdefault(name, value)
    return data


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                      base: dict | None = None, check_model: bool = True) -> TrainConfig:
    """``TrainConfig`` from a YAML file (or ``base`` dict) plus dotted overrides, validated."""
    data = read_yaml(path) if path is not None else copy.deepcopy(base or {})     # never the caller's sections
    data.pop("export", None)          # what skipnet export records about a trial; not a setting
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    apply_recipe(data)
    try:
        return from_dict(TrainConfig, data).validate(check_model)
    except ConfigError as e:
        source = error_source(e, path, overrides)
        raise e.with_source(source) if source is not None else e


def error_source(error: ConfigError, path: str | Path | None, overrides: dict[str, Any] | None) -> str | None:
    """Where a bad value came from: the ``--set KEY=VALUE`` that set the offending key (or a
    key above or below it), else the file."""
    for key, value in (overrides or {}).items():
        if error.path == key or error.path.startswith(key + ".") or key.startswith(error.path + "."):
            return f"--set {key}={value}"
    return str(path) if path is not None else None
