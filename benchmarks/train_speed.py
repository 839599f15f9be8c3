"""Training throughput and peak memory of SP and HRL steps, CIFAR ResNet-110, batch 128.

HRL is measured twice at about 50 % computation (gate logits zeroed, so every action is a
fair coin): computing every block and masking (the authors' behaviour), and executing each
block only on the samples that run it (``hrl.skip_compute``). Each configuration runs in its
own process so peak memory (max RSS on CPU, max allocated on CUDA) is its own.

On a busy machine: ``--busy N [N ...]`` measures everything beside N CPU-bound processes
(Python busy loops this script starts and kills by PID; 0 = none started), ``--settings``
compares CPU thread settings, each in a fresh process so OpenMP reads its environment anew
(``default``: torch's own, one thread per CPU, libgomp spinning about 3 ms before it sleeps;
``passive``: ``OMP_WAIT_POLICY=passive``; ``one``: one intra-op thread; ``free``: one thread per
CPU that other work leaves idle, from /proc/stat sampled for 0.25 s as the process starts;
``passive_free``: both; ``policy``: what ``skipnet train`` does, ``skipnet.core.threads``).
``--quickstart`` measures the quickstart's training instead (experiments/quickstart_train.yaml
through the Engine: SkipNet-38 with recurrent gates, synthetic data, batch 64, SP then HRL
iterations). ``vs_idle`` divides by the same setting with no busy process, ``vs_fair`` by the
best idle rate's fair share, 1/(N+1) of it: 1.0 is what sharing the machine evenly allows, 0.5
is 2x behind.

    python benchmarks/train_speed.py [--batch 128] [--steps 5] [--out benchmarks/results/train_speed.json]
    python benchmarks/train_speed.py --quickstart --busy 0 1 2 --settings default free passive one policy \
        --out benchmarks/results/train_speed_busy.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch           # before skipnet: each setting's environment, not skipnet's hook, sets libgomp's wait

import skipnet
from skipnet.core import threads
from skipnet.core.train.steps import hrl_step, supervised_step
from _common import machine, print_table, write_json

CONFIGS = [
    {"stage": "sp", "arch": "cifar10_rnn_gate_110", "skip_compute": False},
    {"stage": "sp", "arch": "cifar10_feedforward_110", "skip_compute": False},
    {"stage": "hrl", "arch": "cifar10_rnn_gate_rl_110", "skip_compute": False},
    {"stage": "hrl", "arch": "cifar10_rnn_gate_rl_110", "skip_compute": True},
    {"stage": "hrl", "arch": "cifar10_feedforward_rl_110", "skip_compute": False},
    {"stage": "hrl", "arch": "cifar10_feedforward_rl_110", "skip_compute": True},
]
QUICKSTART = Path(__file__).resolve().parent.parent / "experiments" / "quickstart_train.yaml"
# thread settings: environment of the fresh process, intra-op threads (None: torch's default)
SETTINGS = {"default": ({}, None), "passive": ({"OMP_WAIT_POLICY": "passive"}, None), "one": ({}, 1),
            "free": ({}, "free"), "passive_free": ({"OMP_WAIT_POLICY": "passive"}, "free"),
            "policy": (None, "policy")}
OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
    return {**cfg, "images_per_s": batch * steps / elapsed, "it_per_s": steps / elapsed,
            "executed_pct": 100 * sum(executed) / len(executed), "peak_mib": peak / 2**20, "device": device}


def measure_quickstart(batch: int, steps: int, seconds: float) -> list[dict]:
    """Iterations/s of the quickstart's SP, then HRL, through the Engine (its data pipeline
    included): one warm-up step, then ``steps`` steps or ``seconds``, whichever ends first
    (at least two steps)."""
    import tempfile

    from skipnet.core.config import load_train_config
    from skipnet.core.train.engine import Engine
    with tempfile.TemporaryDirectory() as out:       # the Engine writes nothing; fit is not called
        cfg = load_train_config(QUICKSTART, {"sp.batch_size": batch, "hrl.batch_size": batch, "output_dir": out,
                                             "device": "cpu"})
        engine, rows = Engine(cfg), []
        for stage in ("sp", "hrl"):
            if stage == "hrl":
                engine.iteration = cfg.sp.iterations     # end SP here: the next step enters HRL
            engine.step()
            n, start = 0, time.perf_counter()
            while n < 2 or (n < steps and time.perf_counter() - start < seconds):
                engine.step()
                n += 1
            elapsed = time.perf_counter() - start
            rows.append({"stage": stage, "arch": cfg.model.arch, "skip_compute": False, "it_per_s": n / elapsed,
                         "images_per_s": batch * n / elapsed, "steps": n, "device": "cpu"})
    return rows


def free_cpus(interval: float = 0.25) -> int:
    """Usable CPUs that other work left idle over ``interval`` s (/proc/stat), at least one; a
    CPU counts when 80 % of it was idle."""
    def ticks() -> dict[str, tuple[int, int]]:       # cpuN -> (busy, total); steal counts as busy
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                t = [int(v) for v in fields[:8]]      # user nice system idle iowait irq softirq steal
                out[name] = (sum(t) - t[3] - t[4], sum(t))
        return out
    before = ticks()
    time.sleep(interval)
    after = ticks()
    busy = sum((after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1])
               for c in (f"cpu{i}" for i in os.sched_getaffinity(0)))
    usable = threads.usable_cpus()
    return max(1, min(usable, int(usable - busy + 0.2)))


def apply_setting(name: str) -> dict:
    """Set this (fresh) process's intra-op threads for setting ``name``; what it ran with."""
    rule = SETTINGS[name][1]
    free = None
    if rule == "free":
        free = free_cpus()
        torch.set_num_threads(free)
    elif rule == "policy":
        threads.configure(None)
    elif rule is not None:
        torch.set_num_threads(rule)
    return {"setting": name, "threads": torch.get_num_threads(), "free_cpus": free}


