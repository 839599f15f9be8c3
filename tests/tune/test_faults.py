"""Fault injection with real processes: a trial's Ray worker is SIGKILLed at a random step,
Tune retries the trial from its last checkpoint (``max_failures``) and the trial ends with the
same numbers as a run that was never killed (CPU, same seed: batches depend only on the seed
and the iteration, and the engine checkpoint carries the model, optimizer and RNG state)."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from multinode import alive, descendants, stop_processes
from test_search import TINY_TRAIN, children, experiment

from skipnet.tune.runner import run_search

MAX_STEPS = 6                                   # sp: 4 iterations, hrl: 8 -> 6 steps of 2 iterations
TRAIN = {**TINY_TRAIN, "hrl": {**TINY_TRAIN["hrl"], "iterations": 8}}
FIXED = {"hrl.alpha": {"type": "constant", "value": 0.1}, "hrl.lr": {"type": "constant", "value": 0.01},
         "model.gate": {"type": "constant", "value": "feedforward_conv"}}
TIMEOUT = 400                                   # seconds; the machine is shared and busy
TRAIN_HRL = TINY_TRAIN["hrl"]["iterations"]
COST_METRICS = ("search_sp_iterations", "search_hrl_iterations", "search_iterations", "search_wall_time_s")
STOP_NOW_S = 3.0                                # "at once": a few MLflow requests (Tune's stop and Ray's: 4.6-7.2 s)


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


# -- stopping on purpose: Ctrl-C, a second one, and what the search cost ----------------------------

def started_at(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone: tells a PID reused apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stored_rows(search_dir: Path) -> dict[str, list[str]]:
    """Each trial's ``result.json`` lines in the search's storage (the SP phase's too)."""
    return {str(f.relative_to(search_dir)): f.read_text().splitlines() for f in search_dir.rglob("result.json")}


def trained(lines: list[str]) -> float:
    return sum(json.loads(line)["iterations_trained"] for line in lines)


def appended(before: dict[str, list[str]], after: dict[str, list[str]]) -> float:
    """Iterations in the rows ``after`` adds to ``before``; every file only grew."""
    for name, lines in before.items():
        assert after[name][:len(lines)] == lines, f"{name}: stored rows were rewritten"
    return sum(trained(lines[len(before.get(name, [])):]) for name, lines in after.items())


def test_ctrl_c_twice_during_resume_stops_at_once_and_the_cost_adds_up(tmp_path, mlflow_server):
    """A search stopped by Ctrl-C, resumed and stopped by two during the resumed SP phase, then
    resumed to the end. The second Ctrl-C exits 130 at once with one line and no traceback (it
    raised from the signal handler, inside Ray's ``CoreWorker.wait``: ``SystemError``, exit 1, or
    inside Tune's loop, which logged it and went on), every run of the search ends ``KILLED`` and
    the local Ray's GCS and raylet go with the driver. The cost on the parent run adds up over the
    three parts: each stop logs it, the iterations are exactly what each part trained (as Tune's
    stored results show; a part stopped at once may have reported rows Tune never stored), and
    the wall time is each part's, within the time the processes ran (before: nothing was logged
    on a stop, and the last part's wall time replaced the earlier ones')."""
    from test_cluster import write_experiment
    url = mlflow_server["url"]
    client = MlflowClient(url)
    train = {**TINY_TRAIN, "sp": {**TINY_TRAIN["sp"], "iterations": 16}}           # 8 SP reports
    space = {"hrl.alpha": {"type": "loguniform", "low": 1e-3, "high": 1.0},
             "model.gate": {"type": "constant", "value": "feedforward_conv"}}     # one shared SP
    exp = write_experiment(tmp_path / "exp.yaml", "stop-twice", url, tmp_path / "searches", train=train,
                           search_space=space, share_sp=True, num_samples=2,
                           budget={"iterations_per_step": 2, "max_steps": 4})
    drivers: list[subprocess.Popen] = []
    ray_started: dict[int, str | None] = {}          # the stopped resume's Ray processes, by PID and start

    def start(*args):
        log = tmp_path / f"{args[0]}-{len(drivers)}.stderr"
        with open(tmp_path / f"{args[0]}-{len(drivers)}.stdout", "w") as out, open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "skipnet", *args], stdout=out, stderr=err,
                                    start_new_session=True, cwd=tmp_path)     # its own group, as in a terminal
        proc.log = log
        drivers.append(proc)
        return proc, time.monotonic()

    def finish(proc) -> str:
        proc.wait(TIMEOUT)
        return proc.log.read_text()

    def sp_steps(parent: str) -> int:
        runs = client.search_runs([client.get_experiment_by_name("stop-twice").experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.role = 'sp'")
        return max((len(client.get_metric_history(r.info.run_id, "val_top1")) for r in runs), default=0)

    def wait_for(condition, proc, what: str):
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert proc.poll() is None, f"ended before {what}: {proc.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {TIMEOUT} s"
            time.sleep(0.05)

    def cost(parent: str) -> dict[str, float]:
        return {k: v for k, v in client.get_run(parent).data.metrics.items() if k.startswith("search_")}

    def statuses(parent: str) -> list[str]:
        return [client.get_run(parent).info.status] + [r.info.status for r in client.search_runs(
            [client.get_experiment_by_name("stop-twice").experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")]

    def skipnet_lines(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if line.startswith("skipnet ")]

    try:
        # 1. skipnet search, Ctrl-C once during the SP phase
        search, t0 = start("search", str(exp))
        wait_for(lambda: any((tmp_path / "searches").glob("*/skipnet_search.json")), search, "a search directory")
        search_dir = next((tmp_path / "searches").iterdir())
        parent = json.loads((search_dir / "skipnet_search.json").read_text())["parent_run_id"]
        wait_for(lambda: sp_steps(parent) >= 2, search, "two SP reports")
        os.killpg(search.pid, signal.SIGINT)
        stderr = finish(search)
        ran1 = time.monotonic() - t0
        assert search.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr and skipnet_lines(stderr) == [
            f"skipnet search: stopped by SIGINT; MLflow runs marked KILLED; continue with: skipnet resume {search_dir}"]
        cost1, rows1 = cost(parent), stored_rows(search_dir)
        assert set(statuses(parent)) == {"KILLED"}

        # 2. skipnet resume, Ctrl-C twice while SP trains again
        resume, t0 = start("resume", str(search_dir))
        steps = sp_steps(parent)
        wait_for(lambda: client.get_run(parent).info.status == "RUNNING" and sp_steps(parent) > steps, resume,
                 "a resumed SP report")
        ray_processes = descendants(resume.pid) - {resume.pid}
        ray_started.update({p: started_at(p) for p in ray_processes})
        os.killpg(resume.pid, signal.SIGINT)
        # the first one handled (Tune acknowledges the stop it asks for), the second one comes while Tune saves
        wait_for(lambda: "Stop signal received" in resume.log.read_text(), resume, "Tune's graceful stop")
        os.killpg(resume.pid, signal.SIGINT)
        second = time.monotonic()
        stderr = finish(resume)
        ran2, after_second = time.monotonic() - t0, time.monotonic() - second
        assert resume.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr and "SystemError" not in stderr, stderr[-3000:]
        assert after_second < STOP_NOW_S, f"the second Ctrl-C took {after_second:.1f} s to stop the resume"
        assert skipnet_lines(stderr) == [f"skipnet resume: stopped at once by a second SIGINT; MLflow runs marked "
                                         f"KILLED; continue with: skipnet resume {search_dir}"], stderr[-3000:]
        assert set(statuses(parent)) == {"KILLED"}, statuses(parent)          # parent, SP run: nothing running
        deadline = time.monotonic() + 10                                     # fate-shared: gone with the driver
        while any("gcs_server" in cmdline(p) or "raylet" in cmdline(p) for p in alive(ray_processes)):
            assert time.monotonic() < deadline, [cmdline(p)[:80] for p in alive(ray_processes)]
            time.sleep(0.2)
        cost2, rows2 = cost(parent), stored_rows(search_dir)

        # 3. skipnet resume to the end
        final, t0 = start("resume", str(search_dir))
        stderr = finish(final)
        ran3 = time.monotonic() - t0
        assert final.returncode == 0, stderr[-3000:]
        assert set(statuses(parent)) == {"FINISHED"} and len(statuses(parent)) == 1 + 1 + 2
        cost3, rows3 = cost(parent), stored_rows(search_dir)
    finally:
        for proc in drivers:
            if proc.poll() is None:                   # a failure: the driver and the Ray it started
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Ray's agents outlive a driver that exits at once by about a minute: end those still there
        stop_processes({p for p, at in ray_started.items() if at is not None and started_at(p) == at}, 3.0)

    print(f"parts ran {ran1:.1f} / {ran2:.1f} / {ran3:.1f} s; the second Ctrl-C exited in {after_second:.2f} s; "
          f"cost {cost1} -> {cost2} -> {cost3}")
    # every stop logged the cost so far; the iterations are what each part trained
    assert set(cost1) == set(cost2) == set(cost3) == set(COST_METRICS), (cost1, cost2)
    assert cost1["search_iterations"] == cost1["search_sp_iterations"] == trained(sum(rows1.values(), [])) > 0
    part2 = cost2["search_iterations"] - cost1["search_iterations"]
    assert part2 > 0 and part2 >= appended(rows1, rows2)                # at once: Tune may not have stored it all
    part3 = cost3["search_iterations"] - cost2["search_iterations"]
    assert part3 == appended(rows2, rows3) > 0
    assert cost3["search_hrl_iterations"] == 2 * TRAIN_HRL
    assert cost3["search_iterations"] == cost3["search_sp_iterations"] + cost3["search_hrl_iterations"]
    assert cost3["search_iterations"] >= 16 + 2 * TRAIN_HRL             # SP once, both trials' HRL
    # the wall time: each part's own, added up
    walls = [cost1["search_wall_time_s"], cost2["search_wall_time_s"] - cost1["search_wall_time_s"],
             cost3["search_wall_time_s"] - cost2["search_wall_time_s"]]
    for wall, ran in zip(walls, (ran1, ran2, ran3)):
        assert 0 < wall <= ran, (walls, (ran1, ran2, ran3))
