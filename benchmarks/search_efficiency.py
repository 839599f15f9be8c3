"""Search efficiency: hypervolume against compute spent for FIFO, ASHA (scalar objective), MOASHA,
scalar PBT and MO-PBT (crowding distance or greedy scattered selection within a front).

Synthetic data set; ``--problem`` picks the network: ``rnn38`` (CIFAR SkipNet-38, recurrent gates)
or ``ff20`` (SkipNet-20, feedforward gates). SP is trained once (``--sp-iterations``)
and every trial runs HRL from that checkpoint, searching ``hrl.alpha`` and ``hrl.lr``: trials
differ only in what HRL does, so the schedulers' rungs compare something. (In a ``pipeline``
search every trial would repeat the same seeded SP and the early rungs would see identical
results.) The three searches get the same trials, in the same order: a grid of ``--alphas``
values log-spaced over ``--alpha-range`` times the ``--lrs`` values, each list shuffled with
``--seed`` (a grid, so that every trial is known beforehand; the experiments' random searcher
is seeded too since this benchmark found Tune's default unseeded), checked identical
afterwards; and the same
``--max-steps`` reports of ``--iterations-per-step`` HRL iterations each. FIFO runs every trial
to the end; ASHA (on ``objective`` = val_top1 - 0.2 x val_computation_pct) and MOASHA (Pareto
rank over val_top1 max / val_computation_pct min) use ``--grace-period`` and
``--reduction-factor``. PBT (on ``objective``) and MO-PBT start from the same grid as their
population and, every ``--perturbation-interval`` steps, let the bottom quarter (within the
gate family) copy a top-quarter member's checkpoint and perturb or resample alpha and lr inside
the grid's ranges.

Compute spent = HRL training iterations actually run (each result's ``iterations_trained``, so
a PBT member that continues from a donor's checkpoint counts only what it trains itself),
summed over trials in the order the results arrived (result timestamp, 1 s resolution; ties by
step). Hypervolume after each
result = area dominated by every (val_top1, val_computation_pct) point reported so far,
maximising accuracy and minimising computation, bounded by the reference point (chance
accuracy 10 %, computation 100 %), divided by the reference box (90 x 100 %^2), so 1 is the
unreachable ideal (100 % accuracy at 0 % computation). ``hv_last`` counts only each trial's
last result (the model a trial ends with) instead. Wall time is reported for information only.

    python benchmarks/search_efficiency.py [--problem rnn38|ff20] [--alphas 6] [--lrs 0.003 0.01 0.03]
        [--max-steps 9] [--iterations-per-step 10] [--grace-period 1] [--reduction-factor 3]
        [--perturbation-interval 2] [--schedulers fifo asha moasha pbt mopbt mopbt-scattered] [--seed 0]

The JSON's ``summary.<scheduler>.compute_fraction_to_target`` is the fraction of FIFO's compute
at which a scheduler first reached ``--target`` (95 %) of FIFO's final hypervolume (null:
never); ``rank_correlation`` says how well early results predict final ones among FIFO's trials.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skipnet.core.config import from_dict, load_train_config
from skipnet.core.train import Engine
from skipnet.fronts.pareto import hypervolume_2d, is_pareto_front
from _common import machine, print_table, save_figure, write_json

NUM_CLASSES = 10                                  # the synthetic data set (skipnet/core/data.py)
PROBLEMS = {                                      # network and the alpha range its gates respond to
    "rnn38": {"arch": "cifar10_rnn_gate_38", "alpha_range": [1.0, 20.0]},
    "ff20": {"arch": "cifar10_skipnet_20_feedforward_conv", "alpha_range": [0.5, 20.0]},
}
REF = (100.0 / NUM_CLASSES, 100.0)               # (val_top1 = chance, val_computation_pct = 100)
DIRECTIONS = ("max", "min")
BOX = (100.0 - REF[0]) * REF[1]                  # hypervolume of the ideal point (100 %, 0 %)
DATA = {"name": "synthetic", "synthetic_size": 6000, "synthetic_test_size": 200, "val_size": 500}
SCHEDULERS = ("fifo", "asha", "moasha", "pbt", "mopbt", "mopbt-scattered")


def train_sp(path: Path, arch: str, iterations: int, seed: int) -> dict:
    """The shared SP model every trial starts HRL from."""
    cfg = load_train_config(None, {
        "stage": "sp", "seed": seed, "model.arch": arch, **{f"data.{k}": v for k, v in DATA.items()},
        "sp.iterations": iterations, "sp.batch_size": 64, "sp.lr_milestones": [iterations * 3 // 4],
        "sp.gate_warmup": iterations // 3, "eval.batch_size": 500, "output_dir": str(path.parent)})
    start = time.perf_counter()
    engine = Engine(cfg)
    engine.train(iterations)
    metrics = engine.evaluate("val")
    engine.save(path)
    return {"iterations": iterations, "wall_s": time.perf_counter() - start,
            "val_top1": metrics["val_top1"], "val_computation_pct": metrics["val_computation_pct"]}


def search_space(args) -> dict:
    """The grid: alpha log-spaced over the range, both lists shuffled with the seed (Tune varies
    the first key fastest, so trials run alpha by alpha within each lr)."""
    rng = np.random.default_rng(args.seed)
    alphas = np.geomspace(*alpha_range(args), args.alphas).round(4).tolist()
    return {"hrl.alpha": {"type": "grid", "values": [alphas[i] for i in rng.permutation(len(alphas))]},
            "hrl.lr": {"type": "grid", "values": [args.lrs[i] for i in rng.permutation(len(args.lrs))]}}


def alpha_range(args) -> list[float]:
    return args.alpha_range or PROBLEMS[args.problem]["alpha_range"]


def mutations(args, workdir: Path) -> Path:
    """PBT's mutations: alpha and lr anywhere in the grid's ranges (log scale)."""
    low, high = alpha_range(args)
    path = workdir / "mutations.yaml"
    path.write_text(f"hrl.alpha: {{type: loguniform, low: {low}, high: {high}}}\n"
                    f"hrl.lr: {{type: loguniform, low: {min(args.lrs)}, high: {max(args.lrs)}}}\n")
    return path


def experiment(kind: str, args, sp_checkpoint: Path, workdir: Path):
    from skipnet.tune.experiment import ExperimentConfig
    hrl_iterations = args.max_steps * args.iterations_per_step
    scheduler = {"type": kind.split("-")[0], "metric": "objective", "objective_weight": 0.2,
                 "grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    if scheduler["type"] in ("pbt", "mopbt"):
        scheduler.update(perturbation_interval=args.perturbation_interval, quantile_fraction=0.25,
                         mutations=str(mutations(args, workdir)))
    if kind == "mopbt-scattered":
        scheduler["diversity"] = "scattered"
    if scheduler["type"] == "mopbt":
        del scheduler["metric"]                    # MO-PBT ranks by both objectives
    data = {
        "name": f"efficiency-{kind}",
        "train": {"stage": "hrl", "model": {"arch": PROBLEMS[args.problem]["arch"]}, "data": DATA,
                  "hrl": {"iterations": hrl_iterations, "batch_size": args.batch_size, "baseline": "batch_mean",
                          "init_checkpoint": str(sp_checkpoint)},
                  "eval": {"batch_size": 500}},
        "search_space": search_space(args),
        "budget": {"iterations_per_step": args.iterations_per_step, "max_steps": args.max_steps},
        "scheduler": scheduler,
        "searcher": {"type": "grid"}, "num_samples": 1,
        "max_concurrent_trials": args.concurrent, "resources": {"cpu": 1},
        "storage_path": str(workdir / "searches"),
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment_name": "search-efficiency"},
        "seed": args.seed}
    return from_dict(ExperimentConfig, data).validate()


def run_one(kind: str, args, sp_checkpoint: Path, workdir: Path) -> dict:
    from ray.tune import ExperimentAnalysis

    from skipnet.tune.runner import run_search
    exp = experiment(kind, args, sp_checkpoint, workdir)
    start = time.perf_counter()
    summary = run_search(exp)
    wall = time.perf_counter() - start
    analysis = ExperimentAnalysis(summary.path)
    frames = analysis.trial_dataframes
    results, configs = [], {}
    for order, trial in enumerate(sorted(analysis.trials, key=lambda t: t.trial_id)):
        frame = frames.get(trial.trial_id)
        if frame is None or frame.empty:
            continue
        first = frame.sort_values("training_iteration").iloc[0]     # PBT changes config: the start
        configs[trial.trial_id] = (round(float(first["config/hrl/alpha"]), 12), round(float(first["config/hrl/lr"]), 12))
        for row in frame.sort_values("training_iteration").itertuples(index=False):
            results.append({"timestamp": float(row.timestamp), "step": int(row.training_iteration), "order": order,
                            "trial_id": trial.trial_id, "compute": int(row.iterations_trained),
                            "val_top1": float(row.val_top1), "val_computation_pct": float(row.val_computation_pct)})
    results.sort(key=lambda r: (r["timestamp"], r["step"], r["order"]))
    points, curve, spent = [], [], 0
    for r in results:
        spent += r["compute"]
        points.append((r["val_top1"], r["val_computation_pct"]))
        curve.append((spent, hypervolume_2d(points, REF, DIRECTIONS) / BOX))
    last, steps = {}, {}
    for r in results:
        last[r["trial_id"]] = (r["val_top1"], r["val_computation_pct"])
        steps[r["trial_id"]] = max(steps.get(r["trial_id"], 0), r["step"])
    pts = np.asarray(points) if points else np.zeros((0, 2))
    front = pts[is_pareto_front(pts, DIRECTIONS)] if len(pts) else pts
    final = np.asarray(list(last.values())) if last else np.zeros((0, 2))
    return {"scheduler": kind, "search_path": summary.path, "wall_s": wall, "errors": summary.errors,
            "trials": len(configs), "configs": configs, "curve": curve,
            "hv": curve[-1][1] if curve else 0.0, "compute": spent,
            "hv_last": hypervolume_2d(list(last.values()), REF, DIRECTIONS) / BOX if last else 0.0,
            "front_last_size": int(is_pareto_front(final, DIRECTIONS).sum()) if len(final) else 0,
            "steps_per_trial": sorted(steps.values(), reverse=True),
            "results": [[r["order"], r["step"], r["compute"], r["timestamp"], r["val_top1"], r["val_computation_pct"]]
                        for r in results],     # arrival order: trial index, step, iterations, ...
            "front": sorted(map(tuple, front.tolist()), key=lambda p: p[1])}


def rank_correlations(run: dict) -> dict:
    """Spearman correlation, over the trials that reached the last step, between each step's
    metric and the last step's: how much an early rung says about where a trial ends."""
    by_trial: dict[int, dict[int, tuple[float, float]]] = {}
    for order, step, _, _, top1, comp in run["results"]:
        by_trial.setdefault(order, {})[step] = (top1, comp)
    last = max((max(s) for s in by_trial.values()), default=0)
    full = [s for s in by_trial.values() if all(k in s for k in range(1, last + 1))]
    out = {}
    for name, j in (("val_top1", 0), ("val_computation_pct", 1), ("objective", None)):
        def value(point):
            return point[0] - 0.2 * point[1] if j is None else point[j]
        final = [value(s[last]) for s in full]
        out[name] = {str(k): round(_spearman([value(s[k]) for s in full], final), 3) for k in range(1, last)}
    return {"trials": len(full), "last_step": last, "by_step": out}


