"""SkipNet model family: blocks, gates, ``SkipResNet`` and the registry of named architectures."""
from skipnet.core.models import zoo  # noqa: F401  (registers the architectures)
from skipnet.core.models.gates import GateKind, GateMode, GateRecord, GateSpec
from skipnet.core.models.registry import create_model, list_models, register_model, registered_gate_kind
from skipnet.core.models.skipnet import BlockInfo, SkipResNet

__all__ = ["BlockInfo", "GateKind", "GateMode", "GateRecord", "GateSpec", "SkipResNet",
           "create_model", "list_models", "register_model", "registered_gate_kind"]
