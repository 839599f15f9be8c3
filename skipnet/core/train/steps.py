"""One training step of each kind, top to bottom: forward, loss, backward, update.

* ``supervised_step``: cross-entropy; used by ``base`` (plain ResNet) and ``sp`` (gates learn
  through the straight-through or soft mask).
* ``hrl_step``: cross-entropy plus REINFORCE on the sampled gate actions. Reward per gate:
  ``alpha / num_gates`` for each skipped block; final reward: the negative per-sample
  prediction loss; returns accumulate backwards with discount ``gamma``. As in the authors'
  ``action.reinforce(rl_weight * R)``, the policy term is summed over samples and gates. The
  default recipe compares each return with the same image's greedy-path return (``greedy``
  baseline), adds a small entropy bonus, lets the prediction loss reach the gates through the
  sampled mask (straight-through: per image, what each block was worth) and adds a
  cross-entropy on random paths (``random_path_loss``); the authors use the raw returns alone.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipnet.core.models.gates import GateMode


@dataclass
class StepMetrics:
    loss: float                 # total loss that was minimised
    prediction_loss: float      # mean cross-entropy
    accuracy: float             # top-1 on the training batch, %
    executed_fraction: float    # mean fraction of gated blocks executed (1.0 for plain nets)
    reward: float = 0.0         # HRL: mean return at the first gate


def gate_returns(decision: Tensor, prediction_loss: Tensor, alpha: float, gamma: float) -> Tensor:
    """Discounted returns (B, G): ``R_j = alpha/G * (1 - a_j) + gamma * R_{j+1}``, ``R_G = -loss``."""
    num_gates = decision.shape[1]
    rewards = (1.0 - decision) * (alpha / num_gates)
    returns = torch.empty_like(rewards)
    running = -prediction_loss
    for j in range(num_gates - 1, -1, -1):
        running = rewards[:, j] + gamma * running
        returns[:, j] = running
    return returns


def reinforce_loss(log_prob: Tensor, returns: Tensor, rl_weight: float) -> Tensor:
    """Policy-gradient surrogate: ``-rl_weight * sum(R * log pi(a))`` (returns carry no gradient)."""
    return -rl_weight * (returns.detach() * log_prob).sum()


def autocast(device: torch.device, enabled: bool):
    """bf16 (or fp16) autocast on CUDA when enabled; a no-op on CPU."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _update(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def supervised_step(model: nn.Module, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer,
                    *, amp: bool = False, scaler: torch.amp.GradScaler | None = None,
                    all_blocks: bool = False) -> StepMetrics:
    """``all_blocks`` executes every block (SP gate warm-up: blocks learn before gates choose)."""
    with autocast(images.device, amp):
        num_gates = getattr(model, "num_gates", 0)
        forced = images.new_ones(images.shape[0], num_gates) if all_blocks and num_gates else None
        logits, record = model(images, decisions=forced, run_gates=forced is None)
        loss = F.cross_entropy(logits.float(), labels)
    _update(loss, optimizer, scaler)
    return StepMetrics(loss.item(), loss.item(), _accuracy(logits, labels), _executed(record.decision))


