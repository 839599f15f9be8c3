"""GPU acceptance check: correctness (real skipping, AMP steps, exact resume), speed ratios, trial packing.

One command, about 5 minutes on one GPU with the defaults (CIFAR ResNet-110, batch 128):

* correctness: the executor (``skipnet.execute``) against masked execution for the recurrent
  and a feedforward gate at batch 1 and 256, in float32 (1e-4) and under AMP; an SP and an
  HRL step under AMP with finite loss and gradients; a checkpoint saved mid-run and resumed
  against the uninterrupted run (exact on CPU; on CUDA within the run-to-run noise of two
  uninterrupted runs, since atomics-based kernels are nondeterministic);
* speed, measured in this one run: SkipNet SP training vs the plain ResNet (AMP and
  channels_last off/on on CUDA), HRL executed-samples-only vs compute-everything at ~50 %
  computation, inference with real skipping vs masked execution at ~50 % (batch 1 and 256);
* packing: total and per-process training images/s of 1, 2, 4, 8 concurrent ResNet-110
  training processes on the device, and the recommended number per GPU.

``--device cpu`` shrinks every default (ResNet-38, small batches, 1 and 2 processes) to a smoke
test of well under a minute; autocast is a no-op there, which the output says. A failed
correctness check (or a section that crashed) exits 1 with a one-line message after the table
and JSON are written.

    python benchmarks/gpu_check.py [--device cuda] [--sections correctness speed packing]
    python benchmarks/gpu_check.py --device cpu --depth 38 --batch 8 --batches 1 8 --steps 2
"""
from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import platform
import queue as queue_module
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import skipnet
from skipnet.core.config import load_train_config
from skipnet.core.train import Engine
from skipnet.core.train.steps import autocast, hrl_step, supervised_step
from _common import machine, print_table, write_json
from skip_speed import exact_patterns
from train_speed import fair_coin_gates

FP32_TOL = 1e-4                 # executor vs masked, float32 logits (max absolute difference)
AMP_ULPS = 8                    # AMP tolerance floor: this many units of roundoff of the logit scale
TIE = 1e-4                      # a gate probability this close to 0.5 may flip with rounding
PACKING_SLACK = 0.10            # recommend the fewest processes within 10 % of the best total

DEFAULTS = {
    "cuda": dict(depth=110, batch=128, batches=[1, 256], steps=20, repeats=2, warmup=3,
                 infer_images=64, packing=[1, 2, 4, 8], packing_seconds=15.0, resume_iterations=4, resume_val=512,
                 threads=None),
    "cpu": dict(depth=38, batch=16, batches=[1, 16], steps=3, repeats=1, warmup=1,
                infer_images=16, packing=[1, 2], packing_seconds=3.0, resume_iterations=2, resume_val=64,
                threads=1),
}


@dataclass(frozen=True)
class Precision:
    amp: bool
    channels_last: bool

    @property
    def label(self) -> str:
        return ("amp" if self.amp else "fp32") + ("+channels_last" if self.channels_last else "")


# -- device -----------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype ``skipnet.core.train.steps.autocast`` uses; None where autocast does nothing (CPU)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark, amp_dtype=str(amp_dtype(device)),
                    conv_fp32_precision=_conv_precision())
    else:
        info.update(name=cpu_name(), amp_dtype=None, amp_note="autocast is a no-op on CPU: AMP runs are float32")
    return info


