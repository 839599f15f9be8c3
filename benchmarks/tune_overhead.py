"""Overhead of running the training loop inside ``SkipNetTrainable`` (Ray Tune) vs the bare loop.

Same TrainConfig, same number of iterations per step. The bare loop times ``Engine.train`` plus
validation per step; the Tune side reports Tune's own ``time_this_iter_s`` (the step) and the
wall time between consecutive results (the step plus checkpointing and reporting).

    python benchmarks/tune_overhead.py [--iterations-per-step 20] [--steps 6]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from skipnet.core.config import load_train_config
from skipnet.core.train.engine import Engine
from _common import machine, print_table, write_json

TRAIN = {"stage": "sp", "model.arch": "cifar10_rnn_gate_38", "data.synthetic_size": 3000,
         "data.synthetic_test_size": 500, "data.val_size": 500, "sp.batch_size": 64, "sp.lr_milestones": [],
         "eval.batch_size": 250}


def bare(iterations: int, steps: int, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    cfg = load_train_config(None, dict(TRAIN, **{"sp.iterations": iterations * steps}))
    engine, times = Engine(cfg), []
    for _ in range(steps):
        start = time.perf_counter()
        engine.train(iterations)
        engine.evaluate("val")
        times.append(time.perf_counter() - start)
    return times


def tuned(iterations: int, steps: int, threads: int) -> tuple[list[float], list[float]]:
    from ray import tune

    from skipnet.core.config import set_dotted
    from skipnet.tune.runner import init_ray
    from skipnet.tune.trainable import SkipNetTrainable
    base: dict = {}
    for k, v in dict(TRAIN, **{"sp.iterations": iterations * steps}).items():
        set_dotted(base, k, v)
    init_ray(None, num_cpus=threads)
    trainable = tune.with_resources(tune.with_parameters(SkipNetTrainable, base=base, iterations_per_step=iterations),
                                    {"cpu": threads})
    with tempfile.TemporaryDirectory() as storage:
        result = tune.Tuner(trainable, param_space={}, run_config=tune.RunConfig(
            storage_path=storage, stop={"training_iteration": steps}, verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=2))).fit()[0]
        frame = result.metrics_dataframe
    step_times = frame["time_this_iter_s"].tolist()
    walls = frame["timestamp"].diff().dropna().tolist()
    return step_times, walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations-per-step", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="benchmarks/results/tune_overhead.json")
    args = parser.parse_args()
    b = bare(args.iterations_per_step, args.steps, args.threads)[1:]        # first step warms up
    t, walls = tuned(args.iterations_per_step, args.steps, args.threads)
    t = t[1:]
    bare_s, tune_s = statistics.median(b), statistics.median(t)
    wall_s = statistics.median(walls) if walls else float("nan")
    rows = [{"what": "bare Engine.train + evaluate", "seconds_per_step": bare_s, "overhead_pct": 0.0},
            {"what": "SkipNetTrainable.step (time_this_iter_s)", "seconds_per_step": tune_s,
             "overhead_pct": 100 * (tune_s / bare_s - 1)},
            {"what": "Tune wall time between results (incl. checkpoint)", "seconds_per_step": wall_s,
             "overhead_pct": 100 * (wall_s / bare_s - 1)}]
    print_table(rows, ["what", "seconds_per_step", "overhead_pct"])
    write_json(args.out, {"benchmark": "tune_overhead", "iterations_per_step": args.iterations_per_step,
                          "steps": args.steps, "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
