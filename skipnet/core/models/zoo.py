"""The registered architectures: the authors' config names plus readable names of our own.

Every name is a few defaults over one of two builders, ``cifar_skipnet`` and
``imagenet_skipnet``, which both return a ``SkipResNet``. Authors' names:
``cifar{10,100}_resnet_{38,74,110,152}`` (plain), ``cifar{10,100}_feedforward_{38,74,110}`` (SP,
FFGate-I, FFGate-II at 110), ``cifar{10,100}_rnn_gate_{38,74,110,152}`` (SP, recurrent),
``cifar{10,100}_feedforward_rl_{38,74,110}`` and ``cifar{10,100}_rnn_gate_rl_{38,74,110}`` (HRL),
``resnet{18,34,50,74,101,152}`` and ``imagenet_rnn_gate[_rl]_{18,34,50,101,152}`` (ImageNet).
Ours: ``{cifar10,cifar100}_skipnet_{depth}_{gate}`` (depth 20 too, with ``cifar{10,100}_resnet_20``) and ``imagenet_skipnet_{depth}_recurrent``
(SP ``hard`` mode by default; pass ``mode="policy"`` for HRL), ``imagenet_resnet_{depth}``.
"""
from __future__ import annotations

from functools import partial

from skipnet.core.models.blocks import BasicBlock, Bottleneck
from skipnet.core.models.gates import GateKind, GateMode, GateSpec, parse_gate_kind
from skipnet.core.models.registry import register_alias, register_model
from skipnet.core.models.skipnet import SkipResNet
from skipnet.errors import ConfigError

CIFAR_DEPTHS = {20: 3, 38: 6, 74: 12, 110: 18, 152: 25}     # depth = 6n + 2
AUTHORS_CIFAR_DEPTHS = (38, 74, 110, 152)                 # 20 is ours: a laptop-sized quickstart
IMAGENET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                   50: (Bottleneck, (3, 4, 6, 3)), 74: (Bottleneck, (3, 4, 14, 3)),
                   101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


def _gate_spec(gate: str | GateKind | GateSpec | None, embed_dim: int, hidden_dim: int,
               gate_norm: bool) -> GateSpec | None:
    if gate is None or gate == "none":
        return None
    if isinstance(gate, GateSpec):
        return gate
    return GateSpec(parse_gate_kind(gate), embed_dim, hidden_dim, gate_norm)


def cifar_skipnet(depth: int, *, num_classes: int = 10, gate: str | GateSpec | None = None,
                  mode: GateMode | str = GateMode.HARD, embed_dim: int = 10, hidden_dim: int = 10,
                  temperature: float = 1.0, gate_norm: bool = True) -> SkipResNet:
    """CIFAR ResNet of ``depth`` in {20, 38, 74, 110, 152} (basic blocks, 16/32/64 channels)."""
    if depth not in CIFAR_DEPTHS:
        raise ConfigError("model.depth", depth, f"one of {sorted(CIFAR_DEPTHS)} for CIFAR ResNets")
    n = CIFAR_DEPTHS[depth]
    return SkipResNet(BasicBlock, (n, n, n), num_classes=num_classes, stem="cifar", widths=(16, 32, 64),
                      gate=_gate_spec(gate, embed_dim, hidden_dim, gate_norm), mode=mode, temperature=temperature)


def imagenet_skipnet(depth: int, *, num_classes: int = 1000, gate: str | GateSpec | None = None,
                     mode: GateMode | str = GateMode.HARD, embed_dim: int = 10, hidden_dim: int = 10,
                     temperature: float = 1.0, gate_norm: bool = True) -> SkipResNet:
    """ImageNet ResNet of ``depth`` in {18, 34, 50, 74, 101, 152} (64..512 widths)."""
    if depth not in IMAGENET_DEPTHS:
        raise ConfigError("model.depth", depth, f"one of {sorted(IMAGENET_DEPTHS)} for ImageNet ResNets")
    block, layers = IMAGENET_DEPTHS[depth]
    return SkipResNet(block, layers, num_classes=num_classes, stem="imagenet", widths=(64, 128, 256, 512),
                      gate=_gate_spec(gate, embed_dim, hidden_dim, gate_norm), mode=mode, temperature=temperature)


def _register(name: str, builder, **defaults) -> None:
    def build(**overrides):
        return builder(**dict(defaults, **overrides))
    build.__doc__ = f"{name}: {builder.__name__}({', '.join(f'{k}={v!r}' for k, v in defaults.items())})"
    build.defaults = dict(defaults)      # read by registry.registered_gate_kind without building
    register_model(build, name=name)


_REC, _FF1, _FF2 = GateKind.RECURRENT.value, GateKind.FEEDFORWARD_CONV.value, GateKind.FEEDFORWARD_FC.value

for _classes in (10, 100):
    _cifar = partial(_register, builder=cifar_skipnet)
    for _depth in CIFAR_DEPTHS:
        _args = dict(depth=_depth, num_classes=_classes)
        _cifar(f"cifar{_classes}_resnet_{_depth}", **_args)
        # readable names of our own
        for _gate in (_REC, _FF1, _FF2):
            _cifar(f"cifar{_classes}_skipnet_{_depth}_{_gate}", gate=_gate, mode="hard", **_args)
        if _depth not in AUTHORS_CIFAR_DEPTHS:
            continue
        # the authors' names
        _cifar(f"cifar{_classes}_rnn_gate_{_depth}", gate=_REC, mode="hard", **_args)
        if _depth != 152:
            _ff = _FF2 if _depth == 110 else _FF1   # the authors use FFGate-II at depth 110
            _cifar(f"cifar{_classes}_feedforward_{_depth}", gate=_ff, mode="hard", **_args)
            _cifar(f"cifar{_classes}_feedforward_rl_{_depth}", gate=_ff, mode="policy", **_args)
            _cifar(f"cifar{_classes}_rnn_gate_rl_{_depth}", gate=_REC, mode="policy", **_args)

for _depth in IMAGENET_DEPTHS:
    _register(f"imagenet_resnet_{_depth}", imagenet_skipnet, depth=_depth)
    register_alias(f"resnet{_depth}", f"imagenet_resnet_{_depth}")
    _register(f"imagenet_skipnet_{_depth}_recurrent", imagenet_skipnet, depth=_depth, gate=_REC, mode="hard")
    if _depth != 74:
        _register(f"imagenet_rnn_gate_{_depth}", imagenet_skipnet, depth=_depth, gate=_REC, mode="hard")
        _register(f"imagenet_rnn_gate_rl_{_depth}", imagenet_skipnet, depth=_depth, gate=_REC, mode="policy")

# the authors' misspelled config names
register_alias("cifar10_feedfoward_rl_38", "cifar10_feedforward_rl_38")
register_alias("cifar100_feeforward_38", "cifar100_feedforward_38")
register_alias("cifar100_feedford_rl_38", "cifar100_feedforward_rl_38")