def setting_env(name: str) -> dict:
    """The environment of a fresh process for setting ``name`` (OpenMP variables of ours removed)."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    extra = SETTINGS[name][0]
    if extra is None:
        threads.prepare_openmp(env)
    else:
        env.update(extra)
    return env


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` CPU-bound Python processes (busy loops) for the duration; killed by PID."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def compare(rows: list[dict]) -> None:
    """Add ``vs_idle`` and ``vs_fair`` (see the module docstring) to each row."""
    def key(r):
        return r["stage"], r["arch"], r["skip_compute"]
    for r in rows:
        idle = [b for b in rows if key(b) == key(r) and b["busy"] == 0]
        same = [b for b in idle if b["setting"] == r["setting"]]
        if same:
            r["vs_idle"] = r["it_per_s"] / same[0]["it_per_s"]
        if idle:
            r["vs_fair"] = r["it_per_s"] * (r["busy"] + 1) / max(b["it_per_s"] for b in idle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="128; 64 with --quickstart")
    parser.add_argument("--steps", type=int, default=None, help="5; with --quickstart at most 20 per stage")
    parser.add_argument("--seconds", type=float, default=8.0, help="--quickstart: time per stage (after 2 steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quickstart", action="store_true", help="the quickstart's SP and HRL training (SkipNet-38)")
    parser.add_argument("--busy", type=int, nargs="+", default=[0], metavar="N",
                        help="CPU-bound processes running beside the measurement, one pass per N (default 0)")
    parser.add_argument("--settings", nargs="+", default=["default"], choices=list(SETTINGS),
                        help="CPU thread settings, each in a fresh process (default: torch's own)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over busy x settings; the median is kept")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--setting", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = parser.parse_args()
    batch = args.batch or (64 if args.quickstart else 128)
    steps = args.steps or (20 if args.quickstart else 5)
    if args.one:
        used = apply_setting(args.setting)
        rows = (measure_quickstart(batch, steps, args.seconds) if args.quickstart
                else [measure(json.loads(args.one), batch, steps, args.device)])
        print(json.dumps([{**r, **used} for r in rows]))
        return
    configs = [{"quickstart": True}] if args.quickstart else CONFIGS
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.rounds):
        for n in args.busy:
            with busy_processes(n):
                for setting in args.settings:
                    for cfg in configs:
                        cmd = [sys.executable, __file__, "--one", json.dumps(cfg), "--setting", setting,
                               "--batch", str(batch), "--steps", str(steps), "--seconds", str(args.seconds),
                               "--device", args.device] + (["--quickstart"] if args.quickstart else [])
                        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=setting_env(setting))
                        for r in json.loads(out.stdout.strip().splitlines()[-1]):
                            r["busy"], r["wait_policy"] = n, setting_env(setting).get("OMP_WAIT_POLICY", "")
                            runs.setdefault((n, setting, r["stage"], r["arch"], r["skip_compute"]), []).append(r)
                            print(f"  busy {n} {setting} ({r['threads']} threads) {r['stage']} {r['arch']} "
                                  f"skip_compute={r['skip_compute']}: {r['it_per_s']:.2f} it/s", flush=True)
    rows = []
    for measured in runs.values():
        row = dict(measured[0], it_per_s=statistics.median(r["it_per_s"] for r in measured),
                   images_per_s=statistics.median(r["images_per_s"] for r in measured),
                   rounds=[round(r["it_per_s"], 3) for r in measured])
        rows.append(row)
    for r in rows:
        if r["stage"] == "hrl" and r["skip_compute"]:
            base = next(b for b in rows if b["arch"] == r["arch"] and b["stage"] == "hrl" and not b["skip_compute"]
                        and b["busy"] == r["busy"] and b["setting"] == r["setting"])
            r["speedup_vs_compute_everything"] = r["images_per_s"] / base["images_per_s"]
    compare(rows)
    columns = ["busy", "setting", "threads", "wait_policy", "stage", "arch", "skip_compute", "it_per_s",
               "images_per_s", "vs_idle", "vs_fair"]
    if not args.quickstart:
        columns += ["executed_pct", "peak_mib", "speedup_vs_compute_everything"]
    print_table(rows, columns)
    write_json(args.out, {"benchmark": "train_speed", "quickstart": args.quickstart, "batch": batch, "steps": steps,
                          "seconds": args.seconds if args.quickstart else None, "busy": args.busy,
                          "settings": args.settings, "rounds": args.rounds, "cpus": threads.usable_cpus(),
                          "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
