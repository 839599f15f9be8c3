"""Speed-up of real skipping (the executor) over masked execution, CIFAR ResNet-110.

Gate decisions are forced to patterns that execute about 25/50/75 % of the gated blocks (at
batch 256 every sample draws its own pattern), so the comparison isolates execution strategy.
Masked execution is what the authors' code does: every block computed, then masked. The plain
ResNet-110 is timed beside it.

    python benchmarks/skip_speed.py [--arch cifar10_rnn_gate_rl_110] [--out benchmarks/results/skip_speed.json]
"""
from __future__ import annotations

import argparse

import torch

import skipnet
from _common import best_time, machine, print_table, write_json


def exact_patterns(batch: int, num_gates: int, fraction: float, seed: int) -> torch.Tensor:
    """(batch, G) decisions, each row executing exactly round(fraction * G) random gated blocks."""
    g = torch.Generator().manual_seed(seed)
    k = round(fraction * num_gates)
    order = torch.rand(batch, num_gates, generator=g).argsort(1)
    return (order < k).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cifar10_rnn_gate_rl_110")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/skip_speed.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = skipnet.create_model(args.arch).eval()
    plain = skipnet.create_model(args.arch.replace("rnn_gate_rl", "resnet").replace("rnn_gate", "resnet")
                                 if "cifar" in args.arch else "cifar10_resnet_110").eval()
    costs = skipnet.block_costs(model)
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, 32, 32)
        calls = max(1, 64 // batch)                       # enough work per timing at batch 1
        reps = args.repeats if batch > 1 else args.repeats * 3

        def timed(fn):
            return best_time(lambda: [fn() for _ in range(calls)], reps) / calls

        with torch.no_grad():
            t_plain = timed(lambda: plain(x))
            for frac in args.fractions:
                decisions = exact_patterns(batch, model.num_gates, frac, seed=int(frac * 1000) + batch)
                t_masked = timed(lambda: model(x, decisions=decisions))
                t_exec = timed(lambda: model(x, skip_compute=True, decisions=decisions))
                rows.append({
                    "batch": batch, "executed_blocks_pct": round(100 * decisions.mean().item(), 1),
                    "computation_pct": round(costs.computation_pct(decisions).mean().item(), 1),
                    "masked_img_s": batch / t_masked, "executor_img_s": batch / t_exec,
                    "plain_img_s": batch / t_plain, "speedup_vs_masked": t_masked / t_exec,
                    "speedup_vs_plain": t_plain / t_exec})
    print_table(rows, ["batch", "computation_pct", "executed_blocks_pct", "masked_img_s", "executor_img_s",
                       "plain_img_s", "speedup_vs_masked", "speedup_vs_plain"])
    write_json(args.out, {"benchmark": "skip_speed", "arch": args.arch, "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