def _spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compute_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((c for c, hv in curve if hv >= target), None)


def hv_within(curve: list[tuple[int, float]], compute: float) -> float:
    return max((hv for c, hv in curve if c <= compute), default=0.0)


def plot(runs: dict, target_hv: float, fifo_compute: int, budget: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (kind, run) in enumerate(runs.items()):
        xs = [0] + [c / fifo_compute for c, _ in run["curve"]]
        ys = [0.0] + [hv for _, hv in run["curve"]]
        ax.step(xs, ys, where="post", label=f"{kind} (final {run['hv']:.3f})")
        front = np.asarray(run["front"])
        if len(front):
            width = 2 * (len(runs) - i)             # wider below, so coinciding fronts stay visible
            ax2.step(front[:, 1], front[:, 0], where="post", marker="o", lw=width, ms=2 + 2 * width, alpha=0.7,
                     label=kind)
    ax.axhline(target_hv, color="grey", ls="--", lw=0.8, label="95 % of FIFO's final HV")
    ax.axvline(budget, color="grey", ls=":", lw=0.8, label=f"{budget:.0%} of FIFO's compute")
    ax.set_xlabel("compute spent (HRL iterations, fraction of FIFO's total)")
    ax.set_ylabel("hypervolume (fraction of the reference box)")
    ax.set_title("Hypervolume against compute")
    ax.legend(loc="lower right", fontsize=8)
    ax2.set_xlabel("val computation %")
    ax2.set_ylabel("val top-1 %")
    ax2.set_title("Final Pareto fronts (all reported points)")
    ax2.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="rnn38")
    parser.add_argument("--alphas", type=int, default=6, help="number of hrl.alpha values")
    parser.add_argument("--alpha-range", type=float, nargs=2, help="default: the problem's")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03], help="hrl.lr values")
    parser.add_argument("--max-steps", type=int, default=9)
    parser.add_argument("--iterations-per-step", type=int, default=10)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--perturbation-interval", type=int, default=2, help="PBT and MO-PBT, in steps")
    parser.add_argument("--batch-size", type=int, default=32, help="HRL batch size")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at a time (one CPU each)")
    parser.add_argument("--sp-iterations", type=int, default=300)
    parser.add_argument("--sp-checkpoint", help="reuse (or write) the shared SP checkpoint here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=list(SCHEDULERS))
    parser.add_argument("--target", type=float, default=0.95, help="fraction of FIFO's final hypervolume")
    parser.add_argument("--budget", type=float, default=0.30, help="fraction of FIFO's compute")
    parser.add_argument("--workdir", help="searches and MLflow store (default: a temporary folder, removed)")
    parser.add_argument("--out", default="benchmarks/results/search_efficiency.json")
    parser.add_argument("--png", default="benchmarks/results/search_efficiency.png")
    args = parser.parse_args()
    if "fifo" not in args.schedulers:
        parser.error("--schedulers must include fifo (the reference)")

    started = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="search_efficiency-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sp_path = Path(args.sp_checkpoint).resolve() if args.sp_checkpoint else workdir / "sp.pt"
    if sp_path.is_file():
        sp = {"reused": str(sp_path)}
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        sp_path.parent.mkdir(parents=True, exist_ok=True)
        sp = train_sp(sp_path, PROBLEMS[args.problem]["arch"], args.sp_iterations, args.seed)
        print(f"SP: {sp}")
    runs = {}
    try:
        for kind in args.schedulers:
            runs[kind] = run_one(kind, args, sp_path, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    fifo = runs["fifo"]
    target_hv = args.target * fifo["hv"]
    same = all(list(r["configs"].values()) == list(fifo["configs"].values()) for r in runs.values())
    rows = []
    for kind, run in runs.items():
        reach = compute_to_reach(run["curve"], target_hv)
        frac = reach / fifo["compute"] if reach is not None else None
        rows.append({"scheduler": kind, "trials": run["trials"],
                     "finished": sum(s == args.max_steps for s in run["steps_per_trial"]),
                     "hv_pct_box": round(100 * run["hv"], 2), "hv_pct_of_fifo": round(100 * run["hv"] / fifo["hv"], 1),
                     "hv_last_pct_box": round(100 * run["hv_last"], 2), "front_last": run["front_last_size"],
                     "compute_iters": run["compute"],
                     "compute_pct_of_fifo": round(100 * run["compute"] / fifo["compute"], 1),
                     "hv_at_budget_pct_of_fifo": round(100 * hv_within(run["curve"], args.budget * fifo["compute"])
                                                       / fifo["hv"], 1),
                     "iters_to_95pct": reach,
                     "pct_fifo_compute_to_95pct": round(100 * frac, 1) if frac is not None else None,
                     "meets_target": frac is not None and frac <= args.budget,
                     "wall_s": round(run["wall_s"], 1), "errors": run["errors"]})
    print()
    print(f"trials identical across searches: {same}; FIFO final HV {100 * fifo['hv']:.2f} % of the box, "
          f"target {args.target:.0%} of it = {100 * target_hv:.2f} % within {args.budget:.0%} of FIFO's "
          f"{fifo['compute']} iterations")
    correlation = rank_correlations(fifo)
    print(f"rank correlation of early and final results among FIFO's trials: {correlation['by_step']}")
    print_table(rows, ["scheduler", "trials", "finished", "hv_pct_box", "hv_pct_of_fifo", "hv_last_pct_box", "front_last", "compute_iters",
                       "compute_pct_of_fifo", "hv_at_budget_pct_of_fifo", "iters_to_95pct", "pct_fifo_compute_to_95pct", "meets_target",
                       "wall_s", "errors"])
    total = time.perf_counter() - started
    print(f"total wall time {total:.0f} s")
    plot(runs, target_hv, fifo["compute"], args.budget, Path(args.png))
    write_json(args.out, {
        "benchmark": "search_efficiency", "machine": machine(), "args": vars(args),
        "arch": PROBLEMS[args.problem]["arch"], "data": DATA,
        "search_space": search_space(args), "reference_point": {"val_top1": REF[0], "val_computation_pct": REF[1]},
        "hv_normalisation": f"divided by the reference box {BOX:g} (%^2): 1 = 100 % accuracy at 0 % computation",
        "sp": sp, "trials_identical": same, "fifo_final_hv": fifo["hv"], "target_hv": target_hv,
        "total_wall_s": total, "rows": rows, "rank_correlation": correlation,
        "summary": {r["scheduler"]: {"compute_fraction_to_target": None if r["iters_to_95pct"] is None
                                     else r["iters_to_95pct"] / fifo["compute"],
                                     "hv_pct_of_fifo": r["hv_pct_of_fifo"], "meets_target": r["meets_target"]}
                    for r in rows},
        "runs": {k: {key: v for key, v in r.items() if key != "configs"} | {"configs": list(r["configs"].values())}
                 for k, r in runs.items()}})


if __name__ == "__main__":
    main()
