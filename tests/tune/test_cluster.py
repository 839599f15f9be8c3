"""Searches as separate processes: a killed driver resumed with ``skipnet resume``, and a job
submitted through the Ray Jobs API to a plain ``ray start --head`` on 127.0.0.1 (no token
authentication: a fresh machine's default). The two-node token cluster: ``test_multinode.py``."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from multinode import alive, free_port, free_port_range, processes_of, stop_processes
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


@pytest.fixture
def ray_head(tmp_path):
    """A plain ``ray start --head`` on 127.0.0.1 on what looks like a fresh machine (a private
    ``HOME`` holding no token, no ``RAY_AUTH_*`` set): Ray 2.60 then runs it without token
    authentication. In its own temp dir: the processes naming that dir on their command line, and
    their children, are the ones it started, and the fixture stops exactly those, by PID (Ray's
    own stop command would stop every Ray on the machine)."""
    ray = str(VENV_BIN / "ray")
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")          # short: Ray's socket paths have a limit
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    env.update(AUTOSCALER_METRIC_PORT=str(free_port()), DASHBOARD_METRIC_PORT=str(free_port()))
    workers = free_port_range(20)               # every port explicit: Ray's defaults collide with other clusters
    ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--ray-client-server-port={free_port()}", f"--min-worker-port={workers}", f"--max-worker-port={workers + 19}"]
    start = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                            "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}", *ports],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    assert "Token authentication is disabled" in start.stdout + start.stderr
    yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}", "env": env}
    # the Ray Client server daemonizes (its parent is init): it names the head's GCS address instead
    started = processes_of(temp_dir) | processes_of(f"--address=127.0.0.1:{port}\0")
    stop_processes(started, 3.0)                  # a throwaway head: nothing to save, SIGKILL after 3 s
    assert not alive(started), "Ray processes left running"
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_on_a_cluster_without_tokens(tmp_path, ray_head):
    """``submit`` works against a plain ``ray start`` on a fresh machine (no token anywhere: the
    Jobs SDK in token mode would refuse to run); ``--env`` passes a variable into the job's
    environment, never printed; ``stop`` and ``status`` follow it; an unknown job id is one line,
    exit 2. (A search run to the end through the Jobs API, stopped and resumed: test_multinode.py.)"""
    work = tmp_path / "project"
    shutil.copytree(ROOT / "skipnet", work / "skipnet", ignore=shutil.ignore_patterns("__pycache__"))
    write_experiment(work / "exp.yaml", "job-test", None, tmp_path / "searches", num_samples=1)
    env, address, secret = dict(ray_head["env"]), ray_head["address"], "s3cr3t-value-4711"
    submitted = skipnet("submit", "exp.yaml", "--address", address, "--env", "SKIPNET_TEST_SECRET", cwd=work,
                        env=dict(env, SKIPNET_TEST_SECRET=secret))
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert secret not in submitted.stdout + submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    job = json.loads(urllib.request.urlopen(f"{address}/api/jobs/{job_id}", timeout=10).read())
    assert job["runtime_env"]["env_vars"]["SKIPNET_TEST_SECRET"] == secret
    assert job["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "30"
    stopped = skipnet("stop", job_id, "--address", address, env=env)
    assert stopped.returncode == 0 and stopped.stdout.strip() in ("stopping", "not running"), stopped.stderr
    deadline, state = time.time() + 120, ""
    while time.time() < deadline and state not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(1)
        state = skipnet("status", job_id, "--address", address, env=env).stdout.strip()
    assert state == "STOPPED", skipnet("logs", job_id, "--address", address, env=env).stdout[-3000:]
    for verb in ("status", "logs", "stop"):                     # an unknown job: one line, exit 2
        unknown = skipnet(verb, "raysubmit_nosuchjob", "--address", address, env=env)
        assert unknown.returncode == 2 and "no job raysubmit_nosuchjob" in unknown.stderr, unknown.stderr
        assert len(unknown.stderr.strip().splitlines()) == 1


def test_unreachable_jobs_api_is_one_line(tmp_path):
    exp = write_experiment(tmp_path / "exp.yaml", "x", None, tmp_path / "s")
    result = skipnet("submit", str(exp), "--address", f"http://127.0.0.1:{free_port()}", "--working-dir", str(tmp_path))
    assert result.returncode == 2 and "cannot reach the Ray Jobs API" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
