"""A two-node Ray cluster on this one machine, with token authentication, for tests and benchmarks.

Ray 2.60 joins no second node when both use 127.0.0.1, so the head runs on 127.0.0.2 and the
worker node on 127.0.0.3 (both loopback: nothing leaves the machine), each in its own short
temp dir (Ray's socket paths have a length limit) and with every port given explicitly, so that
several such clusters (other people's tests) never collide. Ray still binds some node ports on
all interfaces, hence token authentication: the nodes run with ``RAY_AUTH_MODE=token`` and a
private ``HOME`` holding the token in ``$HOME/.ray/auth_token`` (where ``ray get-auth-token
--generate`` puts it), and clients get ``env``: the token mode and ``RAY_AUTH_TOKEN_PATH``, so
the caller's own ``~/.ray`` is neither read nor written.

``stop()`` stops exactly the processes the cluster started: those whose command line names one
of its temp dirs, and their descendants, by PID. Never ``ray stop``: it stops every Ray on the
machine, other people's too.

    cluster = TwoNodeCluster().start()
    subprocess.run([..., "--address", cluster.gcs_address], env=cluster.env)
    cluster.kill_worker_raylet(); cluster.restart_worker()
    cluster.stop()
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
# variables of the caller's environment that would change what the nodes do: a driver's
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set by skipnet's local Ray) makes a worker node refuse to join
_DROPPED = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
            "RAY_AUTH_MODE")


# -- processes -------------------------------------------------------------------------------------

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


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (a local Ray: GCS, raylet, agents, workers)."""
    parents, pids = _parents(), {pid}
    while True:
        children = {p for p, parent in parents.items() if parent in pids} - pids
        if not children:
            return pids
        pids |= children


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


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def alive(pids: set[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    return [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]


def stop_processes(pids: set[int], grace_s: float = 15.0) -> None:
    """SIGTERM, SIGKILL what is still there after ``grace_s``, then wait until all are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.2)


# -- ports -----------------------------------------------------------------------------------------

def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))         # Ray binds some ports on all interfaces
            return True
        except OSError:
            return False


def free_port() -> int:
    """A port nothing listens on (the kernel's pick, as ``conftest.free_port``, on all interfaces)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def free_port_range(n: int) -> int:
    """The first of ``n`` consecutive free ports, below the kernel's ephemeral range (where no
    outgoing connection takes one meanwhile)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        if all(_bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports in 20000-32000")


# -- the cluster -----------------------------------------------------------------------------------

class TwoNodeCluster:
    """A head (127.0.0.2) and a worker node (127.0.0.3), ``num_cpus`` each, token auth on.

    ``node_env`` is added to the nodes' environment (S3 credentials, Ray system settings such as
    ``RAY_health_check_period_ms``); ``head_ip`` and ``worker_ip`` pick other loopback addresses.

    Attributes once started: ``gcs_address`` ("127.0.0.2:P", for ``ray.init`` / ``skipnet search
    --address``), ``dashboard`` ("http://127.0.0.1:D", for the Jobs API), ``env`` (a client
    environment: the caller's plus ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``),
    ``token_path``, ``head_temp_dir``, ``worker_temp_dir``, ``head_start_s``, ``worker_start_s``.
    """

    WORKER_PORTS = 24          # worker processes per node (trials, job supervisor and driver, idle ones)

    def __init__(self, num_cpus: int = 1, object_store_mb: int = 128, start_timeout_s: float = 120.0,
                 node_env: dict[str, str] | None = None, head_ip: str = HEAD_IP, worker_ip: str = WORKER_IP):
        self.num_cpus, self.object_store_mb, self.start_timeout_s = num_cpus, object_store_mb, start_timeout_s
        self.head_ip, self.worker_ip = head_ip, worker_ip
        self.node_env_extra = dict(node_env or {})
        self.home = tempfile.mkdtemp(prefix="rnh-", dir="/tmp")        # private HOME: the token lives there
        self.head_temp_dir = tempfile.mkdtemp(prefix="rn1-", dir="/tmp")
        self.worker_temp_dir = tempfile.mkdtemp(prefix="rn2-", dir="/tmp")
        self.logs = Path(self.home) / "start-logs"
        self.logs.mkdir()
        self.token_path = str(Path(self.home) / ".ray" / "auth_token")
        self.port, self.dashboard_port = free_port(), free_port()
        self._autoscaler_metric_port, self._dashboard_metric_port = free_port(), free_port()
        self.gcs_address = f"{head_ip}:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.head_start_s = self.worker_start_s = float("nan")
        self._worker_starts = 0

    # environments
    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
        env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
        return env

    @property
    def node_env(self) -> dict[str, str]:
        """What the nodes (and so every Ray worker, job driver and trial) run with."""
        return dict(self._base_env(), HOME=self.home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_path,
                    AUTOSCALER_METRIC_PORT=str(self._autoscaler_metric_port),
                    DASHBOARD_METRIC_PORT=str(self._dashboard_metric_port), **self.node_env_extra)

    @property
    def env(self) -> dict[str, str]:
        """A client's environment: the caller's own HOME, the cluster's token by path, and no
        ``RAY_AUTH_MODE``: skipnet finds out that the cluster wants the token (Ray's own tools
        need ``RAY_AUTH_MODE=token`` added)."""
        return dict(self._base_env(), RAY_AUTH_TOKEN_PATH=self.token_path)

    @property
    def token(self) -> str:
        return Path(self.token_path).read_text().strip()

    # start and stop
    def _node_ports(self) -> list[str]:
        workers = free_port_range(self.WORKER_PORTS)
        return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--min-worker-port={workers}", f"--max-worker-port={workers + self.WORKER_PORTS - 1}"]

    def _ray_start(self, args: list[str], name: str) -> float:
        """``ray start ARGS`` (output in the start log), its wall time; fails on a timeout or an error."""
        log_path = self.logs / f"{name}.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            try:
                done = subprocess.run([str(VENV_BIN / "ray"), "start", *args], stdout=log, stderr=subprocess.STDOUT,
                                      env=self.node_env, timeout=self.start_timeout_s, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:       # a worker that cannot reach its head retries forever
                raise RuntimeError(f"ray start ({name}) did not return within {self.start_timeout_s:.0f} s: "
                                   f"{log_path.read_text()[-3000:]}") from None
        if done.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed ({done.returncode}): {log_path.read_text()[-3000:]}")
        return time.monotonic() - started

    def start(self) -> "TwoNodeCluster":
        try:
            self._start()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _start(self) -> None:
        self._write_token()
        common = [f"--num-cpus={self.num_cpus}", f"--object-store-memory={self.object_store_mb * 2**20}",
                  "--disable-usage-stats"]
        self.head_start_s = self._ray_start(
            ["--head", f"--node-ip-address={self.head_ip}", f"--port={self.port}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
             f"--ray-client-server-port={free_port()}", f"--temp-dir={self.head_temp_dir}",
             *self._node_ports(), *common], "head")
        self._common = common
        self.start_worker()
        print(f"TwoNodeCluster {self.gcs_address} (dashboard {self.dashboard}): "
              f"head {self.head_start_s:.1f} s, worker {self.worker_start_s:.1f} s", file=sys.stderr)

    def _write_token(self) -> None:
        """The token ``ray get-auth-token --generate`` would write to ``$HOME/.ray/auth_token``
        (Ray's generator is ``secrets.token_hex(32)``), written here: the CLI costs 2-9 s of
        imports on this machine. Readable by its owner only (Ray writes it with mode 0644)."""
        path = Path(self.token_path)
        path.parent.mkdir(mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))

    def start_worker(self) -> None:
        """``ray start`` the worker node and wait until the head counts two live nodes."""
        self._worker_starts += 1
        started = time.monotonic()
        self._ray_start([f"--address={self.gcs_address}", f"--node-ip-address={self.worker_ip}",
                         f"--temp-dir={self.worker_temp_dir}", *self._node_ports(), *self._common],
                        f"worker-{self._worker_starts}")
        self.wait_for_nodes({self.head_ip, self.worker_ip})
        self.worker_start_s = time.monotonic() - started

    def restart_worker(self) -> float:
        """Stop what is left of the worker node (after ``kill_worker_raylet``) and start it again;
        its start time."""
        self.stop_worker()
        self.wait_for_nodes({self.head_ip})
        self.start_worker()
        return self.worker_start_s

    def stop_worker(self, grace_s: float = 3.0) -> None:
        pids = processes_of(self.worker_temp_dir)
        stop_processes(pids, grace_s)
        assert not alive(pids), f"worker node processes left running: {alive(pids)}"

    def stop(self, check: bool = True, grace_s: float = 3.0) -> None:
        """Stop exactly the processes this cluster started (by PID), then remove its files.

        SIGKILL follows SIGTERM after ``grace_s``: the dashboard's processes end at once, but a
        raylet takes some 10 s, and the GCS server and the autoscaler's monitor ignore SIGTERM
        (measured: still there after 20 s); nothing of a throwaway cluster needs saving."""
        # the Ray Client server daemonizes (its parent is init): it names the GCS address instead
        pids = (processes_of(self.worker_temp_dir) | processes_of(self.head_temp_dir)
                | processes_of(f"--address={self.gcs_address}\0"))
        stop_processes(pids, grace_s)
        left = alive(pids)
        for path in (self.head_temp_dir, self.worker_temp_dir, self.home):
            shutil.rmtree(path, ignore_errors=True)
        if check:
            assert not left, f"Ray processes left running: {left}"

    def __enter__(self) -> "TwoNodeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(check=exc[0] is None)

    # faults
    def raylet_pid(self, temp_dir: str) -> int:
        pids = [p for p in processes_of(temp_dir) if Path(f"/proc/{p}/exe").exists()
                and _exe_name(p) == "raylet" and not _zombie(p)]
        assert len(pids) == 1, f"expected one raylet under {temp_dir}, found {pids}"
        return pids[0]

    def kill_worker_raylet(self) -> int:
        """SIGKILL the worker node's raylet (its trials' processes die with it); its PID."""
        pid = self.raylet_pid(self.worker_temp_dir)
        os.kill(pid, signal.SIGKILL)
        return pid

    # questions to the head
    def api(self, path: str, timeout: float = 10.0):
        """GET ``path`` of the dashboard's HTTP API with the cluster's token; the parsed JSON."""
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> set[str]:
        """The IP addresses of the nodes the head counts as alive."""
        nodes = self.api("/nodes?view=summary")["data"]["summary"]
        return {n["raylet"]["nodeManagerAddress"] for n in nodes if n["raylet"]["state"] == "ALIVE"}

    def wait_for_nodes(self, ips: set[str], timeout: float = 90.0) -> None:
        deadline, seen = time.monotonic() + timeout, None
        while True:
            try:
                seen = self.alive_nodes()
                if seen == ips:
                    return
            except (OSError, KeyError, ValueError) as e:      # the dashboard still starting
                seen = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the head did not count nodes {sorted(ips)} as alive within {timeout:.0f} s "
                                   f"(last seen: {seen})")
            time.sleep(0.5)


def _exe_name(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""
