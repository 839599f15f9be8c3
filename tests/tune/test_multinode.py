"""Searches on a two-node Ray cluster with token authentication (``multinode.TwoNodeCluster``:
head on 127.0.0.2, worker node on 127.0.0.3, one CPU each, both on this machine): trials spread
over both nodes, a node that dies mid-trial has its trial restored on the other node,
``skipnet submit`` / ``status`` / ``logs`` / ``stop`` drive a search through the Jobs API and
``skipnet resume --address`` continues it, and a client without the token is refused at once."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from multinode import HEAD_IP, WORKER_IP, TwoNodeCluster
from test_cluster import ROOT, skipnet, write_experiment
from test_faults import FIXED, MAX_STEPS, TRAIN, deterministic, results

pytestmark = pytest.mark.slow      # each test runs a search on the cluster: a minute or more

TIMEOUT = 400                      # seconds for a search; the machine is shared and busy
# the head declares a node dead after 3 failed health checks 1 s apart (Ray's default: 5, 3 s
# apart): a killed worker node counts as dead after ~6 s instead of ~15 s (measured)
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster(s3_server):
    """The module's cluster; its nodes (so every trial) can reach the S3 server."""
    cluster = TwoNodeCluster(node_env={**FAST_NODE_DEATH, **s3_server["env"]})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_nodes(cluster):
    """The module's cluster with both nodes alive (a test that killed the worker node leaves it
    to the next test that needs it)."""
    if cluster.alive_nodes() != {HEAD_IP, WORKER_IP}:
        print(f"worker node restarted in {cluster.restart_worker():.1f} s", file=sys.stderr)
    return cluster


def trial_dirs(search_dir: Path) -> list[Path]:
    return sorted(p for p in search_dir.iterdir() if p.is_dir() and (p / "params.json").exists())


