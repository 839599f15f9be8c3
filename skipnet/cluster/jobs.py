"""Searches as Ray jobs: ``submit``, ``status``, ``logs`` and ``stop`` through the Jobs API.

``submit`` uploads the working directory (minus virtual environments, runs and local stores)
as the job's ``runtime_env`` and runs ``python -m skipnet search EXPERIMENT --address auto`` on
the cluster, with the variables named by ``--env`` copied from the caller's environment (S3
credentials, say). It first asks the cluster whether it wants a token (``skipnet.cluster.auth``),
so it works against a token cluster and a plain ``ray start`` alike. It knows no experiments:
``skipnet submit`` validates one first (``skipnet.tune.runner.check_search``). ``status``,
``logs`` and ``stop`` send the token (if any) to the same REST endpoints themselves, without
importing ray. ``stop`` sends the driver SIGTERM: it ends its MLflow runs ``KILLED`` and Tune
saves the search's state, within the ``STOP_WAIT_S`` the job is given before Ray's SIGKILL.
"""
from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

from skipnet.cluster.auth import NO_TOKEN, match_dashboard, token
from skipnet.errors import ConfigError, SkipNetError

AGENT_WAIT_S = 120.0   # how long submit waits for the job agent of a head that is still starting
STOP_WAIT_S = 30       # SIGTERM to SIGKILL on skipnet stop (Ray's default, 3 s, is too short to save state)
EXCLUDES = [".venv", "venv", ".git", "runs", "mlruns", "mlflow.db", "data", "__pycache__", "*.pt", "*.pth.tar",
            "benchmarks/results"]


def _check_dashboard(address: str) -> None:
    if not address.startswith(("http://", "https://")):
        raise ConfigError("--address", address, "the Ray dashboard URL, e.g. http://127.0.0.1:8265")


def _client(address: str):
    _check_dashboard(address)
    from ray.job_submission import JobSubmissionClient
    try:
        return JobSubmissionClient(address)
    except Exception as e:   # connection refused, auth failure, wrong port: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SkipNetError(f"--address: cannot reach the Ray Jobs API at {address}: {msg} "
                           f"(expected the dashboard URL of a running cluster, e.g. http://HEAD:8265)") from None


def job_env(names: list[str] | None) -> dict[str, str]:
    """The job's environment variables: each named one from this environment (an unset or
    malformed name is refused in one line), and the stop grace period."""
    env = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
    for name in names or []:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError("--env", name, "the name of an environment variable, e.g. AWS_SECRET_ACCESS_KEY")
        if name not in os.environ:
            raise ConfigError("--env", name, "a variable set in this environment (export it first)")
        env[name] = os.environ[name]
    return env


def submit(experiment: str, address: str, *, working_dir: str = ".", overrides: list[str] | None = None,
           env: list[str] | None = None) -> str:
    """Submit ``skipnet search`` of ``experiment`` (a path inside ``working_dir``, with
    ``overrides``, validated by the caller); the job id. ``env`` names variables passed from this
    environment into the job (values never printed)."""
    _check_dashboard(address)
    env_vars = job_env(env)
    match_dashboard(address)                           # token mode or not, before the Jobs SDK talks
    rel = os.path.relpath(Path(experiment).resolve(), Path(working_dir).resolve())
    if rel.startswith(".."):
        raise ConfigError("EXPERIMENT", experiment, f"a file inside the uploaded working directory {working_dir}")
    args = ["python", "-m", "skipnet", "search", rel, "--address", "auto"]
    for item in overrides or []:
        args += ["--set", item]
    client = _client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=" ".join(shlex.quote(a) for a in args),
                                     runtime_env={"working_dir": working_dir, "excludes": EXCLUDES,
                                                  "env_vars": env_vars},
                                     metadata={"skipnet": "search", "experiment": rel})
        except RuntimeError as e:      # the SDK's error for a refused request: one line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "No available agent" in first and time.monotonic() < deadline:
                time.sleep(2.0)        # a head that just started: its job agent is still coming up
                continue
            raise SkipNetError(f"submit: the Ray Jobs API at {address} refused the job: {first}") from None


def _jobs_api(method: str, address: str, path: str) -> dict:
    """One request to the Ray Jobs REST API (what ``JobSubmissionClient`` sends), without
    importing ray: ``status``, ``logs`` and ``stop`` answer in the time of the request."""
    import json
    import urllib.error
    import urllib.request
    _check_dashboard(address)
    secret = token()
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    request = urllib.request.Request(address.rstrip("/") + path, method=method, headers=headers,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace").strip()
        first = body.splitlines()[0] if body else e.reason
        if e.code == 401:
            raise SkipNetError(f"--address: the cluster at {address} requires its token and none was found: "
                               f"{NO_TOKEN}") from None
        if e.code == 403:
            raise SkipNetError(f"--address: the cluster at {address} refused the token ({first}): use the head's "
                               "token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)") from None
        if e.code == 404 or (e.code == 400 and "does not exist" in body.lower()):
            job = path.split("/")[3]
            raise SkipNetError(f"JOB_ID: no job {job} on the cluster at {address} "
                               "(the id skipnet submit printed, e.g. raysubmit_...)") from None
        raise SkipNetError(f"--address: the Ray Jobs API at {address} answered {e.code}: {first}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SkipNetError(f"--address: cannot reach the Ray Jobs API at {address}: {reason} "
                           "(expected the dashboard URL of a running cluster, e.g. http://HEAD:8265)") from None


def status(job_id: str, address: str) -> str:
    return str(_jobs_api("GET", address, f"/api/jobs/{job_id}")["status"])


def logs(job_id: str, address: str) -> str:
    return str(_jobs_api("GET", address, f"/api/jobs/{job_id}/logs")["logs"])


def stop(job_id: str, address: str) -> bool:
    return bool(_jobs_api("POST", address, f"/api/jobs/{job_id}/stop")["stopped"])
