"""A search stored in S3 (moto's server on 127.0.0.1, a real S3 API) through the real CLI: its
driver killed and the search resumed from the bucket, ``sync-mlflow`` of the bucket, MLflow tags
and the export keeping ``s3://``, and the exported trial retrained and evaluated from the
checkpoints in the bucket; a search URI that holds no search is refused in one line."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from skipnet import create_model, save_checkpoint
from skipnet.core import storage
from test_cluster import skipnet, write_experiment
from test_search import TINY_TRAIN

# stage hrl from an SP checkpoint in the bucket: every trial, and the retrained export, fetch it
SPACE = {"hrl.alpha": {"type": "loguniform", "low": 1e-3, "high": 1.0},
         "hrl.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}}
STEPS = 4


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server's settings in this process too (pyarrow reads them per filesystem)."""
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    return s3_server


def upload(local, uri):
    import pyarrow.fs
    fs, key = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_output_stream(key) as f:
        f.write(local.read_bytes())


def wait_for(condition, driver, log, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"{what}: {log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_search_in_s3_resumed_synced_exported_and_reproduced(tmp_path, mlflow_server, s3):
    env = dict(os.environ, **s3["env"])
    prefix = f"s3://{s3['bucket']}/{tmp_path.name}"
    init = f"{prefix}/init/sp.pt"
    save_checkpoint(create_model(TINY_TRAIN["model"]["arch"]), tmp_path / "sp.pt")
    upload(tmp_path / "sp.pt", init)
    train = dict(TINY_TRAIN, stage="hrl", hrl=dict(TINY_TRAIN["hrl"], iterations=2 * STEPS, init_checkpoint=init))
    exp = write_experiment(tmp_path / "exp.yaml", "s3-storage", mlflow_server["url"], f"{prefix}/searches",
                           train=train, search_space=SPACE, num_samples=2,
                           budget={"iterations_per_step": 2, "max_steps": STEPS})
    client = MlflowClient(mlflow_server["url"])
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "skipnet", "search", str(exp)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path, env=env)
        try:
            wait_for(lambda: storage.list_dir(f"{prefix}/searches"), driver, log_path, "no search in the bucket")
            search = storage.join(prefix, "searches", storage.list_dir(f"{prefix}/searches")[0])

            def half_way():                      # a trial half-way, and Tune's state in the bucket
                experiment = client.get_experiment_by_name("s3-storage")
                runs = client.search_runs([experiment.experiment_id], "tags.trial_id != ''") if experiment else []
                return (any(len(client.get_metric_history(r.info.run_id, "val_top1")) >= 2 for r in runs)
                        and any(n.startswith("experiment_state") for n in storage.list_dir(search)))
            wait_for(half_way, driver, log_path, "the search made no progress")
        finally:
            os.killpg(driver.pid, signal.SIGKILL)      # the driver and the Ray it started die at once
            driver.wait()
    assert storage.exists(storage.join(search, "skipnet_search.json"))
    meta = json.loads(storage.read_text(storage.join(search, "skipnet_search.json")))

    resumed = skipnet("resume", search, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"skipnet resume {search}" in resumed.stdout
    experiment = client.get_experiment_by_name("s3-storage")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{meta['parent_run_id']}'")
    assert len(children) == 2 and len({c.data.tags["trial_id"] for c in children}) == 2
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "training_iteration")]
        assert steps == list(range(1, STEPS + 1)), steps              # no lost or repeated step
        assert child.info.status == "FINISHED"
        assert child.data.tags["checkpoint_path"].startswith(f"{search}/"), child.data.tags["checkpoint_path"]
        assert child.data.tags["checkpoint_path"].endswith(f"checkpoint_{STEPS - 1:06d}")
    assert client.get_run(meta["parent_run_id"]).info.status == "FINISHED"

    synced = skipnet("sync-mlflow", search, cwd=tmp_path, env=env)    # the callback logged all: nothing to do
    assert synced.returncode == 0 and "MLflow already holds everything" in synced.stdout, synced.stderr[-3000:]
    lost = children[0]                                 # a run MLflow lost: sync rebuilds it from the bucket
    client.delete_run(lost.info.run_id)
    synced = skipnet("sync-mlflow", search, cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "1 runs created" in synced.stdout and "1 checkpoints logged" in synced.stdout, synced.stdout
    rebuilt = client.search_runs([experiment.experiment_id], f"tags.trial_id = '{lost.data.tags['trial_id']}'")[0]
    assert rebuilt.info.status == "FINISHED"
    assert rebuilt.data.tags["checkpoint_path"] == lost.data.tags["checkpoint_path"]
    assert [a.path for a in client.list_artifacts(rebuilt.info.run_id, "checkpoint")] == ["checkpoint/engine.pt"]

    out = tmp_path / "best.yaml"
    exported = skipnet("export", meta["search_id"], "--max-computation", "100", "-o", str(out),
                       "--tracking-uri", mlflow_server["url"], cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    doc = yaml.safe_load(out.read_text())
    info = doc["export"]
    assert info["checkpoint"]["tune_path"].startswith(f"{search}/") and doc["hrl"]["init_checkpoint"] == init
    trained = skipnet("train", "--config", str(out), "--quiet", cwd=tmp_path, env=env)   # the README's reproduce command
    assert trained.returncode == 0, trained.stderr[-3000:]
    final = json.loads((tmp_path / doc["output_dir"] / "final.json").read_text())
    for key in ("val_top1", "val_computation_pct", "test_top1"):
        assert final[key] == pytest.approx(info["metrics"][key], abs=1e-6), key
    evaluated = skipnet("eval", "--checkpoint", info["checkpoint"]["tune_path"], "--split", "val",
                        "--batch-size", "100", cwd=tmp_path, env=env)                   # the trial's own model
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    shown = dict(line.split() for line in evaluated.stdout.splitlines()[1:] if len(line.split()) == 2)
    assert float(shown["val_top1"]) == pytest.approx(info["metrics"]["val_top1"], abs=1e-3)


@pytest.mark.parametrize("args, needle", [
    (("resume", "{bucket}/nosuchsearch"), "PATH: must be a search directory or URI holding skipnet_search.json"),
    (("sync-mlflow", "{bucket}/nosuchsearch"), "PATH: must be a search directory or URI holding skipnet_search.json"),
    (("eval", "--checkpoint", "{bucket}/nosuch/engine.pt"), "--checkpoint: checkpoint: no such file: s3://"),
], ids=["resume", "sync-mlflow", "eval"])
def test_nothing_at_the_uri_is_one_line_exit_2(s3, tmp_path, args, needle):
    bucket = f"s3://{s3['bucket']}"
    result = skipnet(*(a.format(bucket=bucket) for a in args), cwd=tmp_path, env=dict(os.environ, **s3["env"]),
                     timeout=180)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"skipnet {args[0]}: error: ") and needle in lines[0], lines[0]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
