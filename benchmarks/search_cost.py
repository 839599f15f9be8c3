"""Search cost with and without shared SP: the same pipeline search run twice.

A pipeline search over ``--trials`` trials of two gate types (feedforward_conv, recurrent) and a
log-uniform ``hrl.alpha``, on the synthetic data set with a CIFAR SkipNet-38, SP:HRL iterations
at the paper's 6.4:1 (64k:10k, scaled down by ``--hrl-iterations``). Run once with
``share_sp: false`` (every trial trains its own SP, as before) and once with sharing (one SP
per gate type, then HRL only), same seed, same sampled trials, FIFO (every trial to its end).

Reported per run: training iterations actually run (read from every result Tune stored, by
stage), wall time, and the final front's hypervolume (validation top-1 up, computation down,
reference: chance accuracy and 100 % computation), as a table and JSON. Since a shared trial
resumes the exact end-of-SP state an unshared trial reaches itself, both runs should end with
the same trials' metrics; the benchmark checks and reports that too.

    python benchmarks/search_cost.py [--trials 16] [--hrl-iterations 10] [--batch 16] [--cpus 2]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from _common import print_table, write_json

from skipnet.core.config import from_dict
from skipnet.fronts.pareto import hypervolume_2d
from skipnet.tune.experiment import ExperimentConfig
from skipnet.tune.runner import init_ray, run_search, search_cost

SP_TO_HRL = 6.4                    # the paper: 64,000 SP iterations, 10,000 HRL iterations


def experiment(args, workdir: Path, share: bool) -> ExperimentConfig:
    sp_iterations = int(round(SP_TO_HRL * args.hrl_iterations))
    name = "cost-shared" if share else "cost-unshared"
    return from_dict(ExperimentConfig, {
        "name": name, "share_sp": share, "seed": args.seed,
        "train": {"stage": "pipeline", "model": {"arch": "cifar10_rnn_gate_38"},
                  "data": {"name": "synthetic", "synthetic_size": 2000, "synthetic_test_size": 200, "val_size": 200},
                  "sp": {"batch_size": args.batch, "iterations": sp_iterations,
                         "lr_milestones": [sp_iterations * 3 // 4], "eval_every": sp_iterations},
                  "hrl": {"batch_size": args.batch, "iterations": args.hrl_iterations, "lr": 0.01,
                          "eval_every": args.hrl_iterations},
                  "eval": {"batch_size": 200}},
        "search_space": {"hrl.alpha": {"type": "loguniform", "low": 0.3, "high": 10.0},
                         "model.gate": {"type": "choice", "values": ["feedforward_conv", "recurrent"]}},
        "budget": {"iterations_per_step": args.hrl_iterations,
                   "max_steps": math.ceil(sp_iterations / args.hrl_iterations) + 1},
        "scheduler": {"type": "fifo"}, "num_samples": args.trials, "max_concurrent_trials": args.cpus,
        "storage_path": str(workdir / "searches"),
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment_name": name},
    }).validate()


def run(args, workdir: Path, share: bool) -> dict:
    start = time.perf_counter()
    summary = run_search(experiment(args, workdir, share))
    wall = time.perf_counter() - start
    cost = search_cost(summary.path)
    points = [(t["val_top1"], t["val_computation_pct"]) for t in summary.trials if t["val_top1"] is not None]
    hv = hypervolume_2d(points, (10.0, 100.0), ("max", "min")) / (90.0 * 100.0) * 100.0
    final = {(t["config"]["model"]["gate"], round(t["config"]["hrl"]["alpha"], 12)):
             (t["val_top1"], t["val_computation_pct"]) for t in summary.trials}
    return {"sharing": share, "trials": len(summary.trials), "errors": summary.errors, "sp_runs": summary.sp_runs,
            "sp_iterations": cost["sp"], "hrl_iterations": cost["hrl"], "iterations": cost["sp"] + cost["hrl"],
            "wall_s": wall, "hypervolume_pct": hv, "final": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--hrl-iterations", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/search_cost.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="search_cost-"))
    init_ray(None, num_cpus=args.cpus)
    rows = [run(args, workdir, share=False), run(args, workdir, share=True)]
    unshared, shared = rows
    same = unshared["final"] == shared["final"]
    print_table(rows, ["sharing", "trials", "errors", "sp_runs", "sp_iterations", "hrl_iterations", "iterations",
                       "wall_s", "hypervolume_pct"])
    ratio, speedup = unshared["iterations"] / shared["iterations"], unshared["wall_s"] / shared["wall_s"]
    print(f"compute: {ratio:.2f}x fewer iterations with sharing; wall time {speedup:.2f}x shorter; "
          f"hypervolume {shared['hypervolume_pct']:.2f} % vs {unshared['hypervolume_pct']:.2f} %; "
          f"identical final metrics per trial: {same}")
    for row in rows:
        row["final"] = [[g, a, *m] for (g, a), m in sorted(row["final"].items())]
    write_json(args.out, {"benchmark": "search_cost", "args": vars(args), "runs": rows,
                          "summary": {"compute_ratio": ratio, "wall_ratio": speedup, "identical_final_metrics": same}})


if __name__ == "__main__":
    main()
