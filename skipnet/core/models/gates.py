"""Gates: small modules that decide, per input, whether the next residual block runs.

Every gate reduces a block's output to one *execute logit* per sample; ``decide`` turns the
logits into the mask the network applies, according to the gate mode:

* ``soft``   (SP, soft variant): the mask is the probability in training, ``prob > t`` in eval;
* ``hard``   (SP): the mask is ``prob > 0.5`` in the forward pass with the gradient of ``prob``
  (straight-through estimator);
* ``policy`` (HRL): the mask is a Bernoulli(prob) sample in training (REINFORCE uses the
  exposed log-probability; with ``straight_through`` the mask also carries the gradient of
  ``prob``, as in ``hard``), ``prob > t`` in eval.

In eval ``t`` is the model's ``gate_threshold`` (``model.gate_threshold``, default 0.5): one
trained model gives a whole accuracy/computation curve, lower thresholds executing more.

Gate kinds (parameter names follow the authors' modules so their checkpoints load):

* ``feedforward_conv`` (FFGate-I): max-pool 2, 3x3 conv+BN+ReLU, 3x3 stride-2 conv+BN+ReLU,
  global average pool, 1x1 conv to 2 logits.
* ``feedforward_fc`` (FFGate-II): 3x3 stride-2 conv+BN+ReLU, global average pool, 1x1 conv
  (a fully connected layer on pooled features) to 2 logits.
* ``recurrent``: per block a global average pool and 1x1 conv embedding (``group{g}_gate{i}``);
  one LSTM shared by all blocks (``control``) carries its state across the blocks of one
  forward pass, then a linear layer gives the logit.

The two-logit feedforward heads are reduced to ``logit_execute - logit_skip``, so
``sigmoid`` of it equals the authors' ``softmax[:, 1]``. Gates keep no state on ``self``:
the recurrent state is passed in and returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipnet.core.models.blocks import conv3x3
from skipnet.errors import ConfigError


class GateMode(str, Enum):
    """How a gate's probability becomes the mask applied to a block (see module docstring)."""

    SOFT = "soft"
    HARD = "hard"
    POLICY = "policy"


class GateKind(str, Enum):
    FEEDFORWARD_CONV = "feedforward_conv"
    FEEDFORWARD_FC = "feedforward_fc"
    RECURRENT = "recurrent"


# Names users and the authors' code use for the same gates.
_GATE_ALIASES = {
    "feedforward": GateKind.FEEDFORWARD_CONV, "ffgate1": GateKind.FEEDFORWARD_CONV,
    "ffgate2": GateKind.FEEDFORWARD_FC, "rnn": GateKind.RECURRENT, "lstm": GateKind.RECURRENT,
}


def parse_gate_kind(value: str | GateKind) -> GateKind:
    """``GateKind`` from its name or an alias (``feedforward``, ``ffgate1``, ``ffgate2``, ``rnn``)."""
    if isinstance(value, GateKind):
        return value
    key = str(value).lower()
    if key in _GATE_ALIASES:
        return _GATE_ALIASES[key]
    try:
        return GateKind(key)
    except ValueError:
        accepted = ", ".join([k.value for k in GateKind] + sorted(_GATE_ALIASES))
        raise ConfigError("model.gate", value, f"one of {accepted}") from None


def parse_gate_mode(value: str | GateMode) -> GateMode:
    try:
        return GateMode(value.value if isinstance(value, GateMode) else str(value).lower())
    except ValueError:
        raise ConfigError("model.mode", value, "one of soft, hard, policy") from None


@dataclass(frozen=True)
class GateSpec:
    """Which gate a SkipNet uses, and its sizes (the authors use 10 for both).

    ``embed_norm`` batch-normalizes the recurrent gate's per-block embedding (``model.gate_norm``;
    see ``RecurrentGateEmbedding``); the authors' gate has none (``recipe: authors``)."""

    kind: GateKind = GateKind.RECURRENT
    embed_dim: int = 10
    hidden_dim: int = 10
    embed_norm: bool = True


@dataclass
class GateRecord:
    """Per-sample gate outcome of one forward pass; G = number of gated blocks.

    ``decision[:, j]`` is 1 where gated block j ran (float, shape (B, G)); ``prob[:, j]`` the
    gate's probability of running it; ``log_prob[:, j]`` the log-probability of the action taken
    (policy mode only, else None). A plain ResNet returns a record with G = 0.
    """

    decision: Tensor
    prob: Tensor
    log_prob: Tensor | None = None

    @property
    def num_gates(self) -> int:
        return self.decision.shape[1]


def _global_pool_logits(head: nn.Conv2d, x: Tensor) -> Tensor:
    """Global average pool, 1x1 conv to (skip, execute) logits, difference: (B, C, H, W) -> (B,)."""
    logits = head(F.adaptive_avg_pool2d(x, 1)).flatten(1)  # (B, 2)
    return logits[:, 1] - logits[:, 0]


class FeedforwardConvGate(nn.Module):
    """FFGate-I: (B, C, H, W) -> execute logit (B,)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(2)
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride=2)
        self.bn2 = nn.BatchNorm2d(channels)
        self.linear_layer = nn.Conv2d(channels, 2, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(x)                    # (B, C, H/2, W/2)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))    # (B, C, H/4, W/4)
        return _global_pool_logits(self.linear_layer, x)


class FeedforwardFCGate(nn.Module):
    """FFGate-II: (B, C, H, W) -> execute logit (B,)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, stride=2)
        self.bn1 = nn.BatchNorm2d(channels)
        self.linear_layer = nn.Conv2d(channels, 2, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))    # (B, C, H/2, W/2)
        return _global_pool_logits(self.linear_layer, x)


