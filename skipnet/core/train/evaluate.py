"""Evaluation of a model on one split: accuracy, loss and the compute it actually executed.

Gated models run with real skipping (``skip_compute=True``), which gives the same outputs as
masked execution in eval mode and costs only what is executed.

Evaluation runs on forked RNG states: a DataLoader draws its base seed from the global torch
generator, which HRL also samples gate actions from, so an evaluation that moved it would make
the trained model depend on how often and on what a run evaluates.

Routing metrics (gated models) tell a model that routes each input from a statically pruned one:
percentiles of the per-image computation, the number of distinct execution paths, and the
Spearman correlation of per-image executed FLOPs with difficulty (synthetic data's own, else the
loss of the same model with every block executed). ``threshold_curve`` evaluates one model at
several gate thresholds: every trained model is a curve, not a point.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from skipnet.core.data import difficulty, eval_batches
from skipnet.core.executor import at_threshold
from skipnet.core.flops import BlockCosts, block_count_pct
from skipnet.core.train.steps import autocast


SYNTHETIC_DIFFICULTY = "synthetic difficulty"
FULL_EXECUTION_LOSS = "loss with every block executed"
#: What a threshold curve reports per threshold (as ``threshold_curve/<t>/val_<name>``).
CURVE_METRICS = ("top1", "computation_pct", "block_count_pct", "distinct_paths", "difficulty_spearman")
CURVE_PREFIX = "threshold_curve/"


def evaluate(model: nn.Module, dataset: Dataset, costs: BlockCosts, *, split: str = "val",
             batch_size: int = 256, device: torch.device | str = "cpu", amp: bool = False,
             channels_last: bool = False, max_batches: int | None = None, top5: bool = False,
             num_workers: int = 0, per_sample: bool = False,
             reference_loss: Tensor | None = None) -> dict[str, Any]:
    """Metrics prefixed by ``split``: top-1 (and top-5), loss, computation %, block-count %,
    executed GFLOPs per image; for gated models also the skip ratio of every gate and the
    routing metrics (module docstring): ``computation_p10/p50/p90``, ``distinct_paths``,
    ``difficulty_spearman`` and ``difficulty_source`` (a string). With ``per_sample`` also the
    executed blocks, correctness and (synthetic data) difficulty of each sample, in order.

    ``reference_loss``: the per-image loss with every block executed, when already known (a
    threshold sweep computes it once); else it is computed here if the data set has no
    difficulty. Every RNG is as it was afterwards."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _evaluate(model, dataset, costs, split=split, batch_size=batch_size, device=device, amp=amp,
                         channels_last=channels_last, max_batches=max_batches, top5=top5,
                         num_workers=num_workers, per_sample=per_sample, reference_loss=reference_loss)


