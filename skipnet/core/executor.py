"""Real skipping: run a residual block only on the samples whose gate says execute.

The authors compute every block for every sample and then mask the result, so skipping saves
no time. Here a gated block gathers the executing samples, runs on them and scatters the result
back over the shortcut; when no sample executes it, it is not run at all. In eval mode BN uses
running statistics, so the output equals the masked computation (to float rounding). In policy
training the same path gives "executed-samples-only" training: a skipped sample needs neither
forward nor backward through the block (BN batch statistics then come from executing samples).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn


def run_selected(block: nn.Module, x: Tensor, shortcut: Tensor, decision: Tensor) -> Tensor:
    """``block(x, shortcut)`` where ``decision`` (B,) is 1 and ``shortcut`` elsewhere.

    Under ``torch.no_grad`` the result is written into ``shortcut`` in place.
    """
    batch = decision.shape[0]
    if batch == 1:                                   # no gather needed: run or do not
        return block(x, shortcut) if decision.item() > 0.5 else shortcut
    idx = torch.nonzero(decision > 0.5, as_tuple=False).squeeze(1)
    n = idx.numel()
    if n == 0:
        return shortcut
    if n == batch:
        return block(x, shortcut)
    x_sel = x.index_select(0, idx)
    out = block(x_sel, x_sel if shortcut is x else shortcut.index_select(0, idx))
    if torch.is_grad_enabled():
        return shortcut.index_copy(0, idx, out)
    # inference: scatter into the shortcut in place (it is not read again), saving a full copy
    return shortcut.index_copy_(0, idx, out)


@torch.no_grad()
def execute(model: nn.Module, images: Tensor, decisions: Tensor | None = None, *,
            threshold: float | None = None):
    """Inference with real skipping: ``(logits, GateRecord)`` of ``model`` in eval mode.

    ``decisions`` (B, G) optionally forces the gate decisions (benchmarks use it to hold the
    computation at a chosen level). ``threshold`` overrides the model's ``gate_threshold`` (a
    block executes when its gate's probability exceeds it) for this call only.
    """
    if threshold is not None and not 0 < threshold < 1:
        from skipnet.errors import ConfigError
        raise ConfigError("threshold", threshold, "a number strictly between 0 and 1")
    was_training = model.training
    model.eval()
    try:
        with at_threshold(model, threshold):
            return model(images, skip_compute=True, decisions=decisions)
    finally:
        model.train(was_training)


@contextlib.contextmanager
def at_threshold(model: nn.Module, threshold: float | None) -> Iterator[None]:
    """``model`` decides at gate ``threshold`` inside the block (None: its own), at its own
    afterwards. Engines apply ``model.gate_threshold`` this way, only while they evaluate, so
    that no training decision (a step may run the model in eval mode) ever sees it."""
    if threshold is None:
        yield
        return
    saved = getattr(model, "gate_threshold", 0.5)
    model.gate_threshold = float(threshold)
    try:
        yield
    finally:
        model.gate_threshold = saved
