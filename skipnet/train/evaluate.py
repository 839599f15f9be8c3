"""Evaluation of a model on one split: accuracy, loss and the compute it actually executed.

Gated models run with real skipping (``skip_compute=True``), which gives the same outputs as
masked execution in eval mode and costs only what is executed.

Evaluation runs on forked RNG states: a DataLoader draws its base seed from the global torch
generator, which HRL also samples gate actions from, so an evaluation that moved it would make
the trained model depend on how often and on what a run evaluates.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from skipnet.data import difficulty, eval_batches
from skipnet.flops import BlockCosts, block_count_pct
from skipnet.train.steps import autocast


def evaluate(model: nn.Module, dataset: Dataset, costs: BlockCosts, *, split: str = "val",
             batch_size: int = 256, device: torch.device | str = "cpu", amp: bool = False,
             channels_last: bool = False, max_batches: int | None = None, top5: bool = False,
             num_workers: int = 0, per_sample: bool = False) -> dict[str, Any]:
    """Metrics prefixed by ``split``: top-1 (and top-5), loss, computation %, block-count %,
    executed GFLOPs per image and the skip ratio of every gate; with ``per_sample`` also the
    executed blocks, correctness and (synthetic data) difficulty of each sample, in order.
    Every RNG is as it was afterwards."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _evaluate(model, dataset, costs, split=split, batch_size=batch_size, device=device, amp=amp,
                         channels_last=channels_last, max_batches=max_batches, top5=top5,
                         num_workers=num_workers, per_sample=per_sample)


@torch.no_grad()
def _evaluate(model: nn.Module, dataset: Dataset, costs: BlockCosts, *, split: str, batch_size: int,
              device: torch.device, amp: bool, channels_last: bool, max_batches: int | None, top5: bool,
              num_workers: int, per_sample: bool) -> dict[str, Any]:
    model.eval()
    gated = getattr(model, "gate_spec", None) is not None
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    decisions, corrects = [], []
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
    if per_sample:
        diff = difficulty(dataset)
        out.update(executed_blocks=decision.sum(1), correct=torch.cat(corrects),
                   difficulty=None if diff is None else diff[:n])
    return out
