"""Fault injection with real processes: a trial's Ray worker is SIGKILLed at a random step,
Tune retries the trial from its last checkpoint (``max_failures``) and the trial ends with the
same numbers as a run that was never killed (CPU, same seed: batches depend only on the seed
and the iteration, and the engine checkpoint carries the model, optimizer and RNG state)."""
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from test_search import TINY_TRAIN, children, experiment

from skipnet.tune.runner import run_search

MAX_STEPS = 6                                   # sp: 4 iterations, hrl: 8 -> 6 steps of 2 iterations
TRAIN = {**TINY_TRAIN, "hrl": {**TINY_TRAIN["hrl"], "iterations": 8}}
FIXED = {"hrl.alpha": {"type": "constant", "value": 0.1}, "hrl.lr": {"type": "constant", "value": 0.01},
         "model.gate": {"type": "constant", "value": "feedforward_conv"}}
TIMEOUT = 400                                   # seconds; the machine is shared and busy


def deterministic(key: str) -> bool:
    """Metrics that are a function of the seed and the config (not of time, pid or restarts)."""
    return (key.startswith(("val_", "test_", "train_")) and key != "train_images_per_s") or \
        key in ("objective", "iteration", "alpha", "lr", "training_iteration")


def fault_experiment(tmp_path, url, name):
    return experiment(tmp_path / name, url, name, train=TRAIN, search_space=FIXED, num_samples=1,
                      max_concurrent_trials=1, max_failures=2,
                      budget={"iterations_per_step": 2, "max_steps": MAX_STEPS})


def results(trial_dir: Path) -> list[dict]:
    """The trial's reported results so far (Tune's ``result.json``, one JSON object a line)."""
    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:            # a line being written right now
            break
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_killed_worker_resumes_from_checkpoint_with_identical_metrics(tmp_path, mlflow_server, local_ray):
    from ray.tune import ExperimentAnalysis
    client = MlflowClient(mlflow_server["url"])

    # A: never killed
    summary_a = run_search(fault_experiment(tmp_path, mlflow_server["url"], "fault-ref"))
    assert summary_a.errors == 0 and len(summary_a.trials) == 1
    assert summary_a.trials[0]["training_iteration"] == MAX_STEPS

    # B: the same trial, its worker killed once Tune has registered the checkpoint of step k.
    # The worker writes checkpoint_00000<k-1> before the driver registers it; the driver asks for
    # step k + 1 only after registering it, so a reported step k + 1 means "checkpoint k is the
    # trial's". k <= MAX_STEPS - 3 leaves two more steps to kill the worker in.
    seed = int(os.environ.get("SKIPNET_FAULT_SEED", time.time_ns() % 1_000_000))
    k = random.Random(seed).randint(1, MAX_STEPS - 3)
    print(f"fault injection: SKIPNET_FAULT_SEED={seed} -> kill once step {k} is checkpointed")
    exp_b = fault_experiment(tmp_path, mlflow_server["url"], "fault-kill")
    outcome: dict = {}

    def search():
        try:
            outcome["summary"] = run_search(exp_b)
        except BaseException as e:               # noqa: BLE001 -- reported by the main thread
            outcome["error"] = e

    thread = threading.Thread(target=search, daemon=True)
    thread.start()
    storage, deadline = Path(exp_b.storage_path), time.time() + TIMEOUT
    reported: list[dict] = []
    while True:                                   # wait for the report of step k + 1
        trial_dirs = [p for p in storage.glob("*/*") if p.is_dir() and (p / "params.json").exists()]
        reported = results(trial_dirs[0]) if trial_dirs else []
        if reported and reported[-1]["training_iteration"] > k:
            break
        assert thread.is_alive(), f"search ended before step {k + 1}: {outcome}"
        assert time.time() < deadline, f"no report of step {k + 1} after {TIMEOUT} s"
        time.sleep(0.05)
    trial_dir, at_kill = trial_dirs[0], reported[-1]["training_iteration"]
    pid = reported[-1]["pid"]                     # Tune adds the worker's pid to every result
    assert at_kill < MAX_STEPS, f"the trial finished before the kill (reported {at_kill} steps)"
    # Ray titles the actor's process after the wrapped class: ray::ResourceTrainable[.train]
    assert cmdline(pid).startswith("ray::") and "Trainable" in cmdline(pid), \
        f"pid {pid} is not the trial's worker: {cmdline(pid).strip()!r}"
    os.kill(pid, signal.SIGKILL)
    print(f"killed worker {pid} after its report of step {at_kill}")

    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"search B did not finish within {TIMEOUT} s of the kill"
    assert "error" not in outcome, repr(outcome.get("error"))
    summary_b = outcome["summary"]
    assert summary_b.errors == 0 and len(summary_b.trials) == 1
    row_a, row_b = summary_a.trials[0], summary_b.trials[0]
    assert row_b["training_iteration"] == MAX_STEPS

    # the kill happened during the trial, and Tune restored the trial from a checkpoint
    (trial,) = ExperimentAnalysis(summary_b.path).trials
    assert trial.num_failures == 1, f"expected one failure, Tune counted {trial.num_failures}"
    error = (trial_dir / "error.txt").read_text()            # the failure Tune recovered from
    assert "died" in error and f"pid: {pid}" in error, error[-2000:]          # our kill, nothing else
    last_b = results(trial_dir)[-1]
    restored_at = last_b["training_iteration"] - last_b["iterations_since_restore"]
    # restored from the checkpoint of step k or a later one written before the kill, not from scratch
    assert k <= restored_at <= at_kill, (k, restored_at, at_kill)
    assert last_b["pid"] != pid

    # identical final metrics to the uninterrupted run
    for key in ("val_top1", "val_computation_pct", "val_block_count_pct", "objective", "test_top1"):
        assert row_a[key] is not None and row_b[key] == row_a[key], (key, row_a[key], row_b[key])
    last_a = results(next(p for p in Path(summary_a.path).iterdir() if (p / "result.json").exists()))[-1]
    keys = sorted(k_ for k_ in last_a if deterministic(k_) and isinstance(last_a[k_], (int, float)))
    assert len(keys) > 10 and {"val_loss", "test_loss", "train_loss"} <= set(keys), keys
    assert {k_: last_b[k_] for k_ in keys} == {k_: last_a[k_] for k_ in keys}

    # MLflow: B's child run has every step once, each equal to A's (before and after the kill)
    (run_a,), (run_b,) = children(client, summary_a), children(client, summary_b)
    assert run_b.info.status == "FINISHED" and run_b.data.tags["stopped_early"] == "false"
    for key in ("training_iteration", "val_top1", "val_computation_pct", "val_loss", "train_loss", "objective"):
        hist_a, hist_b = history(client, run_a.info.run_id, key), history(client, run_b.info.run_id, key)
        assert [s for s, _ in hist_b] == list(range(1, MAX_STEPS + 1)), (key, hist_b)
        assert hist_b == hist_a, key
