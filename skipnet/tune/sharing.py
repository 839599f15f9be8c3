"""Shared supervised pre-training: a pipeline search trains each distinct SP configuration once.

A pipeline trial's SP depends on every training setting but ``hrl.*`` and ``output_dir``; only
its HRL depends on ``hrl.*``. So a pipeline search whose searched non-HRL keys are all discrete
(``choice``, ``grid``) runs in two phases:

1. **SP phase**: one Tune trial per distinct SP configuration (the product of those keys'
   values), trained to the end of SP in ``<search>/sp`` of the search's storage;
2. **HRL phase**: the searched trials. Each starts from the end-of-SP training state of its SP
   configuration: the very state (weights, RNG, stage position) an unshared pipeline trial has
   at that point, so the trial continues exactly as if it had trained SP itself, and schedulers,
   searchers, exports and ``skipnet train --config`` of an export see ordinary pipeline trials.

A continuously searched SP key (``sp.lr: loguniform``) means no two trials share an SP, so such a
search, or one with ``share_sp: false``, runs as before: every trial trains its own SP.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

from skipnet.core.config import TrainConfig, load_train_config, set_dotted, to_dict
from skipnet.tune.experiment import ExperimentConfig
from skipnet.tune.spaces import Choice, Constant, SearchSpace

SP_DIR = "sp"                          # the SP phase's Tune experiment, inside the search directory
NOT_SP = ("hrl", "output_dir")        # settings that do not change what SP trains


def sp_key(cfg: TrainConfig | dict[str, Any]) -> str:
    """A short content hash of everything that influences a configuration's SP."""
    data = to_dict(cfg) if isinstance(cfg, TrainConfig) else dict(cfg)
    relevant = {k: v for k, v in data.items() if k not in NOT_SP}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SPPlan:
    """The SP phase of a search: the values of each searched non-HRL key; every combination is
    one distinct SP configuration."""

    choices: dict[str, list[Any]]       # dotted key -> the values the search can give it
    steps: int                          # Tune reports of one SP trial
    hrl_steps: int                      # Tune reports of one HRL trial at most

    @property
    def variants(self) -> list[dict[str, Any]]:
        """Each distinct SP configuration as ``{dotted key: value}``."""
        return [dict(zip(self.choices, combo)) for combo in itertools.product(*self.choices.values())]

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space of the SP phase: a grid over every combination."""
        from ray import tune
        space: dict[str, Any] = {}
        for key, values in self.choices.items():
            set_dotted(space, key, tune.grid_search(values))
        return space


def plan_sharing(exp: ExperimentConfig, space: SearchSpace) -> tuple[SPPlan | None, str]:
    """The SP phase of ``exp``, or None with the reason it trains SP in every trial."""
    base = exp.base_train()
    if base.get("stage", "pipeline") != "pipeline":
        return None, f"stage {base.get('stage')}: no SP stage in the trials"
    if not exp.share_sp:
        return None, "share_sp is false"
    choices: dict[str, list[Any]] = {}
    for key, dist in space.params.items():
        if key.split(".")[0] in NOT_SP:
            continue
        if isinstance(dist, Constant):
            choices[key] = [dist.value]
        elif isinstance(dist, Choice):                 # choice and grid
            choices[key] = list(dist.values)
        else:
            return None, f"{key} is searched as {dist.kind}: every trial trains its own SP"
    cfg = load_train_config(None, base=dict(base))
    ips = exp.budget.iterations_per_step
    hrl_steps = min(exp.budget.max_steps, max(1, math.ceil(cfg.hrl.iterations / ips)))
    return SPPlan(choices, steps=max(1, math.ceil(cfg.sp.iterations / ips)), hrl_steps=hrl_steps), ""


def read_sp_state(uri: str) -> dict[str, Any]:
    """The end-of-SP engine state in the checkpoint at ``uri`` (a path or a storage URI)."""
    from ray import tune

    from skipnet.core.checkpoint import TUNE_CHECKPOINT_FILE, read_checkpoint
    with tune.Checkpoint(uri).as_directory() as directory:
        return read_checkpoint(f"{directory}/{TUNE_CHECKPOINT_FILE}")
