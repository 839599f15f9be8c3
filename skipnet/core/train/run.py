"""``fit``: a whole training run on disk — evaluate every ``eval_every`` iterations, keep the
last and the best (validation top-1; ties: less computation) checkpoints, log metrics, report test metrics at the end.

Layout of ``output_dir``: ``config.yaml`` (the effective config), ``last.pt`` (full training
state, resumable), ``best.pt`` (best on validation), ``metrics.jsonl`` (one line per
evaluation), ``final.json`` (validation and test metrics of the best checkpoint, and its
validation metrics at each gate threshold of ``eval.gate_thresholds``: ``threshold_curve/...``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from skipnet.core import threads
from skipnet.core.checkpoint import atomic_save, read_checkpoint
from skipnet.core.config import TrainConfig, to_dict
from skipnet.core.files import write_text_atomic
from skipnet.core.train.engine import Engine


def fit(cfg: TrainConfig, *, resume: bool = False, on_step: Callable | None = None,
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        on_finished_already: Callable[[Path, int], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` to the end (continuing ``output_dir/last.pt`` when ``resume``); final metrics.

    ``on_finished_already(last.pt, iteration)`` is called when a resumed run had nothing left to
    train (it is evaluated again, as at its end)."""
    threads.configure(cfg.threads)           # the config's count, else one per usable CPU (skipnet.core.threads)
    out = Path(cfg.output_dir)
    last, best = out / "last.pt", out / "best.pt"
    engine = Engine.restore(last, cfg) if resume and last.exists() else Engine(cfg)
    if resume and last.exists() and engine.done and on_finished_already is not None:
        on_finished_already(last, engine.global_iteration)
    out.mkdir(parents=True, exist_ok=True)        # only once the config has proved buildable
    write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    best_key = best_rank(read_checkpoint(best)) if resume and best.exists() else None
    while not engine.done:
        metrics = engine.train(engine.next_stage_cfg.eval_every, progress=on_step)
        metrics.update(engine.evaluate("val"))
        state = engine.state_dict()                 # computed once for last.pt and best.pt
        atomic_save(state, last)
        # the best checkpoint is chosen within the final stage (an SP model is no HRL result)
        final_stage = engine.stage_index == len(engine.stages) - 1
        if final_stage and (best_key is None or best_rank(metrics) > best_key):
            best_key = best_rank(metrics)
            atomic_save({**state, "best_val_top1": metrics["val_top1"],
                         "best_val_computation_pct": metrics.get("val_computation_pct", 100.0)}, best)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if on_eval is not None:
            on_eval(metrics)
    if best.exists():
        engine = Engine.restore(best, cfg, splits=engine.splits)
    val = engine.evaluate("val")
    final = {**val, **engine.evaluate("test"), **engine.threshold_curve(own=val), "checkpoint": str(best),
             "iteration": engine.global_iteration}
    write_text_atomic(out / "final.json", json.dumps(final, indent=2))
    return final


def best_rank(metrics: dict[str, Any]) -> tuple[float, float]:
    """What ``best.pt`` maximises: validation top-1, then less computation (two evaluations as
    accurate keep the cheaper model). Reads an evaluation's metrics or a saved ``best.pt``."""
    top1 = metrics.get("val_top1", metrics.get("best_val_top1", float("-inf")))
    computation = metrics.get("val_computation_pct", metrics.get("best_val_computation_pct", 100.0))
    return top1, -computation
