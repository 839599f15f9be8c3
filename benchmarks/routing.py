"""Do the gates route? An alpha sweep of SkipNet-38 on the synthetic set, both gate types.

For each gate type: SP once, then HRL from it at every alpha. Each trained model is measured on
the validation split at the execute threshold 0.5 (top-1, computation %, the Spearman rank
correlation of per-image executed FLOPs with the synthetic difficulty, the p10/p50/p90 of
per-image computation, the number of distinct execution paths, per-gate skip ratios) and at
every threshold of ``--thresholds`` (its accuracy/computation curve). A routing model shows a
positive Spearman, a spread between p10 and p90 and many paths; a statically pruned one shows
skip ratios of 0 or 1, one path and a Spearman near 0.

``--sp-check`` instead trains SP and the plain ResNet the same way at batch 32 and 64 and two
data seeds, both gate types, and reports the accuracy gap and the blocks SP executes.

The metrics are computed here from the model's own decisions (not from ``evaluate``), so the
same script measures an older checkout: run it from that checkout's root for a "before" column.

    python benchmarks/routing.py [--depth 38] [--alphas 0.5,1,2,3,5,8] [--out benchmarks/results/routing.json]
    python benchmarks/routing.py --sp-check [--out benchmarks/results/sp_check.json]
    python benchmarks/routing.py --sp-check --depth 20 --difficulty 0.4,1 --seeds 0,1,2,3   # harder data
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, print_table, save_figure, write_json
from scipy.stats import spearmanr

import skipnet.core.models.skipnet as skipnet_module
from skipnet.core.config import load_train_config
from skipnet.core.data import difficulty, eval_batches
from skipnet.core.train import Engine

GATES = ("feedforward_conv", "recurrent")


def base_overrides(args, gate: str | None, seed: int, batch: int) -> dict:
    arch = f"cifar10_skipnet_{args.depth}_{gate}" if gate else f"cifar10_resnet_{args.depth}"
    return {"model.arch": arch, "seed": seed, "data.synthetic_size": args.train_size, "data.val_size": args.val_size,
            "data.synthetic_test_size": 500, "sp.batch_size": batch, "sp.iterations": args.sp_iterations,
            "sp.lr_milestones": [args.sp_iterations * 3 // 4], "hrl.batch_size": batch,
            "hrl.iterations": args.hrl_iterations, "hrl.lr": args.hrl_lr, "hrl.skip_compute": True,
            "eval.batch_size": 500, "threads": args.threads,
            **({"data.synthetic_difficulty": args.difficulty} if args.difficulty else {}),
            **({"sp.gate_warmup": args.gate_warmup} if args.gate_warmup is not None else {})}


class _Threshold:
    """Evaluate at an execute threshold: ``model.gate_threshold`` where the checkout has it, else
    by wrapping the decision function (older checkouts)."""

    def __init__(self, model, threshold: float):
        self.model, self.threshold = model, threshold

    def __enter__(self):
        if hasattr(self.model, "gate_threshold"):
            self.saved, self.model.gate_threshold = self.model.gate_threshold, self.threshold
        else:
            self.saved, threshold = skipnet_module.decide, self.threshold
            original = skipnet_module.decide

            def decide(logit, mode, training, temperature=1.0, forced=None, *rest):
                mask, decision, prob, log_prob = original(logit, mode, training, temperature, forced, *rest)
                if not training and forced is None:
                    decision = mask = (prob > threshold).to(prob.dtype)
                return mask, decision, prob, log_prob
            skipnet_module.decide = decide

    def __exit__(self, *exc):
        if hasattr(self.model, "gate_threshold"):
            self.model.gate_threshold = self.saved
        else:
            skipnet_module.decide = self.saved


@torch.no_grad()
def measure(engine: Engine, threshold: float, routing: bool) -> dict:
    model, dataset = engine.model, engine.splits.val
    model.eval()
    decisions, hits = [], []
    with _Threshold(model, threshold):
        for images, labels in eval_batches(dataset, 500):
            logits, record = model(images, skip_compute=True)
            decisions.append(record.decision)
            hits.append(logits.argmax(1) == labels)
    decision, hit = torch.cat(decisions), torch.cat(hits)
    per_image = engine.costs.computation_pct(decision)
    out = {"threshold": threshold, "val_top1": 100.0 * hit.float().mean().item(),
           "computation_pct": per_image.mean().item()}
    if routing:
        flops = engine.costs.executed_flops(decision).numpy()
        d = difficulty(dataset)[: len(flops)].numpy()
        rho = spearmanr(d, flops).correlation if flops.std() > 0 else 0.0
        q = torch.quantile(per_image.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        out.update(difficulty_spearman=float(rho), p10=q[0], p50=q[1], p90=q[2],
                   distinct_paths=int(torch.unique(decision, dim=0).shape[0]),
                   skip_ratio=[round(v, 3) for v in (1 - decision.mean(0)).tolist()])
    return out


def sweep(args) -> dict:
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for gate in args.gates:
            start = time.perf_counter()
            sp = Engine(load_train_config(None, {**base_overrides(args, gate, args.seed, args.batch), "stage": "sp"}))
            sp.train(args.sp_iterations)
            path = sp.save(Path(tmp) / f"sp_{gate}.pt")
            m = measure(sp, 0.5, routing=True)
            rows.append({"gate": gate, "alpha": "SP", **_row(m), "seconds": time.perf_counter() - start})
            print_row(rows[-1])
            for alpha in args.alphas:
                start = time.perf_counter()
                hrl = Engine(load_train_config(None, {**base_overrides(args, gate, args.seed, args.batch), "stage": "hrl",
                                                      "hrl.alpha": alpha, "hrl.init_checkpoint": str(path)}),
                             splits=sp.splits)
                hrl.train(args.hrl_iterations)
                m = measure(hrl, 0.5, routing=True)
                curve = [measure(hrl, t, routing=False) for t in args.thresholds]
                curves[f"{gate}/{alpha}"] = curve
                rows.append({"gate": gate, "alpha": alpha, **_row(m), "seconds": time.perf_counter() - start,
                             "curve": " ".join(f"{c['computation_pct']:.0f}:{c['val_top1']:.0f}" for c in curve)})
                print_row(rows[-1])
    return {"rows": rows, "curves": curves}


def _row(m: dict) -> dict:
    return {k: m[k] for k in ("val_top1", "computation_pct", "difficulty_spearman", "p10", "p50", "p90",
                              "distinct_paths", "skip_ratio")}


def print_row(row: dict) -> None:
    print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def sp_check(args) -> list[dict]:
    rows = []
    for batch in args.batches:
        for seed in args.seeds:
            plain = Engine(load_train_config(None, {**base_overrides(args, None, seed, batch), "stage": "base"}))
            plain.train(args.sp_iterations)
            plain_top1 = plain.evaluate("val")["val_top1"]
            for gate in args.gates:
                sp = Engine(load_train_config(None, {**base_overrides(args, gate, seed, batch), "stage": "sp"}),
                            splits=plain.splits)
                sp.train(args.sp_iterations)
                m = sp.evaluate("val")
                rows.append({"batch": batch, "seed": seed, "gate": gate, "plain_top1": plain_top1,
                             "sp_top1": m["val_top1"], "gap": plain_top1 - m["val_top1"],
                             "blocks_pct": m["val_block_count_pct"]})
                print_row(rows[-1])
    return rows


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gates = sorted({k.split("/")[0] for k in curves})
    fig, axes = plt.subplots(1, len(gates), figsize=(6 * len(gates), 4.5), squeeze=False)
    for ax, gate in zip(axes[0], gates):
        for key, curve in curves.items():
            if key.startswith(gate + "/"):
                ax.plot([c["computation_pct"] for c in curve], [c["val_top1"] for c in curve], "o-", ms=3,
                        label=f"alpha {key.split('/')[1]}")
        ax.set(title=f"{gate}: one curve per model (execute thresholds)", xlabel="computation %",
               ylabel="val top-1 %", xlim=(0, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=38)
    p.add_argument("--gates", type=lambda s: s.split(","), default=list(GATES))
    p.add_argument("--alphas", type=lambda s: [float(a) for a in s.split(",")], default=[0.5, 1, 2, 3, 5, 8])
    p.add_argument("--thresholds", type=lambda s: [float(t) for t in s.split(",")],
                   default=[0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95])
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--sp-iterations", type=int, default=300)
    p.add_argument("--hrl-iterations", type=int, default=150)
    p.add_argument("--hrl-lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--difficulty", type=lambda s: [float(d) for d in s.split(",")], default=None,
                   help="low,high: the synthetic difficulty range (data.synthetic_difficulty; default [0, 1])")
    p.add_argument("--gate-warmup", type=int, default=None, help="sp.gate_warmup (default: a third of SP)")
    p.add_argument("--sp-check", action="store_true")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[32, 64], help="--sp-check")
    p.add_argument("--seeds", type=lambda s: [int(b) for b in s.split(",")], default=[0, 1], help="--sp-check")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.sp_check:
        rows = sp_check(args)
        print_table(rows, ["batch", "seed", "gate", "plain_top1", "sp_top1", "gap", "blocks_pct"])
        write_json(args.out or Path("benchmarks/results/sp_check.json"), {"machine": machine(), "args": vars(args) | {"out": None}, "rows": rows})
        return
    result = sweep(args)
    print_table(result["rows"], ["gate", "alpha", "val_top1", "computation_pct", "difficulty_spearman", "p10", "p50",
                                 "p90", "distinct_paths", "seconds", "curve"])
    out = args.out or Path("benchmarks/results/routing.json")
    write_json(out, {"machine": machine(), "args": vars(args) | {"out": None}, **result})
    plot(result["curves"], out.with_suffix(".png"))


if __name__ == "__main__":
    main()
