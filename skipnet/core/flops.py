"""Exact compute accounting of SkipNets, analytic, per block, gate, stem and head.

Convention (as fvcore, ptflops and the ResNet papers): one FLOP = one multiply-accumulate of a
convolution or fully connected layer (the LSTM cell's two matrix products included). Batch
norm, ReLU, pooling, additions and the sigmoid are not counted. ``torch.utils.flop_counter``
counts 2 FLOPs per multiply-accumulate, so its totals are twice ours.

Per sample, the executed FLOPs of a SkipNet are: stem + head + every projection shortcut
(they run even when their block is skipped) + the always-run first block + every gate (each
gate is evaluated for every sample) + the gated blocks the sample executed. The computation
percentage divides that by the FLOPs of the plain ResNet of the same depth, so gate costs
count against the SkipNet. The paper's own "computation percentage" counts blocks instead:
``(executed gated blocks + 1) / (gated blocks + 1)``; ``block_count_pct`` reports it beside.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from skipnet.core.models.blocks import Bottleneck
from skipnet.core.models.gates import GateKind
from skipnet.core.models.skipnet import SkipResNet


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class BlockCosts:
    """Multiply-accumulates of each part of one network for one input size (per sample)."""

    stem: int
    head: int
    blocks: tuple[int, ...]       # residual branch of each block, in forward order
    shortcuts: tuple[int, ...]    # projection shortcut of each block (0 where identity)
    gates: tuple[int, ...]        # gate j (after block j, deciding block j + 1), controller included
    block_names: tuple[str, ...]

    @property
    def plain_total(self) -> int:
        """FLOPs of the plain ResNet of the same depth (no gates, every block)."""
        return self.stem + self.head + sum(self.blocks) + sum(self.shortcuts)

    @property
    def always(self) -> int:
        """FLOPs every sample pays: stem, head, shortcuts, first block and all gates."""
        return self.stem + self.head + sum(self.shortcuts) + self.blocks[0] + sum(self.gates)

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    def executed_flops(self, decision: Tensor) -> Tensor:
        """Per-sample executed FLOPs (B,) from a (B, G) decision matrix (G = 0 for plain nets)."""
        if decision.shape[1] == 0:
            return torch.full((decision.shape[0],), float(self.plain_total), dtype=torch.float64)
        gated = torch.tensor(self.blocks[1:], dtype=torch.float64, device=decision.device)
        return self.always + decision.to(torch.float64) @ gated

    def computation_pct(self, decision: Tensor) -> Tensor:
        """Executed FLOPs as a percentage of the plain ResNet's, per sample (B,)."""
        return 100.0 * self.executed_flops(decision) / self.plain_total

    def by_block(self) -> dict[str, int]:
        """Residual branch plus shortcut FLOPs of each block, by the block's name."""
        return {n: b + s for n, b, s in zip(self.block_names, self.blocks, self.shortcuts)}

    def by_gate(self) -> dict[str, int]:
        """FLOPs of each gate, named after the block whose output it reads."""
        return dict(zip(self.block_names[:-1], self.gates))


def block_count_pct(decision: Tensor) -> Tensor:
    """The paper's computation percentage: (executed gated blocks + 1) / (gated blocks + 1)."""
    g = decision.shape[1]
    return 100.0 * (decision.to(torch.float64).sum(1) + 1) / (g + 1)


def block_costs(model: SkipResNet, input_size: tuple[int, int] = (32, 32)) -> BlockCosts:
    """Analytic ``BlockCosts`` of ``model`` for images of ``input_size`` (H, W)."""
    h, w = input_size
    if model.stem_type == "cifar":
        stem_c = model.conv1.out_channels
        stem = 3 * stem_c * 9 * h * w
    else:
        stem_c = model.conv1.out_channels
        h, w = _out(h, 7, 2, 3), _out(w, 7, 2, 3)
        stem = 3 * stem_c * 49 * h * w
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)

    spec = model.gate_spec
    blocks, shortcuts, gates = [], [], []
    for j, info in enumerate(model.block_info):
        ho, wo = _out(h, 3, info.stride, 1), _out(w, 3, info.stride, 1)
        if model.block_type is Bottleneck:
            cost = (info.in_planes * info.planes * h * w + info.planes * info.planes * 9 * ho * wo
                    + info.planes * info.out_planes * ho * wo)
        else:
            cost = info.in_planes * info.planes * 9 * ho * wo + info.planes * info.planes * 9 * ho * wo
        blocks.append(cost)
        shortcuts.append(info.in_planes * info.out_planes * ho * wo if info.has_projection else 0)
        h, w = ho, wo
        if spec is not None and j + 1 < len(model.block_info):
            gates.append(_gate_cost(spec.kind, info.out_planes, h, w, spec.embed_dim, spec.hidden_dim))
    head = model.fc.in_features * model.fc.out_features
    return BlockCosts(stem, head, tuple(blocks), tuple(shortcuts), tuple(gates),
                      tuple(i.name for i in model.block_info))


def _gate_cost(kind: GateKind, c: int, h: int, w: int, embed: int, hidden: int) -> int:
    if kind is GateKind.FEEDFORWARD_CONV:
        h1, w1 = h // 2, w // 2                                   # max-pool 2
        h2, w2 = _out(h1, 3, 2, 1), _out(w1, 3, 2, 1)
        return c * c * 9 * h1 * w1 + c * c * 9 * h2 * w2 + c * 2
    if kind is GateKind.FEEDFORWARD_FC:
        return c * c * 9 * _out(h, 3, 2, 1) * _out(w, 3, 2, 1) + c * 2
    # recurrent: 1x1 embedding of pooled features, one LSTM step, linear to one logit
    return c * embed + 4 * hidden * (embed + hidden) + hidden
