"""Searches as Ray jobs: ``submit``, ``status``, ``logs`` and ``stop`` through the Jobs API.

``submit`` uploads the working directory (minus virtual environments, runs and local stores)
as the job's ``runtime_env`` and runs ``python -m skipnet search EXPERIMENT --address auto`` on
the cluster. Ray 2.60 clusters require token authentication by default: unless a token is
given (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``), the client runs in token mode and reads
the token ``ray start`` wrote to the user's Ray directory.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from skipnet.errors import ConfigError, SkipNetError

EXCLUDES = [".venv", "venv", ".git", "runs", "mlruns", "mlflow.db", "data", "__pycache__", "*.pt", "*.pth.tar",
            "benchmarks/results"]


def _client(address: str):
    if not address.startswith(("http://", "https://")):
        raise ConfigError("--address", address, "the Ray dashboard URL, e.g. http://127.0.0.1:8265")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient
    try:
        return JobSubmissionClient(address)
    except Exception as e:   # connection refused, auth failure, wrong port: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SkipNetError(f"--address: cannot reach the Ray Jobs API at {address}: {msg} "
                           f"(expected the dashboard URL of a running cluster, e.g. http://HEAD:8265)") from None


def submit(experiment: str, address: str, *, working_dir: str = ".", overrides: list[str] | None = None) -> str:
    """Submit ``skipnet search`` of ``experiment`` (a path inside ``working_dir``); the job id."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")    # read when ray is imported (validation below imports it)
    from skipnet.config import parse_overrides
    from skipnet.tune.experiment import load_experiment
    from skipnet.tune.runner import build_scheduler, load_space
    exp = load_experiment(experiment, parse_overrides(overrides))   # refuse bad input before touching the cluster
    load_space(exp)
    build_scheduler(exp)
    rel = os.path.relpath(Path(experiment).resolve(), Path(working_dir).resolve())
    if rel.startswith(".."):
        raise ConfigError("EXPERIMENT", experiment, f"a file inside the uploaded working directory {working_dir}")
    args = ["python", "-m", "skipnet", "search", rel, "--address", "auto"]
    for item in overrides or []:
        args += ["--set", item]
    client = _client(address)
    return client.submit_job(entrypoint=" ".join(shlex.quote(a) for a in args),
                             runtime_env={"working_dir": working_dir, "excludes": EXCLUDES},
                             metadata={"skipnet": "search", "experiment": rel})


def status(job_id: str, address: str) -> str:
    return str(_client(address).get_job_status(job_id).value)


def logs(job_id: str, address: str) -> str:
    return _client(address).get_job_logs(job_id)


def stop(job_id: str, address: str) -> bool:
    return _client(address).stop_job(job_id)
