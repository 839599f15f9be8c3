"""Training throughput and peak memory of SP and HRL steps, CIFAR ResNet-110, batch 128.

HRL is measured twice at about 50 % computation (gate logits zeroed, so every action is a
fair coin): computing every block and masking (the authors' behaviour), and executing each
block only on the samples that run it (``hrl.skip_compute``). Each configuration runs in its
own process so peak memory (max RSS on CPU, max allocated on CUDA) is its own.

    python benchmarks/train_speed.py [--batch 128] [--steps 5] [--out benchmarks/results/train_speed.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import skipnet
from skipnet.train.steps import hrl_step, supervised_step
from _common import machine, print_table, write_json

CONFIGS = [
    {"stage": "sp", "arch": "cifar10_rnn_gate_110", "skip_compute": False},
    {"stage": "sp", "arch": "cifar10_feedforward_110", "skip_compute": False},
    {"stage": "hrl", "arch": "cifar10_rnn_gate_rl_110", "skip_compute": False},
    {"stage": "hrl", "arch": "cifar10_rnn_gate_rl_110", "skip_compute": True},
    {"stage": "hrl", "arch": "cifar10_feedforward_rl_110", "skip_compute": False},
    {"stage": "hrl", "arch": "cifar10_feedforward_rl_110", "skip_compute": True},
]


def fair_coin_gates(model: torch.nn.Module) -> None:
    """Zero each gate's output layer: probability 0.5 everywhere, about 50 % computation."""
    for name, p in model.named_parameters():
        if name.startswith("control.proj") or ".linear_layer." in name:
            p.data.zero_()


def measure(cfg: dict, batch: int, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    model = skipnet.create_model(cfg["arch"]).to(device).train()
    if cfg["stage"] == "hrl":
        fair_coin_gates(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        if cfg["stage"] == "sp":
            return supervised_step(model, x, y, optimizer)
        return hrl_step(model, x, y, optimizer, alpha=0.1, rl_weight=0.01, gamma=1.0,
                        skip_compute=cfg["skip_compute"])

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    executed, start = [], time.perf_counter()
    for _ in range(steps):
        executed.append(step().executed_fraction)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**cfg, "images_per_s": batch * steps / elapsed, "executed_pct": 100 * sum(executed) / len(executed),
            "peak_mib": peak / 2**20, "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one), args.batch, args.steps, args.device)))
        return
    rows = []
    for cfg in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg), "--batch", str(args.batch),
                              "--steps", str(args.steps), "--device", args.device],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {cfg['stage']} {cfg['arch']} skip_compute={cfg['skip_compute']}: "
              f"{rows[-1]['images_per_s']:.1f} img/s", flush=True)
    for r in rows:
        if r["stage"] == "hrl" and r["skip_compute"]:
            base = next(b for b in rows if b["arch"] == r["arch"] and b["stage"] == "hrl" and not b["skip_compute"])
            r["speedup_vs_compute_everything"] = r["images_per_s"] / base["images_per_s"]
    print_table(rows, ["stage", "arch", "skip_compute", "executed_pct", "images_per_s", "peak_mib",
                       "speedup_vs_compute_everything"])
    write_json(args.out, {"benchmark": "train_speed", "batch": args.batch, "steps": args.steps,
                          "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