@torch.no_grad()
def _evaluate(model: nn.Module, dataset: Dataset, costs: BlockCosts, *, split: str, batch_size: int,
              device: torch.device, amp: bool, channels_last: bool, max_batches: int | None, top5: bool,
              num_workers: int, per_sample: bool, reference_loss: Tensor | None) -> dict[str, Any]:
    model.eval()
    gated = getattr(model, "gate_spec", None) is not None
    diff = difficulty(dataset)
    need_proxy = gated and diff is None and reference_loss is None
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    decisions, corrects, full_losses = [], [], []
    batches = eval_batches(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    for b, (images, labels) in enumerate(batches):
        if max_batches is not None and b >= max_batches:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits, record = model(images, skip_compute=gated)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        if need_proxy:
            full_losses.append(_full_execution_loss(model, images, labels, record.num_gates, device, amp))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = top[:, 0] == labels
        correct1 += hit1.sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        n += labels.shape[0]
        decisions.append(record.decision.cpu())
        corrects.append(hit1.cpu())
    decision = torch.cat(decisions)
    out: dict[str, Any] = {
        f"{split}_top1": 100.0 * correct1 / n, f"{split}_loss": loss_sum / n,
        f"{split}_computation_pct": costs.computation_pct(decision).mean().item(),
        f"{split}_block_count_pct": block_count_pct(decision).mean().item(),
        f"{split}_executed_gflops": costs.executed_flops(decision).mean().item() / 1e9,
    }
    if top5:
        out[f"{split}_top5"] = 100.0 * correct5 / n
    if gated:
        out[f"{split}_skip_ratio"] = [round(v, 6) for v in (1.0 - decision.mean(0)).tolist()]
        if diff is not None:
            against, source = diff[:n], SYNTHETIC_DIFFICULTY
        else:
            against = reference_loss[:n] if reference_loss is not None else torch.cat(full_losses)
            source = FULL_EXECUTION_LOSS
        out.update(routing_metrics(decision, costs, against, split=split))
        out[f"{split}_difficulty_source"] = source
    if per_sample:
        out.update(executed_blocks=decision.sum(1), correct=torch.cat(corrects),
                   difficulty=None if diff is None else diff[:n])
    return out


def _full_execution_loss(model: nn.Module, images: Tensor, labels: Tensor, num_gates: int,
                         device: torch.device, amp: bool) -> Tensor:
    """Per-image cross-entropy of ``model`` with every block executed: how hard each image is
    for this network, the difficulty proxy of data sets that carry none."""
    ones = torch.ones(images.shape[0], num_gates, device=device)
    with autocast(device, amp):
        logits, _ = model(images, skip_compute=True, decisions=ones)
    return F.cross_entropy(logits.float(), labels, reduction="none").cpu()


def routing_metrics(decision: Tensor, costs: BlockCosts, difficulty_: Tensor, *, split: str = "val"
                    ) -> dict[str, float]:
    """How a gated model routes: percentiles of per-image computation %, the number of distinct
    execution paths (distinct rows of the (N, G) decisions) and the Spearman correlation of
    per-image executed FLOPs with ``difficulty_`` (N,) (0.0 for a constant policy)."""
    pct = costs.computation_pct(decision)
    p10, p50, p90 = torch.quantile(pct, torch.tensor([0.1, 0.5, 0.9], dtype=pct.dtype)).tolist()
    return {f"{split}_computation_p10": p10, f"{split}_computation_p50": p50, f"{split}_computation_p90": p90,
            f"{split}_distinct_paths": int(torch.unique(decision, dim=0).shape[0]) if decision.numel() else 1,
            f"{split}_difficulty_spearman": spearman(costs.executed_flops(decision), difficulty_)}


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two (N,) tensors, ties given their average rank; 0.0 when
    either is constant (no ranking to correlate), never NaN."""
    rx, ry = _average_ranks(x.to(torch.float64)), _average_ranks(y.to(torch.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    return float(rx @ ry / denominator) if denominator > 0 else 0.0


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of ``x`` (N,), tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    return (ends - (counts.to(torch.float64) - 1) / 2)[inverse]


def curve_key(threshold: float, name: str, split: str = "val") -> str:
    """``threshold_curve/0.35/val_top1``: the threshold written exactly (``repr``), so that a
    point read back from its metric names evaluates at the very threshold it was measured at."""
    return f"{CURVE_PREFIX}{float(threshold)!r}/{split}_{name}"


def threshold_curve(model: nn.Module, dataset: Dataset, costs: BlockCosts, thresholds: tuple[float, ...], *,
                    own: dict[str, Any] | None = None, split: str = "val", **kwargs: Any) -> dict[str, float]:
    """``CURVE_METRICS`` of a gated ``model`` evaluated at each gate threshold of ``thresholds``,
    as ``curve_key`` metrics; empty for a plain ResNet or no thresholds.

    ``own``: the metrics of an evaluation at the model's own ``gate_threshold`` (not evaluated
    again; its values are copied). The model's threshold is restored afterwards. ``kwargs`` go
    to :func:`evaluate`."""
    if getattr(model, "gate_spec", None) is None or not thresholds:
        return {}
    start = getattr(model, "gate_threshold", 0.5)
    reference = None
    if difficulty(dataset) is None:        # the difficulty proxy depends on no threshold: compute it once
        reference = full_execution_losses(model, dataset, **kwargs)
    out: dict[str, float] = {}
    for t in dict.fromkeys(float(t) for t in thresholds):
        if own is not None and t == start:
            metrics = own
        else:
            with at_threshold(model, t):
                metrics = evaluate(model, dataset, costs, split=split, reference_loss=reference, **kwargs)
        out.update({curve_key(t, name, split): metrics[f"{split}_{name}"] for name in CURVE_METRICS})
    return out


def full_execution_losses(model: nn.Module, dataset: Dataset, *, batch_size: int = 256,
                          device: torch.device | str = "cpu", amp: bool = False, max_batches: int | None = None,
                          num_workers: int = 0, **_: Any) -> Tensor:
    """Per-image loss of ``model`` with every block executed over ``dataset`` (in order), on
    forked RNG states."""
    device = torch.device(device)
    model.eval()
    losses = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        for b, (images, labels) in enumerate(eval_batches(dataset, batch_size, num_workers=num_workers)):
            if max_batches is not None and b >= max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            losses.append(_full_execution_loss(model, images, labels, model.num_gates, device, amp))
    return torch.cat(losses)