class RecurrentGateEmbedding(nn.Sequential):
    """Per-block input of the recurrent gate: (B, C, H, W) -> (B, embed_dim).

    A Sequential so the parameter names are the authors' (``group{g}_gate{i}.1.weight``). With
    ``norm`` a ``BatchNorm1d`` (``group{g}_gate{i}.2``) standardizes the embedding over images.
    Why: channel means differ far less between images than their common level, so without it
    the LSTM sees nearly the same input for every image, its execute probability is almost a
    constant (measured: a spread of 0.01 over images after SP), and HRL can only move that
    constant, all blocks at once. The feedforward gates normalize their features the same way.
    A checkpoint without the norm (the authors') loads with it set to exactly the identity.
    """

    def __init__(self, channels: int, embed_dim: int, norm: bool = True) -> None:
        layers = [nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, embed_dim, kernel_size=1)]
        super().__init__(*layers, *([nn.BatchNorm1d(embed_dim)] if norm else []))

    def forward(self, x: Tensor) -> Tensor:
        conv = self[1]       # pooled 1x1 conv == linear layer on the channel means (cheaper)
        embedding = F.linear(x.mean((2, 3)), conv.weight.flatten(1), conv.bias)
        return self[2](embedding) if len(self) > 2 else embedding


class RecurrentGate(nn.Module):
    """The LSTM shared by all blocks: (embedding (B, E), state) -> (execute logit (B,), state).

    Kept as ``nn.LSTM`` for the authors' parameter names; evaluated one step at a time with
    ``torch.lstm_cell`` on the same weights (several times faster than an ``nn.LSTM`` call per
    block). ``state`` is None at the first block of a forward pass.
    """

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.rnn = nn.LSTM(embed_dim, hidden_dim)
        self.proj = nn.Linear(hidden_dim, 1)

    def forward(self, embedding: Tensor, state: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            zeros = embedding.new_zeros(embedding.shape[0], self.hidden_dim)
            state = (zeros, zeros)
        rnn = self.rnn
        h, c = torch.lstm_cell(embedding, state, rnn.weight_ih_l0, rnn.weight_hh_l0,
                               rnn.bias_ih_l0, rnn.bias_hh_l0)
        return self.proj(h).squeeze(1), (h, c)


def make_gate(spec: GateSpec, channels: int) -> nn.Module:
    """The per-block gate module (``group{g}_gate{i}``) for a block with ``channels`` outputs."""
    if spec.kind is GateKind.FEEDFORWARD_CONV:
        return FeedforwardConvGate(channels)
    if spec.kind is GateKind.FEEDFORWARD_FC:
        return FeedforwardFCGate(channels)
    return RecurrentGateEmbedding(channels, spec.embed_dim, spec.embed_norm)


def start_executing(model: nn.Module, prob: float, weight_scale: float = 0.1) -> None:
    """Make every gate of ``model`` start by executing its block with about ``prob`` for every
    input (``sp.gate_init_prob``): each gate's output layer keeps its weights' directions at
    ``weight_scale`` of their size, and its execute bias becomes ``logit(prob)``.

    Why: at the authors' initialisation the gates' execute logits spread over several units, so
    the first hard SP decision switches off a third to a half of the blocks at once, and short
    SP runs fall below the plain ResNet wherever the blocks were still learning then (measured
    on the synthetic set, difficulty 0.4-1: feedforward SkipNet-20 69.8 % against 81.2 % for the
    plain ResNet from the same weights; README "Training recipes"). Started this way the gates
    skip only where the straight-through gradient says a block hurts. Draws no random numbers."""
    bias = float(torch.logit(torch.tensor(prob)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FeedforwardConvGate, FeedforwardFCGate)):
                out = m.linear_layer                         # (skip, execute) logits
                out.weight.mul_(weight_scale)
                out.bias.copy_(torch.tensor([0.0, bias]))
            elif isinstance(m, RecurrentGate):
                m.proj.weight.mul_(weight_scale)
                m.proj.bias.fill_(bias)


def decide(logit: Tensor, mode: GateMode, training: bool, temperature: float = 1.0,
           forced: Tensor | None = None, threshold: float = 0.5, straight_through: bool = False
           ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Mask, decision, probability and (policy mode) log-probability from execute logits (B,).

    ``forced`` (B,) of 0/1 replaces the gate's decision (SP's gate warm-up, benchmarks, tests); the
    gate is still evaluated so its cost and probability are real (it gets no gradient). ``threshold``: a block executes in eval when
    ``prob > threshold`` (``model.gate_threshold``; lower executes more). Training decisions
    ignore it: SP's hard forward stays ``prob > 0.5`` and HRL samples. ``straight_through``: a
    sampled policy mask also carries the gradient of ``prob`` (``hrl.straight_through``).
    """
    logit = logit / temperature if temperature != 1.0 else logit
    prob = torch.sigmoid(logit)
    hard = (prob > (0.5 if training else threshold)).to(prob.dtype)
    log_prob = None
    if forced is not None:
        decision = forced.to(prob.dtype)
        mask = decision
    elif mode is GateMode.POLICY:
        decision = torch.bernoulli(prob.detach()) if training else hard
        mask = decision + (prob - prob.detach()) if (training and straight_through) else decision
        # log Bernoulli(prob)(decision), stable in the logit
        log_prob = torch.where(decision > 0, F.logsigmoid(logit), F.logsigmoid(-logit))
    elif mode is GateMode.SOFT and training:
        decision, mask = hard, prob
    else:  # HARD, or SOFT in eval
        decision = hard
        mask = hard + (prob - prob.detach()) if (training and mode is GateMode.HARD) else hard
    return mask, decision, prob, log_prob
