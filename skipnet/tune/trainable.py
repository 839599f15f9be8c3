"""``SkipNetTrainable``: the training engine as a Ray Tune Trainable (class API).

``setup`` builds an ``Engine`` from the trial's config, ``step`` trains a fixed number of
iterations and validates (at the end also on the test split, and on val at every threshold of
``eval.gate_thresholds``: ``threshold_curve/<t>/val_top1`` ..., and ``threshold_sweep_s``, what
that cost), ``save_checkpoint``/``load_checkpoint`` use the engine's exact-resume checkpoints,
and ``reset_config`` starts the next trial on a reused actor (``reuse_actors``).

In a search that shares SP (``skipnet.tune.sharing``) a trial of the SP phase trains to the end
of SP and stops; a searched trial starts from the end-of-SP state of its SP configuration
(``sp_results``: SP key -> checkpoint URI) and so trains HRL only.

Under PBT a trial's hyperparameters and weights change on exploit. ``schedule`` records what the
trial's weights went through: one segment per change, ``{"iteration", "hrl.alpha", "hrl.lr",
"trial"}`` from that training iteration on (the donor's segments come with its checkpoint). It
is reported as ``hyperparameter_schedule`` (JSON) and carried into exports.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from skipnet.core import threads
from skipnet.core.checkpoint import TUNE_CHECKPOINT_FILE, atomic_save, read_checkpoint
from skipnet.core.config import TrainConfig, flatten, load_train_config
from skipnet.core.train.engine import Engine
from skipnet.tune.sharing import read_sp_state, sp_key


def objective(metrics: dict[str, Any], weight: float) -> float:
    """The scalar ASHA/PBT compare: validation accuracy minus ``weight`` x computation %."""
    return metrics["val_top1"] - weight * metrics["val_computation_pct"]


def _end_quietly_on_sigterm() -> None:
    """Let SIGTERM end this worker without a traceback. Tune ends an actor it no longer needs
    (the SP phase's, the last trials') by SIGTERM; Ray's handler raises ``SystemExit`` wherever
    Python is, and inside a garbage-collection callback that prints "Exception ignored ...
    SystemExit: 1" and a traceback, which reached the user's terminal after a successful search.
    What a trial must keep is already on disk (atomic checkpoints) and reported, so exiting at
    once loses nothing."""
    def end(signum, frame):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    try:
        signal.signal(signal.SIGTERM, end)
    except ValueError:           # not the main thread (a threaded actor): keep Ray's handler
        pass


class SkipNetTrainable(tune.Trainable):
    """One trial. ``config`` holds the searched TrainConfig keys (nested or dotted); the
    experiment's shared training config, step size and objective weight arrive through
    ``tune.with_parameters``."""

    def setup(self, config: dict[str, Any], base: dict[str, Any], iterations_per_step: int,
              objective_weight: float = 0.2, sp_phase: bool = False,
              sp_results: dict[str, str] | None = None) -> None:
        self.base, self.iterations_per_step, self.objective_weight = base, iterations_per_step, objective_weight
        self.sp_phase, self.sp_results = sp_phase, sp_results or {}
        self.restored_from: str | None = None
        self.restored_weights = ""                   # digest of the donor weights loaded on exploit
        cfg = self._train_config(config)
        threads.configure(cfg.threads, cap=self._cpus())    # else one per CPU of the trial (skipnet.core.threads)
        _end_quietly_on_sigterm()
        self.engine = self._start(cfg)

    def _start(self, cfg: TrainConfig, splits=None) -> Engine:
        """A fresh engine; positioned at the end of SP when the search trained this trial's SP."""
        engine = Engine(cfg, splits=splits)
        self.sp_checkpoint = None if self.sp_phase else self.sp_results.get(sp_key(cfg))
        if self.sp_checkpoint:
            engine.load_state_dict(read_sp_state(self.sp_checkpoint))
        self.start_weights = weights_digest(engine.model.state_dict())
        self.schedule = [self._segment(engine)]
        return engine

    def _segment(self, engine: Engine, **extra: Any) -> dict[str, Any]:
        """The hyperparameters the weights train with from the engine's current iteration on."""
        return {"iteration": engine.global_iteration, "hrl.alpha": engine.cfg.hrl.alpha,
                "hrl.lr": engine.cfg.hrl.lr, "trial": self.trial_id, **extra}

    def _cpus(self) -> float:
        resources = self.trial_resources
        return getattr(resources, "required_resources", {}).get("CPU", 1) if resources else 1

    def _train_config(self, config: dict[str, Any]) -> TrainConfig:
        overrides = flatten(config)
        overrides["output_dir"] = self.logdir or "."
        return load_train_config(None, overrides, base=self.base)

    def step(self) -> dict[str, Any]:
        before = self.engine.global_iteration
        metrics = self.engine.train(self.iterations_per_step)
        metrics["iterations_trained"] = self.engine.global_iteration - before     # compute actually spent
        val = self.engine.evaluate("val")
        metrics.update(val)
        metrics["objective"] = objective(metrics, self.objective_weight)
        skip = metrics.pop("val_skip_ratio", None)
        if skip is not None:
            metrics["val_skip_ratio_mean"] = sum(skip) / len(skip)
            metrics.update({f"val_skip_ratio/gate{j:03d}": s for j, s in enumerate(skip)})
        metrics["alpha"] = self.engine.cfg.hrl.alpha
        if self.engine.model.gate_spec is not None:
            metrics["gate_threshold"] = self.engine.cfg.model.gate_threshold     # the threshold val_* were measured at
        metrics["num_classes"] = self.engine.splits.num_classes      # chance accuracy for fronts
        metrics["threads"] = torch.get_num_threads()                  # what an exact rerun needs
        metrics["restored_from"] = self.restored_from or ""
        metrics["restored_weights"] = self.restored_weights
        metrics["sp_checkpoint"] = self.sp_checkpoint or ""
        metrics["start_weights"] = self.start_weights
        metrics["hyperparameter_schedule"] = json.dumps(self.schedule)
        if self.sp_phase and self.engine.stage == "sp" and self.engine.iteration >= self.engine.cfg.sp.iterations:
            metrics["sp_done"] = metrics["done"] = True
        elif self.engine.done:
            test = self.engine.evaluate("test")
            test.pop("test_skip_ratio", None)
            metrics.update(test)
            started = time.perf_counter()
            curve = self.engine.threshold_curve(own=val)       # each (trial, threshold): a front candidate
            if curve:
                metrics.update(curve, threshold_sweep_s=time.perf_counter() - started)   # what the sweep cost
            metrics["engine_done"] = metrics["done"] = True      # "done" tells Tune to stop
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> str:
        state = self.engine.state_dict()
        state["trial_id"] = self.trial_id
        state["schedule"] = self.schedule
        atomic_save(state, Path(checkpoint_dir) / TUNE_CHECKPOINT_FILE)
        return checkpoint_dir

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        path = Path(checkpoint) / TUNE_CHECKPOINT_FILE
        state = read_checkpoint(path)
        cfg = self.engine.cfg
        self.engine = Engine(cfg, splits=self.engine.splits, load_init=False)
        self.engine.load_state_dict(state)
        # the trial's own (possibly mutated) lr and alpha win over the donor's
        lr = (cfg.hrl if self.engine.stage == "hrl" else cfg.sp).lr
        self.engine.update_hyperparameters(lr=lr, alpha=cfg.hrl.alpha)
        donor = state.get("trial_id")
        if donor and donor != self.trial_id:       # a PBT exploit: the donor's weights and history
            self.restored_from = donor
            self.restored_weights = weights_digest(self.engine.model.state_dict())
            self.schedule = [*state.get("schedule", []), self._segment(self.engine, cloned_from=donor)]
        else:                                      # our own checkpoint (a retry or a resume)
            self.schedule = state.get("schedule", self.schedule)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """A reused actor starts another trial (or a PBT exploit, restored right after): a fresh
        engine, reusing the loaded data set when the data settings are unchanged."""
        cfg, old = self._train_config(new_config), self.engine.cfg
        same_data = (cfg.data, cfg.seed) == (old.data, old.seed)
        self.engine = self._start(cfg, splits=self.engine.splits if same_data else None)
        self.config, self.restored_from, self.restored_weights = new_config, None, ""
        return True


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of a model's weights and buffers (shows which weights a trial started from)."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
