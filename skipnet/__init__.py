"""SkipNet Tune: train, evaluate and search SkipNet models (Wang et al., ECCV 2018).

The core (models, gates, FLOPs, executor, checkpoints, data, training) imports no ray, mlflow
or optuna; ``skipnet.tune``, ``skipnet.tracking`` and ``skipnet.cluster`` sit on top of it.

The public names below are imported on first use (PEP 562 ``__getattr__``), so that
``import skipnet`` and the command line's argument parsing cost no torch import: commands that
never touch a tensor (``--help``, ``status``, ``pareto``) answer at once.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from skipnet import threads as _threads
_threads.prepare_openmp()       # before anything imports torch: OpenMP threads sleep, not spin (skipnet/threads.py)

_PUBLIC = {
    "create_model": "skipnet.models", "list_models": "skipnet.models", "GateMode": "skipnet.models",
    "GateRecord": "skipnet.models", "GateSpec": "skipnet.models", "SkipResNet": "skipnet.models",
    "load_checkpoint": "skipnet.checkpoint", "save_checkpoint": "skipnet.checkpoint",
    "CheckpointInfo": "skipnet.checkpoint", "checkpoint_gate_kind": "skipnet.checkpoint",
    "execute": "skipnet.executor", "block_costs": "skipnet.flops", "block_count_pct": "skipnet.flops",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:       # for type checkers and IDEs: the same names, imported eagerly
    from skipnet.checkpoint import CheckpointInfo, checkpoint_gate_kind, load_checkpoint, save_checkpoint
    from skipnet.executor import execute
    from skipnet.flops import block_costs, block_count_pct
    from skipnet.models import GateMode, GateRecord, GateSpec, SkipResNet, create_model, list_models


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'skipnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
