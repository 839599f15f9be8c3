"""Experiment files (``experiments/*.yaml``): what a search trains, how it searches, where it logs.

An experiment states only what differs from the defaults below; ``load_experiment`` validates it
into a frozen ``ExperimentConfig`` (errors name the key: ``x.yaml: scheduler.type: must be one
of fifo, asha, pbt, moasha, mopbt (got 'hyperband')``). Pure data: importing this module imports no
ray; ``validate`` reads the search space (ray, optuna) only for stage hrl from an existing
``hrl.init_checkpoint``, to refuse gate types that checkpoint cannot start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from skipnet.core.config import from_dict, load_train_config, read_yaml
from skipnet.errors import ConfigError

METRICS = ("val_top1", "val_computation_pct", "objective")
PBT_TYPES = ("pbt", "mopbt")           # schedulers that exploit checkpoints and mutate hyperparameters


@dataclass(frozen=True)
class BudgetConfig:
    iterations_per_step: int = 100    # training iterations between two reports (one Tune step)
    max_steps: int = 10               # reports per trial at most (ASHA's max_t)


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal["fifo", "asha", "pbt", "moasha", "mopbt"] = "fifo"
    metric: Literal["val_top1", "objective"] = "val_top1"   # ASHA/PBT: the scalar they compare
    objective_weight: float = 0.2      # objective = val_top1 - weight * val_computation_pct
    grace_period: int = 1
    reduction_factor: int = 3
    perturbation_interval: int = 2     # PBT, in steps
    quantile_fraction: float = 0.25    # PBT, MO-PBT
    mutations: str | None = None       # PBT, MO-PBT: search-space file of the mutated keys
    diversity: Literal["crowding", "scattered"] = "crowding"   # MO-PBT's order within a front


@dataclass(frozen=True)
class SearcherConfig:
    type: Literal["random", "grid", "optuna-tpe", "optuna-mo"] = "random"


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0                   # fractional GPUs share a device between trials


@dataclass(frozen=True)
class MLflowConfig:
    tracking_uri: str | None = None    # default: SQLite store ./mlflow.db in the working directory
    experiment_name: str = "skipnet"
    front_interval_s: float = 30.0     # the parent run's live front is redrawn at most this often


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "search"
    train: dict[str, Any] = field(default_factory=dict)      # TrainConfig keys shared by all trials
    search_space: str | dict[str, Any] = field(default_factory=dict)   # file path or inline mapping
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    num_samples: int = 8
    max_concurrent_trials: int = 2          # pbt/mopbt: the whole population exists, resources limit it
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage_path: str = "runs/searches"     # local directory or a cloud URI (s3://, gs://)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    seed: int = 0
    max_failures: int = 2                   # Tune retries a failed trial from its last checkpoint
    share_sp: bool = True                   # pipeline: train each distinct SP once (skipnet.tune.sharing)
    base_dir: str = "."                     # where relative paths in the file are resolved (set on load)

    def validate(self) -> "ExperimentConfig":
        for key, value in (("num_samples", self.num_samples), ("max_concurrent_trials", self.max_concurrent_trials),
                           ("budget.iterations_per_step", self.budget.iterations_per_step),
                           ("budget.max_steps", self.budget.max_steps),
                           ("scheduler.grace_period", self.scheduler.grace_period),
                           ("scheduler.perturbation_interval", self.scheduler.perturbation_interval)):
            if value < 1:
                raise ConfigError(key, value, "a positive integer")
        if self.scheduler.grace_period > self.budget.max_steps:
            raise ConfigError("scheduler.grace_period", self.scheduler.grace_period,
                              f"<= budget.max_steps ({self.budget.max_steps})")
        if self.scheduler.reduction_factor < 2:
            raise ConfigError("scheduler.reduction_factor", self.scheduler.reduction_factor, "an integer >= 2")
        if not 0 < self.scheduler.quantile_fraction <= 0.5:
            raise ConfigError("scheduler.quantile_fraction", self.scheduler.quantile_fraction, "a number in (0, 0.5]")
        if self.scheduler.objective_weight < 0:
            raise ConfigError("scheduler.objective_weight", self.scheduler.objective_weight, "a number >= 0")
        if not self.mlflow.front_interval_s >= 0:                 # NaN too
            raise ConfigError("mlflow.front_interval_s", self.mlflow.front_interval_s, "a number of seconds >= 0")
        if self.resources.cpu <= 0 or self.resources.gpu < 0:
            raise ConfigError("resources", {"cpu": self.resources.cpu, "gpu": self.resources.gpu},
                              "cpu > 0 and gpu >= 0")
        if self.scheduler.type in PBT_TYPES and not self.scheduler.mutations:
            raise ConfigError("scheduler.mutations", None, f"a search-space file of mutated keys for {self.scheduler.type}")
        if self.searcher.type == "optuna-mo" and self.scheduler.type in ("asha", "pbt"):
            raise ConfigError("scheduler.type", self.scheduler.type,
                              "fifo or moasha with searcher optuna-mo (ASHA and PBT compare one metric)")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("name", self.name, "letters, digits, '-' and '_'")
        try:
            load_train_config(None, base=dict(self.train))    # the shared training config must be valid
        except ConfigError as e:
            raise ConfigError(f"train.{e.path}", e.value, e.accepted) from None
        for key, name in (("search_space", self.search_space), ("scheduler.mutations", self.scheduler.mutations)):
            if isinstance(name, str) and not Path(self.resolve(name)).is_file():
                raise ConfigError(key, name, f"an existing search-space YAML file (relative paths: to the "
                                             f"working directory, {self.base_dir} or its parent)")
        self._check_init_checkpoint_gates()
        return self

    def _check_init_checkpoint_gates(self) -> None:
        """Stage ``hrl`` from ``train.hrl.init_checkpoint``: every gate type the search can choose
        must be the checkpoint's, or each such trial would fail on loading it.

        The candidates are the search space's ``model.gate`` values, else the fixed
        ``train.model.gate``, else the registered gate kind of each architecture the search can
        choose. A checkpoint that does not exist (yet) is left to the trials, which fail on it;
        so is a search space that sets the stage or the checkpoint itself, or one that does not
        parse (the runner reports that, naming its file).
        """
        cfg = load_train_config(None, base=dict(self.train))
        given = cfg.hrl.init_checkpoint
        if cfg.stage != "hrl" or not given:
            return
        path = self.resolve(given)
        if "://" in path or not Path(path).is_file():
            return
        space = self._space()
        if space is None or "stage" in space or "hrl.init_checkpoint" in space:
            return
        from skipnet.core.checkpoint import checkpoint_gate_kind
        from skipnet.core.models import registered_gate_kind
        from skipnet.core.models.gates import parse_gate_kind
        from skipnet.errors import CheckpointError
        try:
            held = checkpoint_gate_kind(path)
        except CheckpointError as e:
            raise ConfigError("train.hrl.init_checkpoint", given, f"an SP checkpoint skipnet can read ({e})") from None
        wanted = "no gates (a plain ResNet)" if held is None else f"{held.value} gates"
        accepted = f"gate types matching hrl.init_checkpoint {given} ({wanted})"

        def name(kind):
            return "none" if kind is None else kind.value

        archs = space.get("model.arch") or [cfg.model.arch]
        if "model.gate" in space or cfg.model.gate is not None:
            key = "search_space.model.gate" if "model.gate" in space else "train.model.gate"
            kinds = set()
            for value in space.get("model.gate", [cfg.model.gate]):     # null: each architecture's own
                kinds |= {name(registered_gate_kind(a)) for a in archs} if value is None \
                    else {name(parse_gate_kind(value))}
            if kinds != {name(held)}:
                raise ConfigError(key, sorted(kinds), accepted)
            return
        kinds = {a: name(registered_gate_kind(a)) for a in archs}
        if set(kinds.values()) != {name(held)}:
            key = "search_space.model.arch" if "model.arch" in space else "train.model.arch"
            registered = "; ".join(f"{a} has {'no' if k == 'none' else k} gates" for a, k in kinds.items())
            raise ConfigError(key, archs if len(archs) > 1 else archs[0],
                              f"architectures with {wanted} to match hrl.init_checkpoint {given}, or "
                              f"model.gate set ({registered})")

    def _space(self) -> dict[str, list[Any]] | None:
        """``{dotted key: values the search can choose}`` of the space's choice, grid and constant
        entries (None when the space does not parse); imports ray and optuna, so only when needed."""
        from skipnet.tune.spaces import Choice, Constant, SearchSpace
        try:
            space = SearchSpace.from_yaml(self.resolve(self.search_space)) if isinstance(self.search_space, str) \
                else SearchSpace.from_dict(self.search_space) if self.search_space else SearchSpace({})
        except ConfigError:
            return None
        out: dict[str, list[Any]] = {}
        for key, d in space.params.items():
            out[key] = list(d.values) if isinstance(d, Choice) else [d.value] if isinstance(d, Constant) else []
        return out

    def base_train(self) -> dict[str, Any]:
        """The training config every trial starts from (the experiment's seed unless train sets one)."""
        base = dict(self.train)
        base.setdefault("seed", self.seed)
        return base

    def resolve(self, path: str | None) -> str | None:
        """A path named in the file: as given if it exists (relative to the working directory),
        else relative to the experiment file's folder or its parent (the project root)."""
        if path is None or "://" in path or Path(path).is_absolute() or Path(path).exists():
            return path
        for root in (Path(self.base_dir), Path(self.base_dir).parent):
            if (root / path).exists():
                return str(root / path)
        return path


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment file; ``overrides`` are dotted keys (``num_samples``...)."""
    from skipnet.core.config import error_source, set_dotted
    data = read_yaml(path, key="EXPERIMENT")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    data.setdefault("base_dir", str(Path(path).resolve().parent))
    try:
        return from_dict(ExperimentConfig, data).validate()
    except ConfigError as e:
        raise e.with_source(error_source(e, path, overrides)) from None