def hrl_step(model: nn.Module, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer, *,
             alpha: float, rl_weight: float, gamma: float, skip_compute: bool = False, baseline: str = "none",
             entropy_weight: float = 0.0, straight_through: bool = False, random_path_weight: float = 0.0,
             random_path_fraction: float = 1.0, amp: bool = False, scaler: torch.amp.GradScaler | None = None) -> StepMetrics:
    """``baseline`` is what each return is compared with (see ``advantages``). ``entropy_weight``
    rewards the gates' entropy (summed over samples and gates, like the policy term), so the
    policy does not saturate on a static subnetwork before it has learned whom to route.
    ``straight_through``: the gates also get the prediction loss's gradient through the sampled
    mask, so the policy forward runs every block (``skip_compute`` then applies to the other
    forwards). ``random_path_weight``: weight of ``random_path_loss``, run on the batch's first
    ``random_path_fraction`` of images."""
    with autocast(images.device, amp):
        reference = greedy_returns(model, images, labels, alpha, gamma) if baseline == "greedy" else None
        logits, record = model(images, skip_compute=skip_compute and not straight_through,
                               straight_through=straight_through)
        prediction_loss = F.cross_entropy(logits.float(), labels, reduction="none")     # (B,)
        returns = gate_returns(record.decision, prediction_loss.detach(), alpha, gamma)
        policy_loss = reinforce_loss(record.log_prob.float(), advantages(returns, baseline, reference), rl_weight)
        if entropy_weight:
            policy_loss = policy_loss - entropy_weight * bernoulli_entropy(record.prob.float()).sum()
        loss = prediction_loss.mean() + policy_loss
        if random_path_weight:
            n = max(1, round(random_path_fraction * images.shape[0]))
            loss = loss + random_path_weight * random_path_loss(model, images[:n], labels[:n], skip_compute)
    _update(loss, optimizer, scaler)
    return StepMetrics(loss.item(), prediction_loss.mean().item(), _accuracy(logits, labels),
                       _executed(record.decision), returns[:, 0].mean().item())


def random_path_loss(model: nn.Module, images: Tensor, labels: Tensor, skip_compute: bool = False) -> Tensor:
    """Mean cross-entropy of ``images`` on random paths: each image draws a keep rate uniform in
    [0, 1] and keeps each gated block with it (the gates choose nothing and learn nothing here).

    Why: trained only on the policy's paths, the blocks co-adapt to the few paths it takes, so
    that hard images gain nothing from more blocks and easy ones lose from fewer (measured:
    every block forced on fell to about 35 % top-1), and the policy has nothing to route by.
    Drawing the rate per image trains short paths as well as long ones, unlike one fixed
    stochastic-depth rate. The gates are not evaluated: nothing here reads them."""
    num_gates = model.num_gates
    keep = torch.rand(images.shape[0], 1, device=images.device)
    decisions = torch.bernoulli(keep.expand(-1, num_gates))
    logits, _ = model(images, skip_compute=skip_compute, decisions=decisions, run_gates=False)
    return F.cross_entropy(logits.float(), labels)


def advantages(returns: Tensor, baseline: str, reference: Tensor | None = None) -> Tensor:
    """What REINFORCE multiplies the log-probabilities by, per sample and gate.

    * ``none``: the return itself (the authors' estimator);
    * ``batch_mean``: minus each gate's mean return over the batch;
    * ``greedy``: minus the return of the same image on the greedy path (``reference``, the
      self-critical baseline): a per-image baseline, so an image's difficulty cancels and only
      what its sampled actions changed remains.
    """
    if baseline == "batch_mean":
        return returns - returns.mean(0, keepdim=True)
    if baseline == "greedy":
        return returns - reference
    return returns


@torch.no_grad()
def greedy_returns(model: nn.Module, images: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Returns (B, G) of the greedy policy (every gate ``prob > 0.5``) on ``images``.

    Runs as the training forward does (batch-norm on this batch's statistics: running
    statistics can be far from them early in HRL, and a baseline from another network would
    swamp the advantages), but leaves every running statistic as it was, takes no gradient and
    draws no random numbers; real skipping keeps it cheaper than the training forward."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    mode = model.mode
    try:
        for m in norms:
            m.momentum = 0.0                  # running = 1 * running + 0 * batch: unchanged
        model.mode = GateMode.HARD            # in training: prob > 0.5, no sampling
        logits, record = model(images, skip_compute=True)
    finally:
        model.mode = mode
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return gate_returns(record.decision, loss, alpha, gamma)


def bernoulli_entropy(prob: Tensor) -> Tensor:
    """Entropy of Bernoulli(prob), elementwise, in nats."""
    p = prob.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def _executed(decision: Tensor) -> float:
    return 1.0 if decision.shape[1] == 0 else decision.float().mean().item()
