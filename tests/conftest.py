"""Shared fixtures. Torch runs two threads at most per test process, waiting passively."""
import os
from pathlib import Path

import pytest

# skipnet before torch: it sets OMP_WAIT_POLICY=passive, which libgomp reads once, when torch loads
# it (skipnet/core/threads.py). Imported the other way round, the two threads spin at every barrier:
# test_engine's resume tests took 61 s beside two busy loops against 28 s passive.
import skipnet  # noqa: F401
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Ray starts its workers at nice 15. Under ``-n 2`` a trial then gets a few percent of a core
# while the other pytest worker trains at nice 0 (the MO-PBT search of test_search took 542 s
# beside two training processes against 69 s alone): every Ray process the tests start
# (``ray.init``, ``ray start`` nodes, the CLI's searches) inherits this and competes as an equal.
os.environ.setdefault("RAY_worker_niceness", "0")

TESTS = Path(__file__).resolve().parent
#: The longest files first (by their time under ``-n 2 --dist loadfile`` in ``--durations`` on
#: 2026-12-07: test_learning 391 s down to about 40 s for the last ones named here).
#: pytest-xdist hands files out in collection order (``--no-loadscope-reorder`` in pyproject),
#: so the long ones start early and the short ones fill the gaps at the end, instead of a worker
#: finishing alone with a long file (longest-processing-time-first). The rest keep their order.
LONGEST_FIRST = ("train/test_learning.py", "tune/test_search.py", "tune/test_fronts_export.py", "test_readme.py",
                 "tune/test_multinode.py", "tune/test_faults.py", "tune/test_s3_storage.py", "tune/test_cluster.py",
                 "train/test_engine.py", "tune/test_sharing.py", "test_cli_train.py", "models/test_registry.py",
                 "test_bad_input.py", "tune/test_live_front.py", "train/test_killed_write.py")


#: Fixtures that start Ray or a server: every test using one is in the slow tier. The fast tier
#: (``pytest -m "not slow"``, for the edit-test loop) is every test needing no Ray, no server
#: and no training run; modules that train or run the CLI end to end mark themselves slow.
SLOW_FIXTURES = frozenset({"local_ray", "mlflow_server", "s3_server", "ray_head"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_file_rank)        # stable: a file's tests, and the files not named, keep their order


def _file_rank(item) -> int:
    """An item's place in ``LONGEST_FIRST``; after them all when its file is not named."""
    name = item.path.relative_to(TESTS).as_posix() if item.path.is_relative_to(TESTS) else None
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MLflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and artifacts served by the server.
    ``stop()`` and ``start()`` again keep the same port, database and artifacts."""

    def __init__(self, root, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.proc = None

    def start(self, timeout: float = 180) -> "MLflowServer":
        import subprocess
        import sys
        import time
        import urllib.request
        self.log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                      f"sqlite:///{self.root}/mlflow.db", "--artifacts-destination", str(self.artifacts),
                                      "--host", "127.0.0.1", "--port", str(self.port),
                                      # one worker process: the default 4 each import MLflow (about 10 s
                                      # of CPU and 2.6 s of start-up per server, measured); the tests'
                                      # handful of concurrent clients do not need them
                                      "--workers", "1"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     # no job runner: registering its periodic tasks stalled the server
                                     # for ~35 s some 2 minutes after start (measured); the tests run no jobs
                                     env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(1)

    def stop(self) -> None:
        import signal
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        if self.proc is not None:
            self.log.close()
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend, artifacts served by the
    server), started once per test session: it needs about 30 s to come up."""
    server = MLflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield {"url": server.url, "artifacts": server.artifacts}
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API on 127.0.0.1 (moto's ``moto_server`` from the venv) holding one empty
    bucket, started once per test session and stopped by its PID. Nothing is set globally: a
    test passes ``env`` to the processes it starts, or sets it with ``monkeypatch`` before its
    first S3 call (pyarrow reads it when it creates a filesystem)."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path
    root, port, bucket = tmp_path_factory.mktemp("s3-server"), free_port(), "skipnet-test"
    endpoint = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:                                    # the bucket's PUT answers once the server does
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"), timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield {"endpoint": endpoint, "bucket": bucket,
               "env": {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module, on 127.0.0.1 only."""
    import ray

    from skipnet.tune.runner import init_ray
    init_ray(None, num_cpus=2)
    # the project's default local Ray listens on loopback only
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()

