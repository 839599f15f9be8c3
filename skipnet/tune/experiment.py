"""Experiment files (``experiments/*.yaml``): what a search trains, how it searches, where it logs.

An experiment states only what differs from the defaults below; ``load_experiment`` validates it
into a frozen ``ExperimentConfig`` (errors name the key: ``x.yaml: scheduler.type: must be one
of fifo, asha, pbt, moasha (got 'hyperband')``). Pure data: nothing here imports ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from skipnet.config import from_dict, load_train_config, read_yaml
from skipnet.errors import ConfigError

METRICS = ("val_top1", "val_computation_pct", "objective")


@dataclass(frozen=True)
class BudgetConfig:
    iterations_per_step: int = 100    # training iterations between two reports (one Tune step)
    max_steps: int = 10               # reports per trial at most (ASHA's max_t)


@dataclass(frozen=True)
class SchedulerConfig:
    type: Literal["fifo", "asha", "pbt", "moasha"] = "fifo"
    metric: Literal["val_top1", "objective"] = "val_top1"   # ASHA/PBT: the scalar they compare
    objective_weight: float = 0.2      # objective = val_top1 - weight * val_computation_pct
    grace_period: int = 1
    reduction_factor: int = 3
    perturbation_interval: int = 2     # PBT, in steps
    quantile_fraction: float = 0.25    # PBT
    mutations: str | None = None       # PBT: search-space file of the mutated keys


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


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "search"
    train: dict[str, Any] = field(default_factory=dict)      # TrainConfig keys shared by all trials
    search_space: str | dict[str, Any] = field(default_factory=dict)   # file path or inline mapping
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    num_samples: int = 8
    max_concurrent_trials: int = 2
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage_path: str = "runs/searches"     # local directory or a cloud URI (s3://, gs://)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    seed: int = 0
    max_failures: int = 2                   # Tune retries a failed trial from its last checkpoint
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
        if self.resources.cpu <= 0 or self.resources.gpu < 0:
            raise ConfigError("resources", {"cpu": self.resources.cpu, "gpu": self.resources.gpu},
                              "cpu > 0 and gpu >= 0")
        if self.scheduler.type == "pbt" and not self.scheduler.mutations:
            raise ConfigError("scheduler.mutations", None, "a search-space file of mutated keys for PBT")
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
        return self

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
    from skipnet.config import set_dotted
    data = read_yaml(path, key="EXPERIMENT")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    data.setdefault("base_dir", str(Path(path).resolve().parent))
    try:
        return from_dict(ExperimentConfig, data).validate()
    except ConfigError as e:
        raise e.with_source(str(path)) from None
