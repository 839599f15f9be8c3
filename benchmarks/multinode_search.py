"""Wall time of a quickstart-sized search on a two-node Ray cluster with S3 storage vs local Ray.

The same experiment (``experiments/quickstart.yaml`` unless ``--experiment``) runs as
``python -m skipnet search`` twice, each time as a fresh process with its own SQLite MLflow store:

* ``two nodes + S3``: a head (127.0.0.2) and a worker node (127.0.0.3) started on this machine
  with ``ray start`` and token authentication (``tests/multinode.py``), ``--cpus-per-node`` CPUs
  each, the search stored in a bucket of moto's S3 server on 127.0.0.1 (``storage_path:
  s3://...``); the search connects with ``--address``;
* ``local``: the local Ray ``skipnet search`` starts by itself (all cores), local storage.

Two nodes of one CPU each have the cores of local Ray on a 2-core machine, so the difference is
the price of the cluster (scheduling across nodes, object transfers) and of S3 storage (every
checkpoint and result uploaded, SP checkpoints downloaded). ``wall_s`` is the command's wall
time (interpreter start, imports and ``ray.init`` included), ``search_s`` what the search
logged as its own wall time (``search_wall_time_s`` on the MLflow parent run); the cluster's
start-up is reported apart. The Ray processes this script starts are stopped by PID (never
``ray stop``), the S3 server too.

    python benchmarks/multinode_search.py [--quick] [--only cluster|local] [--cpus-per-node 1]

``--quick`` shrinks the experiment with ``--set`` overrides (less data, 20 iterations a stage)
to smoke-test the script in a few minutes; its timings are start-up dominated.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from _common import machine, print_table, write_json  # noqa: E402
from multinode import TwoNodeCluster, free_port, stop_processes  # noqa: E402

BUCKET = "skipnet-bench"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
QUICK = ["train.data.synthetic_size=600", "train.data.synthetic_test_size=100", "train.data.val_size=100",
         "train.sp.iterations=20", "train.sp.lr_milestones=[15]", "train.sp.eval_every=10", "train.sp.gate_warmup=5",
         "train.hrl.iterations=20", "train.hrl.eval_every=10", "train.eval.batch_size=100",
         "budget.iterations_per_step=10"]


class MotoServer:
    """``moto_server`` on 127.0.0.1 with one bucket; stopped by its PID."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = dict(S3_ENV, AWS_ENDPOINT_URL=self.endpoint)
        self.log = open(root / "moto.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 60
        while True:                                  # creating the bucket answers once the server does
            try:
                urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT"),
                                       timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise SystemExit(f"moto_server did not start: {(root / 'moto.log').read_text()[-2000:]} "
                                     "(pip install 'moto[server]')")
                time.sleep(0.3)

    def stop(self) -> None:
        stop_processes({self.proc.pid}, grace_s=10)
        self.proc.wait()
        self.log.close()


def search(experiment: Path, overrides: list[str], workdir: Path, env: dict, address: str | None) -> dict:
    """``skipnet search`` as a fresh process; its wall time and what it logged to MLflow."""
    workdir.mkdir(parents=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "skipnet", "search", str(experiment), "--set", f"mlflow.tracking_uri={uri}"]
    for item in overrides:
        cmd += ["--set", item]
    if address:
        cmd += ["--address", address]
    started = time.perf_counter()
    with open(workdir / "search.log", "w") as log:
        done = subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=4 * 3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"skipnet search failed ({done.returncode}): {(workdir / 'search.log').read_text()[-3000:]}")
    return dict(wall_s=wall, **_logged(uri))


def _logged(uri: str) -> dict:
    """The search's own wall time and its trials, from its MLflow parent and child runs."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    (experiment,) = client.search_experiments(filter_string="name != 'Default'")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`skipnet.kind` = 'search'")
    children = client.search_runs([experiment.experiment_id], filter_string="tags.trial_id != ''")
    return {"search_s": parents[0].data.metrics.get("search_wall_time_s") if parents else None,
            "trials": len(children), "finished": sum(r.info.status == "FINISHED" for r in children)}


def nodes_used(cluster: TwoNodeCluster) -> list[str]:
    """The node addresses the cluster's trials reported from (Tune's ``node_ip`` per result)."""
    ips = set()
    for path in Path(cluster.head_temp_dir).glob("session_*/artifacts/*/*/driver_artifacts/*/result.json"):
        for line in path.read_text().splitlines():
            try:
                ips.add(json.loads(line)["node_ip"])
            except (json.JSONDecodeError, KeyError):
                pass
    return sorted(ips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--quick", action="store_true", help="shrink the experiment (smoke test)")
    parser.add_argument("--only", choices=["cluster", "local"], help="run one of the two setups")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more experiment overrides")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/multinode_search[_quick].json")
    args = parser.parse_args()
    experiment = Path(args.experiment).resolve()
    overrides = (QUICK if args.quick else []) + args.set
    out = args.out or str(ROOT / "benchmarks" / "results" / f"multinode_search{'_quick' if args.quick else ''}.json")
    base_env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows, cluster_info, load_before = [], {}, os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="multinode-bench-"))
    try:
        if args.only in (None, "cluster"):
            s3 = MotoServer(work)
            cluster = TwoNodeCluster(num_cpus=args.cpus_per_node, node_env=dict(s3.env, PYTHONPATH=str(ROOT)))
            try:
                cluster.start()
                cluster_info = {"head_start_s": cluster.head_start_s, "worker_start_s": cluster.worker_start_s,
                                "cpus_per_node": args.cpus_per_node}
                storage = f"storage_path=s3://{BUCKET}/searches"
                result = search(experiment, [*overrides, storage], work / "cluster", dict(cluster.env, **s3.env),
                                cluster.gcs_address)
                rows.append({"setup": "two nodes + S3 (moto)", **result, "nodes": ",".join(nodes_used(cluster))})
            finally:
                cluster.stop()
                s3.stop()
        if args.only in (None, "local"):
            storage = f"storage_path={work / 'local' / 'searches'}"
            result = search(experiment, [*overrides, storage], work / "local", base_env, None)
            rows.append({"setup": "local Ray + local disk", **result, "nodes": "127.0.0.1"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if cluster_info:
        print(f"cluster start-up: head {cluster_info['head_start_s']:.1f} s, worker {cluster_info['worker_start_s']:.1f} s "
              f"(not in wall_s)")
    print_table(rows, ["setup", "wall_s", "search_s", "trials", "finished", "nodes"])
    write_json(out, {"benchmark": "multinode_search", "experiment": str(experiment.relative_to(ROOT))
                     if experiment.is_relative_to(ROOT) else str(experiment), "overrides": overrides,
                     "quick": args.quick, "cluster": cluster_info, "machine": machine(),
                     # others' processes on the cores change these timings: the 1-minute load before and after
                     "load_avg_1m": [load_before[0], os.getloadavg()[0]], "rows": rows})


if __name__ == "__main__":
    main()
