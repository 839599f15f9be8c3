"""SkipNet Tune: train, evaluate and search SkipNet models (Wang et al., ECCV 2018).

The core (models, gates, FLOPs, executor, checkpoints, data, training) imports no ray, mlflow
or optuna; ``skipnet.tune``, ``skipnet.tracking`` and ``skipnet.cluster`` sit on top of it.
"""
__version__ = "0.1.0"

from skipnet.checkpoint import CheckpointInfo, checkpoint_gate_kind, load_checkpoint, save_checkpoint
from skipnet.executor import execute
from skipnet.flops import block_costs, block_count_pct
from skipnet.models import GateMode, GateRecord, GateSpec, SkipResNet, create_model, list_models

__all__ = ["__version__", "create_model", "list_models", "load_checkpoint", "save_checkpoint",
           "CheckpointInfo", "checkpoint_gate_kind", "execute", "block_costs", "block_count_pct",
           "GateMode", "GateRecord", "GateSpec", "SkipResNet"]