def _conv_precision() -> str:
    try:
        return torch.backends.cudnn.conv.fp32_precision
    except AttributeError:                                    # torch < 2.9
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """Full float32 convs and matmuls on CUDA: TF32 (torch's default for cuDNN convs) keeps a
    10-bit mantissa, so it alone would exceed the 1e-4 float32 tolerance. No-op on CPU."""
    if device.type != "cuda":
        yield
        return
    conv, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(conv, "conv"):                                 # torch >= 2.9: fp32_precision
        conv, key, full = conv.conv, "fp32_precision", "ieee"
    else:                                                     # older: the allow_tf32 flags
        key, full = "allow_tf32", False
    saved = getattr(conv, key), getattr(mm, key)
    setattr(conv, key, full)
    setattr(mm, key, full)
    try:
        yield
    finally:
        setattr(conv, key, saved[0])
        setattr(mm, key, saved[1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(model: nn.Module, x: torch.Tensor, precision: Precision, device: torch.device):
    if precision.channels_last and device.type == "cuda":
        return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x


def grad_scaler(device: torch.device, amp: bool):
    """A GradScaler exactly where the Engine uses one: fp16 autocast (CUDA without bf16)."""
    return torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None


def images_per_s(fn, images: int, steps: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Images/s of the fastest of ``repeats`` timed runs of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return images * steps / best


def random_batch(batch: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 32, 32, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device))


# -- correctness ------------------------------------------------------------------------------

@torch.no_grad()
def calibrate_bn(model: nn.Module, device: torch.device, batches: int = 3, batch: int = 64) -> None:
    """Running BN statistics of random images with every block executed, so eval-mode
    activations (and the logit scale tolerances apply to) stay realistic through 54 blocks."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                                     # cumulative average
    model.train()
    for i in range(batches):
        x, _ = random_batch(batch, device, seed=100 + i)
        model(x, decisions=torch.ones(batch, model.num_gates, device=device))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def gated_model(gate: str, depth: int, device: torch.device) -> nn.Module:
    """An eval-mode SkipNet whose gates mix (random weights, std 0.5) and whose BN is calibrated."""
    torch.manual_seed(11)
    model = skipnet.create_model(f"cifar10_skipnet_{depth}_{gate}").to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name or name.startswith("control."):
                p.normal_(0, 0.5)
    calibrate_bn(model, device)
    balance_gates(model, device)
    return model


@torch.no_grad()
def balance_gates(model: nn.Module, device: torch.device, rounds: int = 4) -> None:
    """Shift the gates' execute bias by their median logit on random images, a few rounds
    (decisions change what later gates see), so about half of the decisions execute and the
    check exercises mixed batches (random recurrent gates otherwise execute nearly all)."""
    x, _ = random_batch(64, device, seed=200)
    for _ in range(rounds):
        _, record = model(x)
        logit = torch.logit(record.prob.float().clamp(1e-6, 1 - 1e-6))      # (B, G)
        if model.control is not None:                                      # one LSTM head for all gates
            model.control.proj.bias -= logit.median()
            continue
        for j, info in enumerate(model.block_info[:-1]):                    # feedforward: one head per gate
            getattr(model, f"group{info.group}_gate{info.index}").linear_layer.bias[1] -= logit[:, j].median()


def check_executor(model: nn.Module, gate: str, batch: int, device: torch.device) -> list[dict]:
    """Executor vs masked execution: float32 (own gate decisions, and forced to the masked
    ones) and AMP (decisions forced to the float32 ones, so a rounding flip cannot diverge)."""
    x, _ = random_batch(batch, device, seed=batch)
    with torch.no_grad(), ieee_fp32(device):
        ref_logits, ref = model(x)
        logits, rec = skipnet.execute(model, x)
        forced_logits, _ = skipnet.execute(model, x, decisions=ref.decision)
    scale = ref_logits.abs().max().item()
    # a sample whose decisions differ is only allowed where the masked path's probability at the
    # first differing gate was a rounding tie at 0.5
    differ = (rec.decision != ref.decision)
    rows_differ = differ.any(1)
    first = differ.float().argmax(1)
    tie_prob = ref.prob.gather(1, first[:, None]).squeeze(1)
    unexplained = int((rows_differ & ((tie_prob - 0.5).abs() >= TIE)).sum())
    same = ~rows_differ
    diff_own = (logits[same] - ref_logits[same]).abs().max().item() if same.any() else 0.0
    diff_forced = (forced_logits - ref_logits).abs().max().item()
    fp32 = {"check": f"executor {gate} b{batch} fp32", "passed": unexplained == 0 and max(diff_own, diff_forced)
            <= FP32_TOL, "max_abs_diff": max(diff_own, diff_forced), "tolerance": FP32_TOL, "logit_scale": scale,
            "executed_pct": 100 * ref.decision.mean().item(), "decision_mismatch_samples": int(rows_differ.sum()),
            "unexplained_mismatches": unexplained, "amp_active": False}

    dtype = amp_dtype(device)
    with torch.no_grad(), autocast(device, True):
        m_logits, m_rec = model(x)
        masked_logits, _ = model(x, decisions=ref.decision)
        exec_logits, _ = skipnet.execute(model, x, decisions=ref.decision)
    amp_noise = (masked_logits.float() - ref_logits).abs().max().item()
    diff = (exec_logits.float() - masked_logits.float()).abs().max().item()
    if dtype is None:
        tol, note = FP32_TOL, "autocast is a no-op on CPU: float32 again"
    else:
        # the two paths round differently (other kernels on other batch subsets, the masked
        # blend's arithmetic and dtype promotion against the executor's gather/scatter), so
        # allow a few units of roundoff of the logit scale, or twice AMP's own error against
        # float32 on the masked path, whichever is larger
        u = torch.finfo(dtype).eps / 2
        tol, note = max(AMP_ULPS * u * scale, 2 * amp_noise), f"{dtype}: max({AMP_ULPS} u x scale, 2 x amp_vs_fp32)"
    amp = {"check": f"executor {gate} b{batch} amp", "passed": diff <= tol, "max_abs_diff": diff, "tolerance": tol,
           "logit_scale": scale, "amp_vs_fp32": amp_noise, "executed_pct": 100 * ref.decision.mean().item(),
           "amp_decision_flips_pct": 100 * (m_rec.decision != ref.decision).float().mean().item(),
           "amp_active": dtype is not None, "note": note}
    return [fp32, amp]


def check_amp_step(kind: str, depth: int, batch: int, device: torch.device, steps: int = 2) -> dict:
    """SP or HRL steps under AMP (channels_last on CUDA, as the Engine trains): finite losses,
    gradients and weights. With an fp16 GradScaler, overflow steps (skipped by design while
    the scale settles) are counted and the check needs one finite step."""
    torch.manual_seed(0)
    hrl = kind != "sp"
    model = skipnet.create_model(f"cifar10_skipnet_{depth}_recurrent", mode="policy" if hrl else "hard")
    model = model.to(device).train()
    if hrl:
        fair_coin_gates(model)
    x, y = random_batch(batch, device, seed=1)
    model, x = prepare(model, x, Precision(True, True), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 if hrl else 0.1, momentum=0.9, weight_decay=1e-4)
    scaler = grad_scaler(device, True)
    losses, overflows, finite_grads, metrics = [], 0, False, None
    for i in range(steps + (16 if scaler else 0)):
        if hrl:
            metrics = hrl_step(model, x, y, optimizer, alpha=0.1, rl_weight=0.01, gamma=1.0,
                               skip_compute=kind == "hrl_executed_only", amp=True, scaler=scaler)
        else:
            metrics = supervised_step(model, x, y, optimizer, amp=True, scaler=scaler)
        losses.append(metrics.loss)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite_grads = bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)
        overflows += scaler is not None and not finite_grads
        if i + 1 >= steps and (finite_grads or scaler is None):
            break
    n_params = sum(1 for _ in model.parameters())
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
    finite_weights = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    finite_loss = all(math.isfinite(v) for v in losses)
    dtype = amp_dtype(device)
    return {"check": f"{kind} step amp", "passed": finite_loss and finite_grads and finite_weights,
            "loss": losses[-1], "grad_norm": grad_norm, "params_with_grad": f"{len(grads)}/{n_params}",
            "executed_pct": 100 * metrics.executed_fraction, "steps": len(losses), "scaler_overflows": overflows,
            "amp_active": dtype is not None, "note": str(dtype) if dtype else "autocast is a no-op on CPU: float32"}


def check_resume(depth: int, batch: int, iterations: int, n_val: int, device: torch.device) -> dict:
    """SP then HRL (executed-samples-only), saved in the middle of HRL and resumed: the same
    validation metrics, last training metrics and weights as the uninterrupted run. CPU:
    exact. CUDA: within 2x the gap between two uninterrupted runs plus one sample's worth."""
    half = max(1, iterations // 2)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cfg = load_train_config(None, {
            "device": device.type, "stage": "pipeline", "model.arch": f"cifar10_skipnet_{depth}_recurrent",
            "data.name": "synthetic", "data.synthetic_size": n_val + 8 * batch, "data.synthetic_test_size": 2,
            "data.val_size": n_val, "sp.batch_size": batch, "hrl.batch_size": batch, "sp.iterations": iterations,
            "hrl.iterations": iterations, "sp.lr": 0.02, "hrl.lr": 0.01, "hrl.skip_compute": True,
            "eval.batch_size": min(256, n_val), "output_dir": tmp})

        def uninterrupted(splits=None):
            engine = Engine(cfg, splits)
            engine.train(iterations)
            engine.train(half)
            last = engine.train(iterations - half)
            return engine, _comparable(engine, last)

        straight, expected = uninterrupted()
        first = Engine(cfg, straight.splits)
        first.train(iterations)
        first.train(half)
        path = first.save(Path(tmp) / "mid.pt")
        del first
        resumed = Engine.restore(path, splits=straight.splits)
        at = (resumed.stage, resumed.iteration)
        got = _comparable(resumed, resumed.train(iterations - half))
        param_diff = _max_param_diff(straight.model, resumed.model)
        finite = all(math.isfinite(v) for v in [*got.values(), *expected.values(), param_diff])
        row = {"check": "resume", "iterations": f"sp {iterations} + hrl {iterations}, saved at hrl {half}",
               "val_top1": got["val_top1"], "val_loss": got["val_loss"], "max_param_diff": param_diff,
               "max_metric_diff": max(abs(got[k] - expected[k]) for k in expected)}
        if device.type != "cuda":
            row.update(passed=finite and at == ("hrl", half) and got == expected and param_diff == 0.0,
                       tolerance=0.0, note="CPU: exact equality of every metric and weight")
            return row
        # CUDA: atomics-based kernels (conv weight-gradient, index_add/scatter in backward) sum
        # in a run-dependent order, so even two uninterrupted runs differ; resume may differ
        # from the uninterrupted run by twice that gap plus one validation sample's worth
        second, expected2 = uninterrupted(straight.splits)
        noise_param = _max_param_diff(straight.model, second.model)
        grain = {"val_top1": 100 / n_val, "val_computation_pct": 100 / n_val, "val_block_count_pct": 100 / n_val,
                 "val_skip_ratio_mean": 1 / n_val, "val_executed_gflops": expected["val_executed_gflops"] / n_val,
                 "train_accuracy": 100 / batch, "train_executed_fraction": 1 / batch}
        bad = [k for k in expected if abs(got[k] - expected[k])
               > 2 * abs(expected2[k] - expected[k]) + grain.get(k, 1e-3 * max(1.0, abs(expected[k])))]
        param_ok = param_diff <= 2 * noise_param + 1e-3 * _max_abs_param(straight.model)
        row.update(passed=finite and at == ("hrl", half) and not bad and param_ok, noise_param_diff=noise_param,
                   noise_metric_diff=max(abs(expected2[k] - expected[k]) for k in expected), outside=bad,
                   tolerance="2 x (uninterrupted vs uninterrupted) + one sample's worth (or 1e-3 relative)",
                   note="CUDA: nondeterministic kernels, exact match only expected on CPU")
        return row


def _comparable(engine: Engine, last_window: dict) -> dict:
    """Scalar validation metrics and the last training window's metrics (timings excluded)."""
    val = engine.evaluate("val")
    out = {k: v for k, v in val.items() if isinstance(v, (int, float))}
    out.update({k: v for k, v in last_window.items() if k.startswith("train_") and k != "train_images_per_s"})
    out["val_skip_ratio_mean"] = sum(val["val_skip_ratio"]) / len(val["val_skip_ratio"])
    return out


def _max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max((x.float() - y.float()).abs().max().item()
               for x, y in zip(a.state_dict().values(), b.state_dict().values()) if x.is_floating_point())


def _max_abs_param(m: nn.Module) -> float:
    return max(p.abs().max().item() for p in m.parameters())


def crashed(label: str, e: Exception) -> dict:
    return {"check": label, "passed": False, "error": f"{type(e).__name__}: {e}".splitlines()[0],
            "traceback": traceback.format_exc()}


def run_check(label: str, fn, *args) -> list[dict]:
    """Run one check; a crash is a failed check carrying its error (other checks still run)."""
    try:
        out = fn(*args)
        return out if isinstance(out, list) else [out]
    except Exception as e:                                    # recorded, reported, exit 1 at the end
        return [crashed(label, e)]


def correctness(args, device: torch.device) -> list[dict]:
    checks = []
    for gate in ("recurrent", args.ff_gate):
        try:
            model = gated_model(gate, args.depth, device)
        except Exception as e:
            checks.append(crashed(f"executor {gate} (model setup)", e))
            continue
        for batch in args.batches:
            checks += run_check(f"executor {gate} b{batch}", check_executor, model, gate, batch, device)
        del model
    for kind in ("sp", "hrl", "hrl_executed_only"):
        checks += run_check(f"{kind} step amp", check_amp_step, kind, args.depth, args.batch, device)
    checks += run_check("resume", check_resume, args.depth, args.batch, args.resume_iterations, args.resume_val,
                        device)
    return checks


# -- speed ------------------------------------------------------------------------------------

def train_rate(model: nn.Module, stage: str, precision: Precision, args, device: torch.device,
               skip_compute: bool = False) -> tuple[float, float]:
    """Training images/s and executed % of one model under one precision setting."""
    model = model.to(device).train()
    x, y = random_batch(args.batch, device, seed=2)
    model, x = prepare(model, x, precision, device)
    lr = 1e-4 if stage == "hrl" else 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = grad_scaler(device, precision.amp)
    executed = []

    def step():
        if stage == "hrl":
            m = hrl_step(model, x, y, optimizer, alpha=0.1, rl_weight=0.01, gamma=1.0, skip_compute=skip_compute,
                         amp=precision.amp, scaler=scaler)
        else:
            m = supervised_step(model, x, y, optimizer, amp=precision.amp, scaler=scaler)
        executed.append(m.executed_fraction)

    rate = images_per_s(step, args.batch, args.steps, args.repeats, args.warmup, device)
    return rate, 100 * sum(executed[args.warmup:]) / max(1, len(executed[args.warmup:]))


def precisions(device: torch.device, grid: bool) -> list[Precision]:
    if device.type != "cuda":
        return [Precision(False, False)]
    if grid:
        return [Precision(a, c) for c in (False, True) for a in (False, True)]
    return [Precision(False, False), Precision(True, True)]


def speed(args, device: torch.device) -> dict:
    d = args.depth
    sp_rows = []
    for p in precisions(device, grid=True):
        torch.manual_seed(0)
        plain, _ = train_rate(skipnet.create_model(f"cifar10_resnet_{d}"), "sp", p, args, device)
        torch.manual_seed(0)
        skip, ex = train_rate(skipnet.create_model(f"cifar10_skipnet_{d}_recurrent"), "sp", p, args, device)
        sp_rows.append({"setting": p.label, "plain_img_s": plain, "skipnet_img_s": skip,
                        "skipnet_vs_plain": skip / plain, "executed_pct": ex})
        print(f"  sp {p.label}: plain {plain:.1f}, skipnet {skip:.1f} img/s", flush=True)

    hrl_rows = []
    for p in precisions(device, grid=False):
        rates = {}
        for sc in (False, True):
            torch.manual_seed(0)
            model = skipnet.create_model(f"cifar10_skipnet_{d}_recurrent", mode="policy")
            fair_coin_gates(model)
            rates[sc] = train_rate(model, "hrl", p, args, device, skip_compute=sc)
        hrl_rows.append({"setting": p.label, "compute_everything_img_s": rates[False][0],
                         "executed_only_img_s": rates[True][0], "executed_only_vs_everything":
                         rates[True][0] / rates[False][0], "executed_pct": rates[True][1]})
        print(f"  hrl {p.label}: everything {rates[False][0]:.1f}, executed-only {rates[True][0]:.1f} img/s",
              flush=True)

    inf_rows = []
    torch.manual_seed(0)
    base = skipnet.create_model(f"cifar10_skipnet_{d}_recurrent").to(device).eval()
    costs = skipnet.block_costs(base)
    for p in precisions(device, grid=False):
        for batch in args.batches:
            x, _ = random_batch(batch, device, seed=3)
            model, x = prepare(base, x, p, device)
            decisions = exact_patterns(batch, model.num_gates, 0.5, seed=500 + batch).to(device)
            calls = max(1, args.infer_images // batch)        # enough work per timing at batch 1

            def run(skip):
                with torch.no_grad(), autocast(device, p.amp):
                    for _ in range(calls):
                        model(x, skip_compute=skip, decisions=decisions)

            masked = images_per_s(lambda: run(False), batch * calls, 1, max(3, args.repeats), args.warmup, device)
            executor = images_per_s(lambda: run(True), batch * calls, 1, max(3, args.repeats), args.warmup, device)
            inf_rows.append({"setting": p.label, "batch": batch, "masked_img_s": masked, "executor_img_s": executor,
                             "executor_vs_masked": executor / masked,
                             "computation_pct": costs.computation_pct(decisions.cpu()).mean().item()})
            print(f"  inference {p.label} b{batch}: masked {masked:.1f}, executor {executor:.1f} img/s", flush=True)
    return {"sp": sp_rows, "hrl": hrl_rows, "inference": inf_rows}


# -- packing ----------------------------------------------------------------------------------

def _packing_worker(rank: int, k: int, cfg: dict, barrier, results) -> None:
    """One training process: warm up, wait for the others, train for ``seconds``, report."""
    try:
        device = torch.device(cfg["device"])
        torch.set_num_threads(max(1, cfg["threads"] // k))
        torch.manual_seed(rank)
        p = Precision(cfg["amp"], cfg["channels_last"])
        model = skipnet.create_model(cfg["arch"]).to(device).train()
        x, y = random_batch(cfg["batch"], device, seed=rank)
        model, x = prepare(model, x, p, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        scaler = grad_scaler(device, p.amp)
        for _ in range(cfg["warmup"]):
            supervised_step(model, x, y, optimizer, amp=p.amp, scaler=scaler)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        barrier.wait(timeout=600)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < cfg["seconds"]:
            supervised_step(model, x, y, optimizer, amp=p.amp, scaler=scaler)     # .item() syncs every step
            steps += 1
        sync(device)
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        results.put({"rank": rank, "images": steps * cfg["batch"], "elapsed": elapsed, "peak_mib": peak})
    except BaseException as e:                                # the parent reports it
        barrier.abort()
        results.put({"rank": rank, "error": f"{type(e).__name__}: {e}".splitlines()[0]})


def pack(k: int, cfg: dict, timeout: float) -> list[dict]:
    """Run ``k`` training processes at once (spawned: CUDA cannot be forked) and collect them."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_packing_worker, args=(r, k, cfg, barrier, results), daemon=True) for r in range(k)]
    for proc in procs:
        proc.start()
    out, deadline = [], time.time() + timeout
    try:
        while len(out) < k:
            try:
                out.append(results.get(timeout=1.0))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead or time.time() > deadline:
                    why = f"exit code {dead[0].exitcode}" if dead else f"no result within {timeout:.0f} s"
                    raise RuntimeError(f"packing k={k}: a training process failed ({why})")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    errors = [r["error"] for r in out if "error" in r]
    if errors:
        raise RuntimeError(f"packing k={k}: {errors[0]}")
    return out


def packing(args, device: torch.device) -> dict:
    p = Precision(device.type == "cuda", device.type == "cuda")     # the Engine's defaults on CUDA
    cfg = {"device": device.type, "arch": args.packing_arch or f"cifar10_resnet_{args.depth}", "batch": args.batch,
           "amp": p.amp, "channels_last": p.channels_last, "warmup": max(1, args.warmup),
           "seconds": args.packing_seconds, "threads": args.threads or os.cpu_count() or 1}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows = []
    for k in sorted(set(args.packing)):
        res = pack(k, cfg, timeout=300 + 2 * args.packing_seconds)
        per = [r["images"] / r["elapsed"] for r in res]
        peaks = [r["peak_mib"] for r in res if r["peak_mib"] is not None]
        rows.append({"processes": k, "total_img_s": sum(per), "per_process_img_s": sum(per) / k,
                     "slowest_process_img_s": min(per), "peak_mib_per_process": max(peaks) if peaks else None})
        print(f"  packing k={k}: total {sum(per):.1f} img/s, per process {sum(per) / k:.1f}", flush=True)
    best = max(r["total_img_s"] for r in rows)
    for r in rows:
        r["total_vs_best"] = r["total_img_s"] / best
        r["per_process_vs_fewest"] = r["per_process_img_s"] / rows[0]["per_process_img_s"]
    chosen = min((r for r in rows if r["total_img_s"] >= (1 - PACKING_SLACK) * best), key=lambda r: r["processes"])
    return {"arch": cfg["arch"], "batch": args.batch, "setting": p.label, "seconds": args.packing_seconds,
            "rows": rows, "recommended_processes": chosen["processes"],
            "recommended_gpu_per_trial": round(1 / chosen["processes"], 4),
            "rule": f"fewest processes whose total images/s is within {PACKING_SLACK:.0%} of the best measured total"}


# -- main -------------------------------------------------------------------------------------

def print_correctness(checks: list[dict]) -> None:
    """Three tables (executor, AMP steps, resume) plus crashed checks; differences in scientific notation."""
    def sci(rows, keys):
        return [{k: (f"{v:.2e}" if k in keys and isinstance(v, float) else v) for k, v in r.items()} for r in rows]

    ok = [c for c in checks if "error" not in c]
    tables = [
        ("executor (real skipping) vs masked execution, eval mode",
         sci([c for c in ok if c["check"].startswith("executor")], {"max_abs_diff", "tolerance"}),
         ["check", "passed", "max_abs_diff", "tolerance", "logit_scale", "executed_pct", "note"]),
        ("training steps under AMP", [c for c in ok if "step" in c["check"]],
         ["check", "passed", "loss", "grad_norm", "params_with_grad", "executed_pct", "note"]),
        ("checkpoint saved mid-run and resumed vs the uninterrupted run",
         sci([c for c in ok if c["check"] == "resume"], {"max_metric_diff", "max_param_diff"}),
         ["check", "passed", "iterations", "max_metric_diff", "max_param_diff", "note"]),
        ("checks that crashed", [c for c in checks if "error" in c], ["check", "passed", "error"]),
    ]
    print()
    for title, rows, columns in tables:
        if rows:                                              # print_table needs at least one row
            print(f"correctness: {title}")
            print_table(rows, columns)


def failure_reason(c: dict) -> str:
    """One line saying why check ``c`` failed."""
    if "error" in c:
        return c["error"]
    if "max_abs_diff" in c:
        extra = f", {c['unexplained_mismatches']} samples with other gate decisions" \
            if c.get("unexplained_mismatches") else ""
        return f"max |logit diff| {c['max_abs_diff']:.3g} vs tolerance {c['tolerance']:.3g}{extra}"
    if "max_param_diff" in c:
        return (f"resumed run differs: max metric diff {c['max_metric_diff']:.3g}, max weight diff "
                f"{c['max_param_diff']:.3g}{', outside: ' + ', '.join(c['outside']) if c.get('outside') else ''}")
    return f"non-finite loss, gradient or weight (loss {c.get('loss')}, gradient norm {c.get('grad_norm')})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", nargs="+", choices=["correctness", "speed", "packing"],
                        default=["correctness", "speed", "packing"])
    parser.add_argument("--depth", type=int, choices=[38, 74, 110, 152], help="CIFAR ResNet depth (110; CPU 38)")
    parser.add_argument("--batch", type=int, help="training batch (128; CPU 16)")
    parser.add_argument("--batches", type=int, nargs="+", help="inference and executor-check batches (1 256; CPU 1 16)")
    parser.add_argument("--steps", type=int, help="timed training steps per repeat (20; CPU 3)")
    parser.add_argument("--repeats", type=int, help="timed repeats, fastest kept (2; CPU 1)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (3; CPU 1)")
    parser.add_argument("--infer-images", type=int, help="images per inference timing (64; CPU 16)")
    parser.add_argument("--ff-gate", default="feedforward_fc", choices=["feedforward_fc", "feedforward_conv"],
                        help="the feedforward gate checked beside the recurrent one (FFGate-II, the authors' at 110)")
    parser.add_argument("--packing", type=int, nargs="+", help="concurrent training processes (1 2 4 8; CPU 1 2)")
    parser.add_argument("--packing-seconds", type=float, help="timed training per packing run (15; CPU 3)")
    parser.add_argument("--packing-arch", help="model trained by the packing processes (cifar10_resnet_<depth>)")
    parser.add_argument("--resume-iterations", type=int, help="SP and HRL iterations of the resume check (4; CPU 2)")
    parser.add_argument("--resume-val", type=int, help="validation images of the resume check (512; CPU 64)")
    parser.add_argument("--threads", type=int, help="CPU threads of torch (torch's default; CPU 1: on a shared "
                        "CPU two OpenMP threads made training steps 20x slower); packing splits them")
    parser.add_argument("--out", help="JSON path (benchmarks/results/gpu_check_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (use --device cpu)")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.batches + args.packing + [args.batch, args.steps, args.repeats, args.resume_val,
                                         args.infer_images]) < 1 or args.warmup < 0 or args.packing_seconds <= 0:
        parser.error("sizes, counts and --packing-seconds must be positive")
    if args.resume_iterations < 2:
        parser.error("--resume-iterations must be at least 2 (the checkpoint is saved halfway through HRL)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    args.out = args.out or f"benchmarks/results/gpu_check_{args.device}.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = device_info(device)
    started = time.perf_counter()
    print(f"gpu_check on {info['name']} ({device.type}): torch {info['torch']}, CUDA {info['cuda']}"
          + (f", cuDNN {info['cudnn']}, {info['memory_gib']} GiB, AMP {info['amp_dtype']}" if device.type == "cuda"
             else " (built with; not used), AMP off: autocast is a no-op on CPU"), flush=True)
    print(f"ResNet-{args.depth}, training batch {args.batch}, inference batches {args.batches}", flush=True)
    payload = {"benchmark": "gpu_check", "device": info, "machine": machine(),
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    errors = []

    if "correctness" in args.sections:
        t0 = time.perf_counter()
        checks = correctness(args, device)
        payload["correctness"] = {"passed": all(c["passed"] for c in checks), "checks": checks,
                                  "elapsed_s": time.perf_counter() - t0}
        print_correctness(checks)
    for name, fn in (("speed", speed), ("packing", packing)):
        if name not in args.sections:
            continue
        t0 = time.perf_counter()
        try:
            payload[name] = fn(args, device)
            payload[name]["elapsed_s"] = time.perf_counter() - t0
        except Exception as e:                                 # keep what the other sections measured
            payload[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc()}
            errors.append(f"{name}: {payload[name]['error']}")
    if "speed" in payload and "error" not in payload["speed"]:
        s = payload["speed"]
        tf32 = " (fp32 rows: cuDNN convs in TF32, torch's default)" if info.get("conv_fp32_precision") == "tf32" else ""
        print(f"\nspeed: SP training, SkipNet-{args.depth} recurrent vs plain ResNet-{args.depth}, "
              f"batch {args.batch}{tf32}")
        print_table(s["sp"], ["setting", "plain_img_s", "skipnet_img_s", "skipnet_vs_plain"])
        print("speed: HRL, executed-samples-only vs compute-everything (~50 % computation)")
        print_table(s["hrl"], ["setting", "executed_pct", "compute_everything_img_s", "executed_only_img_s",
                               "executed_only_vs_everything"])
        print("speed: inference, real skipping vs masked execution (~50 % computation)")
        print_table(s["inference"], ["setting", "batch", "computation_pct", "masked_img_s", "executor_img_s",
                                     "executor_vs_masked"])
    if "packing" in payload and "error" not in payload["packing"]:
        pk = payload["packing"]
        print(f"\npacking: concurrent {pk['arch']} training processes, batch {pk['batch']}, {pk['setting']}, "
              f"{pk['seconds']:g} s each")
        print_table(pk["rows"], ["processes", "total_img_s", "per_process_img_s", "slowest_process_img_s",
                                 "total_vs_best", "per_process_vs_fewest", "peak_mib_per_process"])
        share = (f"Tune resources gpu: {pk['recommended_gpu_per_trial']:g}" if device.type == "cuda"
                 else "CPU smoke run: not a GPU figure")
        print(f"recommendation: {pk['recommended_processes']} training process(es) per device ({share}); "
              f"rule: {pk['rule']}")
    payload["elapsed_s"] = time.perf_counter() - started
    print(f"\ntook {payload['elapsed_s']:.1f} s")
    write_json(args.out, payload)

    failed = [c for c in payload.get("correctness", {}).get("checks", []) if not c["passed"]]
    if failed:
        c, total = failed[0], len(payload["correctness"]["checks"])
        print(f"gpu_check: FAILED {c['check']}: {failure_reason(c)} ({len(failed)} of {total} correctness checks "
              f"failed; details in {args.out})", file=sys.stderr)
        return 1
    if errors:
        print(f"gpu_check: ERROR in {errors[0]} (details in {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
