"""``Engine``: the training loop every entry point shares (CLI ``train``, the Tune Trainable).

An engine owns the data, the model, the optimizer and the LR schedule of one ``TrainConfig``
and walks through its stages (``base``; ``sp``; ``hrl``; or ``pipeline`` = sp then hrl, the
SP weights carried over in memory). ``train(n)`` runs n iterations, ``evaluate(split)``
measures accuracy and executed compute, ``save``/``restore`` write and read a checkpoint that
resumes exactly: a run stopped and resumed gives the same numbers as one that never stopped
(CPU, same seed), because batches are a function of (seed, stage, iteration) and the RNG
states travel in the checkpoint.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from skipnet.core.checkpoint import FORMAT, CheckpointInfo, atomic_save, load_checkpoint, read_checkpoint
from skipnet.core.config import TrainConfig, from_dict, to_dict
from skipnet.core.data import DataSplits, build_splits, train_batches
from skipnet.core.executor import at_threshold
from skipnet.core.flops import block_costs
from skipnet.core.models import GateMode, create_model
from skipnet.core.models.gates import start_executing
from skipnet.core.train.evaluate import evaluate, threshold_curve
from skipnet.core.train.optim import SGD
from skipnet.core.train.steps import StepMetrics, hrl_step, supervised_step
from skipnet.errors import CheckpointError, ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cpu or auto: no CUDA device is visible")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parameter_groups(model: torch.nn.Module, lr: float, gate_lr_scale: float) -> list[dict[str, Any]]:
    """The blocks' parameters at ``lr`` and the gates' (per-block gates and the shared recurrent
    ``control``) at ``lr * gate_lr_scale``: the gates are small heads that must follow what the
    blocks learn, and their updates come from a different loss (REINFORCE in HRL)."""
    gates, blocks = [], []
    for name, p in model.named_parameters():
        (gates if "_gate" in name or name.startswith("control.") else blocks).append(p)
    groups = [{"params": blocks, "lr": lr, "lr_scale": 1.0}]
    if gates:
        groups.append({"params": gates, "lr": lr * gate_lr_scale, "lr_scale": gate_lr_scale})
    return groups


def lr_factor(iteration: int, milestones: tuple[int, ...], decay: float, warmup: int) -> float:
    """The learning rate of ``iteration`` (0-based) as a fraction of the stage's ``lr``: a linear
    warm-up over the first ``warmup`` iterations (``sp.lr_warmup``), times ``decay`` for each
    milestone reached (step decay)."""
    ramp = min(1.0, (iteration + 1) / warmup) if warmup else 1.0
    return ramp * decay ** sum(m <= iteration for m in milestones)


class Engine:
    """Train and evaluate one configuration; see the module docstring."""

    def __init__(self, cfg: TrainConfig, splits: DataSplits | None = None, *, load_init: bool = True) -> None:
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device)
        self.on_cuda = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)
        d = cfg.data
        self.splits = splits or build_splits(
            d.name, d.root, val_size=d.val_size, download=d.download, seed=cfg.seed, augment=d.augment,
            image_size=d.image_size, synthetic_size=d.synthetic_size, synthetic_test_size=d.synthetic_test_size,
            synthetic_difficulty=d.synthetic_difficulty)
        self.stages = ["sp", "hrl"] if cfg.stage == "pipeline" else [cfg.stage]
        self.stage_index = 0
        self.iteration = 0                      # within the current stage
        self.model = self._build_model()
        if self.stages[0] == "sp" and cfg.sp.gate_init_prob is not None:
            start_executing(self.model, cfg.sp.gate_init_prob)
        self.costs = block_costs(self.model, (self.splits.image_size, self.splits.image_size))
        self._enter_stage(load_init=load_init)

    # -- construction -------------------------------------------------------------------------
    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        model = create_model(cfg.model.arch, gate=cfg.model.gate, num_classes=self.splits.num_classes,
                             gate_norm=cfg.model.gate_norm)
        gated = model.gate_spec is not None
        if self.stages == ["base"] and gated:
            raise ConfigError("model.arch", cfg.model.arch, "a plain ResNet (e.g. cifar10_resnet_110) for stage base")
        if self.stages != ["base"] and not gated:
            raise ConfigError("model.arch", cfg.model.arch,
                              f"a gated SkipNet (e.g. cifar10_rnn_gate_110) for stage {cfg.stage}")
        model = model.to(self.device)
        if self.on_cuda and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    @property
    def stage(self) -> str:
        return self.stages[self.stage_index]

    @property
    def stage_cfg(self):
        return self.cfg.hrl if self.stage == "hrl" else self.cfg.sp

    @property
    def next_stage_cfg(self):
        """The settings of the stage the next ``step`` trains (the next one once this one is done)."""
        if self.iteration >= self.stage_cfg.iterations and self.stage_index + 1 < len(self.stages):
            return self.cfg.hrl if self.stages[self.stage_index + 1] == "hrl" else self.cfg.sp
        return self.stage_cfg

    def _enter_stage(self, load_init: bool) -> None:
        """Set the gate mode, optimizer and schedule of the current stage."""
        cfg, sc = self.cfg, self.stage_cfg
        if self.stage == "hrl":
            self.model.mode, self.model.temperature = GateMode.POLICY, cfg.hrl.temperature
            if load_init and cfg.stage == "hrl":
                if not cfg.hrl.init_checkpoint:
                    raise ConfigError("hrl.init_checkpoint", None, "the path of an SP checkpoint for stage hrl")
                try:
                    load_checkpoint(self.model, cfg.hrl.init_checkpoint)
                except CheckpointError as e:
                    raise CheckpointError(f"hrl.init_checkpoint: {e}") from None
        elif self.model.gate_spec is not None:
            self.model.mode = GateMode(cfg.model.mode)
        self.optimizer = SGD(parameter_groups(self.model, sc.lr, sc.gate_lr_scale), lr=sc.lr,
                             momentum=sc.momentum, weight_decay=sc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: self._lr_factor(i))
        fp16 = self.on_cuda and cfg.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self._batches = None

    # -- training -----------------------------------------------------------------------------
    def _lr_factor(self, iteration: int) -> float:
        sc = self.stage_cfg
        warmup = sc.lr_warmup_iterations if self.stage != "hrl" else 0
        return lr_factor(iteration, tuple(sc.lr_milestones), sc.lr_decay, warmup)

    @property
    def done(self) -> bool:
        return self.stage_index == len(self.stages) - 1 and self.iteration >= self.stage_cfg.iterations

    @property
    def total_iterations(self) -> int:
        return sum((self.cfg.hrl if s == "hrl" else self.cfg.sp).iterations for s in self.stages)

    @property
    def global_iteration(self) -> int:
        done = sum((self.cfg.hrl if s == "hrl" else self.cfg.sp).iterations for s in self.stages[:self.stage_index])
        return done + self.iteration

    def _next_batch(self):
        if self._batches is None:
            self._batches = train_batches(self.splits, self.stage_cfg.batch_size,
                                          seed=self.cfg.seed * 1000 + self.stage_index,
                                          start_iteration=self.iteration, num_workers=self.cfg.data.num_workers,
                                          pin_memory=self.on_cuda)
        images, labels = next(self._batches)
        images = images.to(self.device, non_blocking=True)
        if self.on_cuda and self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def step(self) -> StepMetrics:
        """One iteration of the current stage (moves to the next stage when this one is done)."""
        if self.iteration >= self.stage_cfg.iterations and self.stage_index + 1 < len(self.stages):
            self.stage_index, self.iteration = self.stage_index + 1, 0
            self._enter_stage(load_init=False)
        self.model.train()
        images, labels = self._next_batch()
        amp = self.cfg.amp and self.on_cuda
        if self.stage == "hrl":
            h = self.cfg.hrl
            metrics = hrl_step(self.model, images, labels, self.optimizer, alpha=h.alpha, rl_weight=h.rl_weight,
                               gamma=h.gamma, skip_compute=h.skip_compute, baseline=h.baseline,
                               entropy_weight=h.entropy_weight, straight_through=h.straight_through,
                               random_path_weight=h.random_path_weight,
                               random_path_fraction=h.random_path_fraction, amp=amp,
                               scaler=self.scaler)
        else:
            metrics = supervised_step(self.model, images, labels, self.optimizer, amp=amp, scaler=self.scaler,
                                      all_blocks=self.stage == "sp" and self.iteration < self.cfg.sp.warmup_iterations)
        self.scheduler.step()
        self.iteration += 1
        return metrics

    def train(self, iterations: int, progress=None) -> dict[str, float]:
        """Run up to ``iterations`` steps (fewer at the end of a stage); mean training metrics."""
        sums: dict[str, float] = {}
        images, steps, start = 0, 0, time.perf_counter()
        while steps < iterations and not self.done:
            if steps and self.iteration >= self.stage_cfg.iterations:
                break                                # report each stage's end on its own
            m = self.step()
            for k, v in dataclasses.asdict(m).items():
                sums[k] = sums.get(k, 0.0) + v
            images += self.stage_cfg.batch_size
            steps += 1
            if progress is not None:
                progress(m)
        if self.on_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        out = {f"train_{k}": v / steps for k, v in sums.items()} if steps else {}
        out.update(train_images_per_s=images / elapsed if steps else 0.0, iteration=self.global_iteration,
                   stage=self.stage, lr=self.optimizer.param_groups[0]["lr"])
        return out

    def update_hyperparameters(self, *, lr: float | None = None, alpha: float | None = None) -> None:
        """Change the learning rate and gate cost in place (PBT exploits and mutations)."""
        if alpha is not None:
            self.cfg = dataclasses.replace(self.cfg, hrl=dataclasses.replace(self.cfg.hrl, alpha=alpha))
        if lr is not None:
            section = "hrl" if self.stage == "hrl" else "sp"
            self.cfg = dataclasses.replace(self.cfg, **{section: dataclasses.replace(self.stage_cfg, lr=lr)})
            factor = self._lr_factor(self.iteration)
            for group in self.optimizer.param_groups:
                group["lr"], group["initial_lr"] = lr * group["lr_scale"] * factor, lr * group["lr_scale"]
            self.scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, split: str = "val", *, per_sample: bool = False) -> dict[str, Any]:
        """Metrics of ``split`` (``val`` selects models; ``test`` is only reported); leaves the
        training RNGs as they were (see ``skipnet.core.train.evaluate``)."""
        dataset = {"val": self.splits.val, "test": self.splits.test}[split]
        with at_threshold(self.model, self.cfg.model.gate_threshold):     # evaluation decisions only
            return evaluate(self.model, dataset, self.costs, split=split, per_sample=per_sample,
                            **self._eval_settings())

    def threshold_curve(self, own: dict[str, Any] | None = None) -> dict[str, float]:
        """Validation metrics at each gate threshold of ``eval.gate_thresholds`` (gated models;
        ``threshold_curve/<t>/val_<metric>``, see ``skipnet.core.train.evaluate.threshold_curve``);
        ``own``: this model's validation metrics at its own threshold, reused."""
        with at_threshold(self.model, self.cfg.model.gate_threshold):
            return threshold_curve(self.model, self.splits.val, self.costs, self.cfg.eval.gate_thresholds, own=own,
                                   **self._eval_settings())

    def _eval_settings(self) -> dict[str, Any]:
        return dict(batch_size=self.cfg.eval.batch_size, device=self.device, amp=self.cfg.amp,
                    channels_last=self.cfg.channels_last, max_batches=self.cfg.eval.max_batches,
                    top5=self.splits.name == "imagenet", num_workers=self.cfg.data.num_workers)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.on_cuda:
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"format": FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "stage_index": self.stage_index, "iteration": self.iteration, "rng": rng,
                "config": to_dict(self.cfg), "info": dataclasses.asdict(self._info())}

    def _info(self) -> CheckpointInfo:
        return CheckpointInfo.of(self.model, alpha=self.cfg.hrl.alpha if self.stage == "hrl" else None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage_index, self.iteration = int(state["stage_index"]), int(state["iteration"])
        self._enter_stage(load_init=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.on_cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, path: str | Path) -> Path:
        """Write the whole training state atomically (loadable by ``skipnet.load_checkpoint`` too)."""
        return atomic_save(self.state_dict(), path)

    @classmethod
    def restore(cls, path: str | Path, cfg: TrainConfig | None = None,
                splits: DataSplits | None = None) -> "Engine":
        """An engine that continues exactly where the checkpoint at ``path`` stopped."""
        state = read_checkpoint(path)
        if "optimizer" not in state or "config" not in state:
            raise CheckpointError(f"checkpoint {path}: holds weights only, not a training state to resume")
        engine = cls(cfg or from_dict(TrainConfig, state["config"]), splits=splits, load_init=False)
        engine.load_state_dict(state)
        return engine
