"""``SkipResNet``: one ResNet family for plain networks and SkipNets of every gate and mode.

Layout (the authors' names, so their checkpoints map one to one): a stem (``conv1``, ``bn1``,
plus a max-pool on ImageNet), stages of blocks ``group{g}_layer{i}`` with projection
shortcuts ``group{g}_ds{i}`` where the shape changes, per-block gates ``group{g}_gate{i}``,
a shared recurrent ``control`` for recurrent gates, and ``fc``.

Gating: the first block always runs; the gate after block j decides whether block j+1 runs,
so a network of N blocks has N - 1 gates (the authors' unused gate after the last block is not
built). A skipped block passes its shortcut on (identity, or the projection of a downsampling
block, which always runs).

Two ways to execute a gated block, same result: *masked* (compute the block for every sample,
then ``mask * block + (1 - mask) * shortcut``: needed for SP's straight-through gradient) and
*selected* (``skip_compute=True``: run the block only on the samples that execute it; see
``skipnet.core.executor``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from skipnet.core.executor import run_selected
from skipnet.core.models.blocks import BasicBlock, Bottleneck, conv3x3, init_weights, projection_shortcut
from skipnet.core.models.gates import (GateKind, GateMode, GateRecord, GateSpec, RecurrentGate, decide,
                                  make_gate, parse_gate_kind, parse_gate_mode)
from skipnet.errors import ConfigError

Stem = Literal["cifar", "imagenet"]


@dataclass(frozen=True)
class BlockInfo:
    """What FLOPs accounting and the executor need to know about one residual block."""

    name: str            # "group{g}_layer{i}"
    group: int
    index: int
    in_planes: int
    planes: int          # width of the residual branch
    out_planes: int      # planes * expansion
    stride: int
    has_projection: bool
    gated: bool          # False for the first block, which always runs


def make_stages(block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                widths: Sequence[int], in_planes: int) -> list[BlockInfo]:
    """Per-block metadata of the stages: stride 2 at the first block of every stage but the first."""
    infos, flat = [], 0
    for g, (n, planes) in enumerate(zip(layers, widths), start=1):
        for i in range(n):
            stride = 2 if (g > 1 and i == 0) else 1
            out_planes = planes * block.expansion
            infos.append(BlockInfo(f"group{g}_layer{i}", g, i, in_planes, planes, out_planes, stride,
                                   stride != 1 or in_planes != out_planes, gated=flat > 0))
            in_planes, flat = out_planes, flat + 1
    return infos


class SkipResNet(nn.Module):
    """A ResNet whose blocks may be skipped per input by gates; ``gate=None`` is the plain ResNet.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(18, 18, 18)`` for CIFAR ResNet-110.
        num_classes: outputs of ``fc``.
        stem: ``"cifar"`` (3x3 conv, 16 channels) or ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool).
        widths: residual-branch width per stage.
        gate: the gate kind and sizes, or None for a plain ResNet.
        mode: ``soft``, ``hard`` (SP) or ``policy`` (HRL); see ``skipnet.core.models.gates``.
        temperature: divides the gate logits (the authors' RL temperature).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], *,
                 num_classes: int = 10, stem: Stem = "cifar", widths: Sequence[int] = (16, 32, 64),
                 gate: GateSpec | None = None, mode: GateMode | str = GateMode.HARD,
                 temperature: float = 1.0) -> None:
        super().__init__()
        # one draw from the global generator seeds the initialisation (init_weights: the same
        # seed gives the same network weights for every gate, and for the plain ResNet)
        init_generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        if len(widths) != len(layers):
            raise ConfigError("model.widths", list(widths), f"a list of {len(layers)} widths")
        if num_classes < 1:
            raise ConfigError("model.num_classes", num_classes, "a positive integer")
        self.block_type, self.layers, self.widths = block, tuple(layers), tuple(widths)
        self.stem_type, self.num_classes = stem, num_classes
        self.gate_spec = gate if gate is None else GateSpec(parse_gate_kind(gate.kind), gate.embed_dim,
                                                           gate.hidden_dim, gate.embed_norm)
        self.mode = parse_gate_mode(mode)
        self.temperature = temperature
        self.gate_threshold = 0.5        # eval decisions: execute when prob > gate_threshold (model.gate_threshold)

        stem_width = widths[0] if stem == "cifar" else 64
        if stem == "cifar":
            self.conv1 = conv3x3(3, stem_width)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        self.block_info = make_stages(block, layers, widths, stem_width)
        for j, info in enumerate(self.block_info):
            self.add_module(info.name, block(info.in_planes, info.planes, info.stride))
            if info.has_projection:
                self.add_module(f"group{info.group}_ds{info.index}",
                                projection_shortcut(info.in_planes, info.out_planes, info.stride))
            if self.gate_spec is not None and j + 1 < len(self.block_info):
                self.add_module(f"group{info.group}_gate{info.index}",
                                make_gate(self.gate_spec, info.out_planes))
        # (block, shortcut, gate) per block, resolved once: the forward loop is on the hot path
        self._plan = [(self._block(i), self._shortcut(i), self._gate(i) if self.gate_spec is not None
                       and j + 1 < len(self.block_info) else None) for j, i in enumerate(self.block_info)]
        if self.gate_spec is not None and self.gate_spec.kind is GateKind.RECURRENT:
            self.control = RecurrentGate(self.gate_spec.embed_dim, self.gate_spec.hidden_dim)
        else:
            self.control = None
        self.fc = nn.Linear(self.block_info[-1].out_planes, num_classes)
        gates = [g for _, _, g in self._plan if g is not None] + ([self.control] if self.control is not None else [])
        init_weights(self, gates, init_generator)

    # -- structure ------------------------------------------------------------------------
    @property
    def num_gates(self) -> int:
        return 0 if self.gate_spec is None else len(self.block_info) - 1

    def _block(self, info: BlockInfo) -> nn.Module:
        return getattr(self, info.name)

    def _shortcut(self, info: BlockInfo) -> nn.Module | None:
        return getattr(self, f"group{info.group}_ds{info.index}") if info.has_projection else None

    def _gate(self, info: BlockInfo) -> nn.Module:
        return getattr(self, f"group{info.group}_gate{info.index}")

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, *, skip_compute: bool = False, decisions: Tensor | None = None,
                straight_through: bool = False, run_gates: bool = True) -> tuple[Tensor, GateRecord]:
        """Logits (B, num_classes) and the per-sample ``GateRecord``.

        Args:
            x: images (B, 3, H, W).
            skip_compute: run each gated block only on the samples that execute it (exact in
                eval; in training only where the mask carries no gradient: ``policy`` mode
                without ``straight_through``, forced ``decisions``, or no gradients at all).
            decisions: optional (B, G) 0/1 tensor that overrides the gates' decisions.
            straight_through: in ``policy`` training, the sampled mask also passes the gradient
                of the gate's probability.
            run_gates: False (only with ``decisions``) leaves the gates unevaluated, for passes
                that need no gate output (SP's warm-up, HRL's random paths); the record's
                ``prob`` is then the forced decisions.
        """
        if not run_gates and decisions is None:
            raise ValueError("run_gates=False needs forced decisions")
        mask_has_gradient = self.mode is not GateMode.POLICY or straight_through
        if skip_compute and self.training and mask_has_gradient and decisions is None and torch.is_grad_enabled():
            raise ConfigError("train.skip_compute", True, "false unless the gate mode is policy without "
                              "straight_through (a gradient through the mask needs every block)")
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem_type == "imagenet":
            x = self.maxpool(x)

        gated = self.gate_spec is not None
        state, mask, decision = None, None, None
        decisions_out, probs, log_probs = [], [], []
        last = len(self.block_info) - 1
        for j, (block, shortcut_module, gate) in enumerate(self._plan):
            shortcut = x if shortcut_module is None else shortcut_module(x)
            if mask is None:                         # plain network, or the first block
                x = block(x, shortcut)
            elif skip_compute:
                x = run_selected(block, x, shortcut, decision)
            else:
                m = mask.view(-1, 1, 1, 1)
                x = m * block(x, shortcut) + (1 - m) * shortcut
            if gated and j < last and not run_gates:
                mask = decision = decisions[:, j].to(x.dtype)
                decisions_out.append(decision)
                probs.append(decision)
            elif gated and j < last:
                gate_out = gate(x)
                if self.control is not None:
                    gate_out, state = self.control(gate_out, state)
                forced = None if decisions is None else decisions[:, j]
                mask, decision, prob, log_prob = decide(gate_out, self.mode, self.training,
                                                        self.temperature, forced, self.gate_threshold,
                                                        straight_through)
                decisions_out.append(decision)
                probs.append(prob)
                if log_prob is not None:
                    log_probs.append(log_prob)

        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        logits = self.fc(x)
        return logits, self._record(decisions_out, probs, log_probs, logits)

    @staticmethod
    def _record(decisions: list[Tensor], probs: list[Tensor], log_probs: list[Tensor],
                logits: Tensor) -> GateRecord:
        if not decisions:
            empty = logits.new_zeros(logits.shape[0], 0)
            return GateRecord(empty, empty, None)
        return GateRecord(torch.stack(decisions, 1), torch.stack(probs, 1),
                          torch.stack(log_probs, 1) if log_probs else None)

    def extra_repr(self) -> str:
        gate = "none" if self.gate_spec is None else self.gate_spec.kind.value
        return f"layers={list(self.layers)}, gate={gate}, mode={self.mode.value}"