def staged_trials(cluster: TwoNodeCluster, name: str) -> list[Path]:
    """The trial dirs of search ``name`` in the driver's staging dir on the head (where Tune's
    driver writes results first; it syncs them to the storage path now and then)."""
    return sorted(p.parent for p in Path(cluster.head_temp_dir).glob(
        f"session_*/artifacts/*/{name}-*/driver_artifacts/*/params.json"))


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_job_on_two_nodes_stopped_and_resumed(tmp_path, mlflow_server, two_nodes):
    """``skipnet submit`` uploads a project to the token cluster (finding out by itself that it
    wants the token), the job's search runs a trial on each node, ``status`` and ``logs`` follow
    it; ``stop`` ends the parent run and the running trials ``KILLED``; ``resume --address``
    reopens them and finishes every trial, each step logged once."""
    work = tmp_path / "project"
    shutil.copytree(ROOT / "skipnet", work / "skipnet", ignore=shutil.ignore_patterns("__pycache__"))
    train = dict(TRAIN, sp=dict(TRAIN["sp"], iterations=16), hrl=dict(TRAIN["hrl"], iterations=16))
    steps = 16                                  # (16 + 16) iterations, 2 per step
    write_experiment(work / "exp.yaml", "mn-job", mlflow_server["url"], tmp_path / "searches", train=train,
                     search_space=FIXED, num_samples=2, resources={"cpu": 1},
                     budget={"iterations_per_step": 2, "max_steps": steps})
    env, address = two_nodes.env, two_nodes.dashboard
    assert "RAY_AUTH_MODE" not in env
    with pytest.raises(urllib.error.HTTPError) as refused:     # token authentication is on
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=30).close()
    assert refused.value.code == 401, refused.value
    submitted = skipnet("submit", "exp.yaml", "--address", address, cwd=work, env=env)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted.stdout.strip().splitlines()[-1]

    client = MlflowClient(mlflow_server["url"])
    deadline = time.time() + TIMEOUT
    while True:                                 # stop once both trials have reported
        experiment = client.get_experiment_by_name("mn-job")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.trial_id != ''") if experiment else []
        if len(runs) == 2 and all(client.get_metric_history(r.info.run_id, "training_iteration") for r in runs):
            break
        assert skipnet("status", job_id, "--address", address, env=env).stdout.strip() in ("PENDING", "RUNNING"), \
            skipnet("logs", job_id, "--address", address, env=env).stdout[-3000:]
        assert time.time() < deadline, "no trial reported"
        time.sleep(1)
    stopped = skipnet("stop", job_id, "--address", address, env=env)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopping", stopped.stderr
    deadline, state = time.time() + 120, ""
    while time.time() < deadline and state not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(2)
        state = skipnet("status", job_id, "--address", address, env=env).stdout.strip()
    logs = skipnet("logs", job_id, "--address", address, env=env).stdout
    assert state == "STOPPED", logs[-4000:]
    assert "stopped by SIGTERM; MLflow runs marked KILLED; continue with: skipnet resume" in logs, logs[-3000:]
    (search_dir,) = (tmp_path / "searches").iterdir()
    parent = json.loads((search_dir / "skipnet_search.json").read_text())["parent_run_id"]
    children = f"tags.`mlflow.parentRunId` = '{parent}'"
    assert client.get_run(parent).info.status == "KILLED"
    assert [r.info.status for r in client.search_runs([experiment.experiment_id], children)] == ["KILLED"] * 2

    resumed = skipnet("resume", str(search_dir), "--address", two_nodes.gcs_address, env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    nodes = {row["node_ip"] for trial in trial_dirs(search_dir) for row in results(trial)}
    assert nodes == {HEAD_IP, WORKER_IP}, nodes                 # one trial on each node
    runs = client.search_runs([experiment.experiment_id], children)
    assert len(runs) == 2 and client.get_run(parent).info.status == "FINISHED"
    for run in runs:
        logged = [m.step for m in client.get_metric_history(run.info.run_id, "training_iteration")]
        assert run.info.status == "FINISHED" and logged == list(range(1, steps + 1)), (run.info.status, logged)
    assert skipnet("stop", job_id, "--address", address, env=env).stdout.strip() == "not running"


def test_killed_worker_node_trial_restored_on_head(tmp_path, mlflow_server, s3_server, two_nodes, monkeypatch):
    """Two trials of one configuration and seed, stored in S3, one on each node; the worker
    node's raylet is SIGKILLed once its trial has a checkpoint in the bucket. Tune restores that
    trial on the head from its last checkpoint, and both trials end with the same metrics, each
    step once in MLflow."""
    import pyarrow.fs
    from ray.tune import ExperimentAnalysis
    cluster = two_nodes
    for key, value in s3_server["env"].items():            # this process reads the bucket too
        monkeypatch.setenv(key, value)
    searches = f"s3://{s3_server['bucket']}/{tmp_path.name}/searches"
    exp = write_experiment(tmp_path / "exp.yaml", "mn-fault", mlflow_server["url"], searches,
                           train=TRAIN, search_space=FIXED, num_samples=2, max_concurrent_trials=2, max_failures=2,
                           resources={"cpu": 1}, budget={"iterations_per_step": 2, "max_steps": MAX_STEPS})
    log_path = tmp_path / "driver.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "skipnet", "search", str(exp), "--address", cluster.gcs_address],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  env=dict(cluster.env, **s3_server["env"]), start_new_session=True)
    try:
        # Tune's driver (connected to the head: Ray prefers the head among the nodes of its
        # host) writes each trial's results to its staging dir in the head's session dir first
        deadline, on_worker = time.time() + TIMEOUT, None
        # wait for the worker node's trial to report step 2: the driver asks for step 2 only
        # once it has registered the checkpoint of step 1, so a restore starts from a checkpoint
        while on_worker is None:
            for trial in staged_trials(cluster, "mn-fault"):
                rows = results(trial)
                if rows and rows[-1]["node_ip"] == WORKER_IP and rows[-1]["training_iteration"] >= 2:
                    on_worker, reported = trial, rows
            assert driver.poll() is None, f"the search ended before a trial reported on {WORKER_IP}: " \
                                          f"{log_path.read_text()[-3000:]}"
            assert time.time() < deadline, f"no trial reported step 2 on {WORKER_IP} within {TIMEOUT} s"
            time.sleep(0.1)
        killed_pid, at_kill = reported[-1]["pid"], reported[-1]["training_iteration"]
        raylet = cluster.kill_worker_raylet()
        killed_at = time.monotonic()
        print(f"killed raylet {raylet} of {WORKER_IP} after its trial's step {at_kill} "
              f"({killed_at - started:.1f} s into the search)")
        assert at_kill < MAX_STEPS, f"the worker node's trial finished before the kill ({at_kill} steps)"
        driver.wait(TIMEOUT)
        print(f"search ended {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    output = log_path.read_text()
    assert driver.returncode == 0, output[-4000:]
    fs, root = pyarrow.fs.FileSystem.from_uri(searches)
    (search,) = fs.get_file_info(pyarrow.fs.FileSelector(root))
    search_uri = f"{searches}/{search.base_name}"

    # both trials ran to the end in the bucket; the killed one failed once and was restored on the head
    trials = {Path(t.path).name: t for t in ExperimentAnalysis(search_uri).trials}
    assert len(trials) == 2 and all(t.status == "TERMINATED" for t in trials.values()), \
        {n: t.status for n, t in trials.items()}
    killed, other = trials[on_worker.name], next(t for n, t in trials.items() if n != on_worker.name)
    assert killed.num_failures == 1 and other.num_failures == 0, (killed.num_failures, other.num_failures)
    error = (on_worker / "error.txt").read_text()
    assert "died" in error.lower() or "unavailable" in error.lower(), error[-2000:]
    in_bucket = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{search.base_name}/{on_worker.name}"))
    checkpoints = [i.base_name for i in in_bucket]
    assert any(name.startswith("checkpoint_") for name in checkpoints), checkpoints
    rows_killed, rows_other = results(on_worker), results(on_worker.parent / Path(other.path).name)
    # the worker node may report a step more between the test seeing step 2 and the kill landing
    last_on_worker = max(i for i, r in enumerate(rows_killed) if r["pid"] == killed_pid)
    at_kill, after = rows_killed[last_on_worker]["training_iteration"], rows_killed[last_on_worker + 1:]
    assert at_kill < MAX_STEPS, f"the worker node's trial finished before the kill ({at_kill} steps)"
    assert after and {r["node_ip"] for r in after} == {HEAD_IP} and all(r["pid"] != killed_pid for r in after)
    last_killed, last_other = rows_killed[-1], rows_other[-1]
    restored_at = last_killed["training_iteration"] - last_killed["iterations_since_restore"]
    print(f"restored on {last_killed['node_ip']} from step {restored_at} (killed after step {at_kill})")
    assert 1 <= restored_at <= at_kill           # from a checkpoint in the bucket, not from scratch
    assert {r["node_ip"] for r in rows_other} == {HEAD_IP}
    assert last_killed["training_iteration"] == last_other["training_iteration"] == MAX_STEPS
    keys = sorted(k for k in last_other if deterministic(k) and isinstance(last_other[k], (int, float)))
    assert len(keys) > 10 and {"val_top1", "val_loss", "objective"} <= set(keys), keys
    assert {k: last_killed[k] for k in keys} == {k: last_other[k] for k in keys}

    # MLflow: one finished child run per trial, every step once, both runs the same numbers
    with fs.open_input_stream(f"{root}/{search.base_name}/skipnet_search.json") as f:
        parent = json.loads(f.read())["parent_run_id"]
    client = MlflowClient(mlflow_server["url"])
    experiment = client.get_experiment_by_name("mn-fault")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t.trial_id for t in trials.values())
    assert all(r.info.status == "FINISHED" for r in runs)
    for key in ("training_iteration", "val_top1", "val_computation_pct", "val_loss", "objective"):
        hist = [history(client, r.info.run_id, key) for r in runs]
        assert [s for s, _ in hist[0]] == list(range(1, MAX_STEPS + 1)), (key, hist[0])
        assert hist[0] == hist[1], key
    assert client.get_run(parent).info.status == "FINISHED"


def test_search_without_the_token_fails_at_once_and_creates_nothing(tmp_path, mlflow_server, cluster):
    """``skipnet search --address`` from a machine without the cluster's token: one line saying
    where the token goes, in seconds (Ray's own client retries ~30 s, then blames the address),
    and no MLflow run, experiment or search directory left behind."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    exp = write_experiment(tmp_path / "exp.yaml", "mn-no-token", mlflow_server["url"], tmp_path / "searches",
                           search_space=FIXED, num_samples=1)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "skipnet", "search", str(exp),
                             "--address", cluster.gcs_address], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env=dict(env, HOME=str(home)))
    wall = time.monotonic() - started
    imports = sum(int(line.split("|")[1]) for line in result.stderr.splitlines()
                  if line.startswith("import time:") and line.split("|")[1].strip().isdigit()
                  and line.split("|")[2].startswith(" ") and not line.split("|")[2].startswith("  ")) / 1e6
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    print(f"refused in {wall:.1f} s ({imports:.1f} s of it importing)")
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "requires token authentication" in errors[0] and "RAY_AUTH_TOKEN_PATH" in errors[0], errors[0]
    assert wall - imports < 5.0, (wall, imports)
    assert not (tmp_path / "searches").exists()
    assert MlflowClient(mlflow_server["url"]).get_experiment_by_name("mn-no-token") is None
