"""Searches as separate processes: a killed driver resumed with ``skipnet resume``, and a job
submitted through the Ray Jobs API to a head started with ``ray start --head`` on 127.0.0.1."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import free_port
from test_search import SPACE, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def write_experiment(path, name, tracking_uri, storage, **over):
    data = {"name": name, "train": TINY_TRAIN, "search_space": SPACE, "share_sp": False,
            "budget": {"iterations_per_step": 2, "max_steps": 4}, "num_samples": 4, "max_concurrent_trials": 2,
            "storage_path": str(storage), "mlflow": {"tracking_uri": tracking_uri, "experiment_name": name}}
    data.update(over)
    path.write_text(yaml.safe_dump(data))
    return path


def skipnet(*args, **kw):
    return subprocess.run([sys.executable, "-m", "skipnet", *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)


def test_killed_driver_resumes_with_one_child_run_per_trial(tmp_path, mlflow_server):
    """The driver dies during the shared SP phase: the resume trains no SP twice (each SP trial
    continues from its checkpoint), runs every trial and keeps one MLflow run per trial."""
    train = dict(TINY_TRAIN, sp=dict(TINY_TRAIN["sp"], iterations=8))       # 4 SP reports
    exp = write_experiment(tmp_path / "exp.yaml", "resume-test", mlflow_server["url"], tmp_path / "searches",
                           train=train, share_sp=True, budget={"iterations_per_step": 2, "max_steps": 6})
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "skipnet", "search", str(exp)], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    client = MlflowClient(mlflow_server["url"])
    deadline = time.time() + 300
    while True:                                    # wait until an SP trial is half-way
        experiment = client.get_experiment_by_name("resume-test")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.role = 'sp'") if experiment else []
        if any(len(client.get_metric_history(r.info.run_id, "val_top1")) >= 2 for r in runs):
            break
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.time() < deadline, "search made no progress"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)          # the driver and the Ray it started die at once
    driver.wait()
    log.close()
    search_dir = next((tmp_path / "searches").iterdir())
    result = skipnet("resume", str(search_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parent = json.loads((search_dir / "skipnet_search.json").read_text())["parent_run_id"]
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    sp_runs = [c for c in children if c.data.tags.get("role") == "sp"]
    trials = [c for c in children if c.data.tags.get("role") == "hrl"]
    assert len(sp_runs) == 2 and len(trials) == 4 and len({c.data.tags["trial_id"] for c in children}) == 6
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "training_iteration")]
        assert steps == list(range(1, len(steps) + 1)), steps       # no lost or repeated step
        assert child.info.status == "FINISHED"
    for sp_trial in (search_dir / "sp").glob("SkipNetTrainable_*"):  # each SP ran once, at most a step redone
        trained = sum(json.loads(line)["iterations_trained"] for line in (sp_trial / "result.json").read_text().splitlines())
        assert 8 <= trained <= 8 + 2, trained
    assert all(t.data.tags["sp_run_id"] in {r.info.run_id for r in sp_runs} for t in trials)
    assert client.get_run(parent).info.status == "FINISHED"


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):     # gone meanwhile
            pass
    return out


def processes_of(marker: str) -> set[int]:
    """PIDs whose command line contains ``marker``, with all their descendants (Ray's agents
    rename themselves, ``ray::DashboardAgent``, but stay children of the raylet)."""
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "cmdline").read_bytes() and int(proc.name) != os.getpid():
                pids.add(int(proc.name))
        except OSError:
            pass
    parents = _parents()
    while True:
        children = {pid for pid, parent in parents.items() if parent in pids} - pids
        if not children:
            return pids
        pids |= children


def stop_processes(pids: set[int], grace_s: float = 15.0) -> None:
    """SIGTERM, SIGKILL what is still there after ``grace_s``, then wait until all are gone."""
    def alive():
        return [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture
def ray_head(tmp_path):
    """``ray start --head`` on 127.0.0.1 with token authentication (Ray 2.60's default), in its own
    temp dir: the processes naming that dir on their command line, and their children, are the
    ones it started, and the fixture stops exactly those, by PID (Ray's own stop command would
    stop every Ray on the machine)."""
    ray = str(VENV_BIN / "ray")
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")          # short: Ray's socket paths have a limit
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    start = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                            "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    yield {"address": f"http://127.0.0.1:{dash}", "env": env}
    started = processes_of(temp_dir)
    stop_processes(started)
    assert not [p for p in started if Path(f"/proc/{p}").exists() and not _zombie(p)], "Ray processes left running"
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submitted_through_jobs_api(tmp_path, mlflow_server, ray_head):
    work = tmp_path / "project"
    shutil.copytree(ROOT / "skipnet", work / "skipnet", ignore=shutil.ignore_patterns("__pycache__"))
    exp = write_experiment(work / "exp.yaml", "job-test", mlflow_server["url"], tmp_path / "searches",
                           num_samples=2, budget={"iterations_per_step": 2, "max_steps": 2})
    env = dict(ray_head["env"])
    env.pop("RAY_AUTH_MODE", None)                 # the CLI turns token mode on by itself
    submitted = skipnet("submit", "exp.yaml", "--address", ray_head["address"], cwd=work, env=env)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted.stdout.strip().splitlines()[-1]
    deadline, state = time.time() + 400, ""
    while time.time() < deadline:
        state = skipnet("status", job_id, "--address", ray_head["address"], env=env).stdout.strip()
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = skipnet("logs", job_id, "--address", ray_head["address"], env=env).stdout
    assert state == "SUCCEEDED", logs[-4000:]
    assert "search job-test" in logs
    client = MlflowClient(mlflow_server["url"])
    experiment = client.get_experiment_by_name("job-test")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.trial_id != ''")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert skipnet("stop", job_id, "--address", ray_head["address"], env=env).stdout.strip() == "not running"
    for verb in ("status", "logs", "stop"):                     # an unknown job: one line, exit 2
        unknown = skipnet(verb, "raysubmit_nosuchjob", "--address", ray_head["address"], env=env)
        assert unknown.returncode == 2 and "no job raysubmit_nosuchjob" in unknown.stderr, unknown.stderr
        assert len(unknown.stderr.strip().splitlines()) == 1


def test_unreachable_jobs_api_is_one_line(tmp_path):
    exp = write_experiment(tmp_path / "exp.yaml", "x", None, tmp_path / "s")
    result = skipnet("submit", str(exp), "--address", f"http://127.0.0.1:{free_port()}", "--working-dir", str(tmp_path))
    assert result.returncode == 2 and "cannot reach the Ray Jobs API" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
