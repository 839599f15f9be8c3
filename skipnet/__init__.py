"""SkipNet Tune: train, evaluate and search SkipNet models (Wang et al., ECCV 2018).

The core (``skipnet.core``: models, gates, FLOPs, executor, checkpoints, data, training) imports
no ray, mlflow or optuna; ``skipnet.fronts``, ``skipnet.tracking``, ``skipnet.tune`` and
``skipnet.cluster`` sit on top of it (the README's "How the code is laid out").

The public names below are imported on first use (PEP 562 ``__getattr__``), so that
``import skipnet`` and the command line's argument parsing cost no torch import: commands that
never touch a tensor (``--help``, ``status``, ``pareto``) answer at once.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from skipnet.core import threads as _threads
from skipnet.version import __version__
_threads.prepare_openmp()       # before anything imports torch: OpenMP threads sleep, not spin (skipnet/core/threads.py)

_PUBLIC = {
    "create_model": "skipnet.core.models", "list_models": "skipnet.core.models",
    "GateMode": "skipnet.core.models", "GateRecord": "skipnet.core.models", "GateSpec": "skipnet.core.models",
    "SkipResNet": "skipnet.core.models",
    "load_checkpoint": "skipnet.core.checkpoint", "save_checkpoint": "skipnet.core.checkpoint",
    "CheckpointInfo": "skipnet.core.checkpoint", "checkpoint_gate_kind": "skipnet.core.checkpoint",
    "execute": "skipnet.core.executor", "block_costs": "skipnet.core.flops", "block_count_pct": "skipnet.core.flops",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:       # for type checkers and IDEs: the same names, imported eagerly
    from skipnet.core.checkpoint import CheckpointInfo, checkpoint_gate_kind, load_checkpoint, save_checkpoint
    from skipnet.core.executor import execute
    from skipnet.core.flops import block_costs, block_count_pct
    from skipnet.core.models import GateMode, GateRecord, GateSpec, SkipResNet, create_model, list_models


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'skipnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
