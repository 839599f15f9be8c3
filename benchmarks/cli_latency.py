"""How long ``skipnet`` commands take to answer: the price of start-up, not of the work.

Each command runs as a fresh ``python -m skipnet ...`` process, several times; the table shows
the median wall time. For the commands that ask a server something, the same questions are also
timed inside this (already warm) process, so ``overhead_s`` = command - server answer is what
the command itself costs (interpreter start, imports, argument parsing, printing):

* ``--help`` of the tool and of each verb;
* ``status``, ``logs`` and ``stop`` of a job on a Ray head this script starts on 127.0.0.1
  (``ray start --head`` in its own temp dir, stopped by PID afterwards; ``--no-cluster`` skips);
* ``pareto`` and ``export --knee`` on a 50-trial search written into a fresh SQLite MLflow
  store through ``SearchTracker`` (the records a real search logs; their metric values are
  made up for timing and describe no model).

    python benchmarks/cli_latency.py [--repeats 5] [--repo PATH] [--no-cluster]

``--repo`` times another checkout (e.g. a ``git worktree`` of an older commit) with this venv.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import print_table, write_json  # noqa: E402

VERBS = ["train", "eval", "search", "resume", "submit", "status", "logs", "stop", "pareto", "export", "sync-mlflow"]


def timed(cmd: list[str], repo: Path, cwd: Path, repeats: int, env: dict | None = None) -> tuple[float, str]:
    """Median wall time of ``python -m skipnet CMD`` (and the last run's output)."""
    env = dict(env or os.environ, PYTHONPATH=str(repo))
    times, out = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "skipnet", *cmd], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)
        times.append(time.perf_counter() - start)
        out = done.stdout + done.stderr
        if done.returncode != 0:
            raise SystemExit(f"skipnet {' '.join(cmd)} failed ({done.returncode}): {out.strip()[-500:]}")
    return statistics.median(times), out


def answer_time(fn, repeats: int) -> float:
    """Median time of the server questions a command asks, from this warm process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_search(uri: str, trials: int) -> str:
    """A search of ``trials`` finished trials, logged as ``skipnet search`` logs one; its id."""
    from skipnet.core.config import to_dict
    from skipnet.core.config import TrainConfig
    from skipnet.tracking.runs import SearchTracker
    from skipnet.tracking.ui import prepare_ui
    search_id = "latency-20261130-000000"
    tracker = SearchTracker(uri, "cli-latency")
    parent = tracker.start_search(search_id, {"name": "cli-latency"}, {"hrl.alpha": {"loguniform": [0.01, 1.0]}})
    prepare_ui(tracker.client, tracker.experiment_id, search_id, parent)
    base = to_dict(TrainConfig())
    for i in range(trials):
        alpha = 10 ** (-2 + 2 * i / (trials - 1))
        config = dict(base, hrl=dict(base["hrl"], alpha=alpha))
        run = tracker.child_run(f"t{i:05d}", config, {"search_id": search_id, "role": "hrl"})
        computation = 100 * math.exp(-1.5 * alpha) + 5
        for step in range(1, 6):
            tracker.log_metrics(run, {"training_iteration": step, "val_top1": 60 + 0.3 * computation + step,
                                      "val_computation_pct": computation, "val_block_count_pct": computation,
                                      "iteration": 100 * step, "hrl.alpha": alpha}, step)
        tracker.end_child(run, "FINISHED", {"steps": "5"})
    tracker.end_search()
    return search_id


class RayHead:
    """``ray start --head`` on 127.0.0.1 in its own temp dir; ``stop`` ends exactly its processes."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        sys.path.insert(0, str(ROOT / "tests" / "tune"))
        from conftest import free_port
        self.temp_dir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
        self.dash = free_port()
        bin_dir = Path(sys.executable).parent
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=f"{bin_dir}:{os.environ['PATH']}")
        done = subprocess.run([str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                               f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}",
                               "--num-cpus=1", "--include-dashboard=true", "--disable-usage-stats",
                               f"--temp-dir={self.temp_dir}"], capture_output=True, text=True, env=self.env,
                              timeout=180)
        if done.returncode != 0:
            self.stop()
            raise SystemExit(f"ray start failed: {done.stderr.strip()[-500:]}")
        self.address = f"http://127.0.0.1:{self.dash}"

    def stop(self) -> None:
        from test_cluster import processes_of, stop_processes
        stop_processes(processes_of(self.temp_dir))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=50, help="trials of the search pareto/export read")
    parser.add_argument("--repo", default=str(ROOT), help="checkout whose skipnet package is timed")
    parser.add_argument("--no-cluster", action="store_true", help="skip status/logs/stop (no Ray head)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cli_latency.json"))
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    work = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    rows = []

    def row(name, cmd, target, answer=None, env=None):
        wall, _ = timed(cmd, repo, work, args.repeats, env)
        overhead = wall - answer if answer is not None else wall
        rows.append({"command": name, "median_s": wall, "server_answer_s": answer, "overhead_s": overhead,
                     "target_s": target, "meets_target": overhead <= target})
        print(f"  {name:<28} {wall:6.2f} s", flush=True)

    row("skipnet --help", ["--help"], 1.0)
    for verb in VERBS:
        row(f"skipnet {verb} --help", [verb, "--help"], 1.0)

    uri = f"sqlite:///{work}/mlflow.db"
    search_id = write_search(uri, args.trials)
    from mlflow.tracking import MlflowClient
    from skipnet.fronts import analysis
    from skipnet.tracking import runs

    def pareto_questions():
        client = MlflowClient(uri)
        for run in runs.find_searches(client, search_id):
            analysis.analyse(search_id, run.info.run_id, runs.search_trials(client, run))

    def export_questions():
        client = MlflowClient(uri)
        run = runs.find_searches(client, search_id)[0]
        point = analysis.select(runs.search_trials(client, run), knee=True)
        with tempfile.TemporaryDirectory() as tmp:
            runs.download_train_config(client, point.run_id, tmp)
        client.list_artifacts(point.run_id, "checkpoint")

    row(f"pareto ({args.trials} trials)", ["pareto", search_id, "--tracking-uri", uri, "--no-log"], 5.0,
        answer_time(pareto_questions, args.repeats))
    row(f"export --knee ({args.trials} trials)", ["export", search_id, "--tracking-uri", uri, "--knee", "-o",
                                                   str(work / "best.yaml")], 5.0,
        answer_time(export_questions, args.repeats))

    if not args.no_cluster:
        head = RayHead()
        try:
            os.environ["RAY_AUTH_MODE"] = "token"       # the head requires the token ray start wrote
            from ray.job_submission import JobSubmissionClient
            client = JobSubmissionClient(head.address)
            job = client.submit_job(entrypoint="echo cli-latency")
            deadline = time.time() + 120
            while str(client.get_job_status(job).value) not in ("SUCCEEDED", "FAILED") and time.time() < deadline:
                time.sleep(0.5)
            env = head.env
            for verb, question in (("status", client.get_job_status), ("logs", client.get_job_logs),
                                   ("stop", client.stop_job)):
                row(f"skipnet {verb} JOB", [verb, job, "--address", head.address], 2.0,
                    answer_time(lambda: question(job), args.repeats), env=env)
        finally:
            head.stop()
    shutil.rmtree(work, ignore_errors=True)

    print(f"\nskipnet command latency (median of {args.repeats}; repo {repo})")
    print_table(rows, ["command", "median_s", "server_answer_s", "overhead_s", "target_s", "meets_target"])
    write_json(args.out, {"repo": str(repo), "repeats": args.repeats, "trials": args.trials, "rows": rows})


if __name__ == "__main__":
    main()
