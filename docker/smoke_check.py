"""Checks that docker/smoke.sh runs against the compose stack, from the host, with the standard
library only: is the stack up, did a job finish, and what the search left in MLflow.

    python docker/smoke_check.py ready --dashboard URL --mlflow URL [--timeout S]
    python docker/smoke_check.py job JOB_ID --dashboard URL [--timeout S]
    python docker/smoke_check.py mlflow --mlflow URL --experiment NAME --trials N --steps N
    python docker/smoke_check.py artifacts --mlflow URL --experiment NAME

Each prints what it found on one line; a failure is one line on stderr and exit 1. The Ray
token comes from RAY_AUTH_TOKEN (sent as the Ray client sends it: Authorization: Bearer).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


class CheckFailed(Exception):
    pass


def _request(url: str, body: dict | None = None, token: str | None = None, timeout: float = 10.0) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def _until(deadline: float, what: str, probe, interval: float = 3.0):
    """Call ``probe`` until it returns a value other than None, or fail at ``deadline``."""
    last = "no answer yet"
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not after the timeout (last: {last})")
        time.sleep(min(interval, max(0.05, deadline - time.monotonic())))


def _experiment(api: str, name: str) -> dict:
    try:
        return _request(f"{api}/experiments/get-by-name?experiment_name={name}")["experiment"]
    except urllib.error.HTTPError as e:
        raise CheckFailed(f"MLflow has no experiment {name!r} ({e.code})") from None


def ready(args) -> str:
    """The MLflow server answers /health, and the Ray Jobs API answers with the token."""
    deadline = time.monotonic() + args.timeout
    token = os.environ.get("RAY_AUTH_TOKEN")

    def mlflow_up():
        with urllib.request.urlopen(f"{args.mlflow}/health", timeout=5) as r:
            return r.status if r.status == 200 else None

    def jobs_api_up():
        _request(f"{args.dashboard}/api/jobs/", token=token)
        return True

    start = time.monotonic()
    _until(deadline, f"MLflow at {args.mlflow}/health", mlflow_up)
    mlflow_s = time.monotonic() - start
    _until(deadline, f"the Ray Jobs API at {args.dashboard}", jobs_api_up)
    return f"MLflow up after {mlflow_s:.0f} s, Ray Jobs API after {time.monotonic() - start:.0f} s"


def job(args) -> str:
    """Wait for JOB_ID to end; SUCCEEDED passes, anything else fails."""
    deadline = time.monotonic() + args.timeout
    token = os.environ.get("RAY_AUTH_TOKEN")
    start = time.monotonic()

    def ended():
        info = _request(f"{args.dashboard}/api/jobs/{args.job_id}", token=token)
        return info if info.get("status") in ("SUCCEEDED", "FAILED", "STOPPED") else None

    info = _until(deadline, f"job {args.job_id} to end", ended, interval=5.0)
    if info["status"] != "SUCCEEDED":
        raise CheckFailed(f"job {args.job_id} ended {info['status']}: {info.get('message', '')}".strip())
    return f"job {args.job_id} SUCCEEDED after {time.monotonic() - start:.0f} s of waiting"


def mlflow(args) -> str:
    """The search's parent run and each trial run exist, FINISHED, with metrics at every step."""
    api = f"{args.mlflow}/api/2.0/mlflow"
    experiment = _experiment(api, args.experiment)
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}
        if token:
            body["page_token"] = token
        page = _request(f"{api}/runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            break
    kinds: dict[str, list[dict]] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        kinds.setdefault(tags.get("skipnet.kind", "other"), []).append(run)
    parents, trials = kinds.get("search", []), kinds.get("trial", [])
    if len(parents) != 1:
        raise CheckFailed(f"expected 1 search (parent) run, found {len(parents)}")
    if len(trials) != args.trials:
        raise CheckFailed(f"expected {args.trials} trial runs, found {len(trials)}")
    unfinished = [r["info"]["run_id"] for r in parents + trials if r["info"]["status"] != "FINISHED"]
    if unfinished:
        raise CheckFailed(f"runs not FINISHED: {', '.join(unfinished)}")
    keys = set()
    for run in trials:
        metrics = {m["key"] for m in run["data"].get("metrics", [])}
        if not {"val_top1", "val_computation_pct"} <= metrics:
            raise CheckFailed(f"trial run {run['info']['run_id']} lacks val_top1/val_computation_pct "
                              f"(has {sorted(metrics)[:8]})")
        history = _request(f"{api}/metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_top1")
        steps = sorted(m["step"] for m in history.get("metrics", []))
        if steps != list(range(1, args.steps + 1)):
            raise CheckFailed(f"trial run {run['info']['run_id']}: val_top1 at steps {steps}, "
                              f"expected 1..{args.steps} once each")
        keys |= metrics
    print(json.dumps({"experiment_id": experiment["experiment_id"], "runs": len(runs),
                      "search": len(parents), "trials": len(trials), "sp": len(kinds.get("sp", [])),
                      "metric_keys": len(keys)}))
    return (f"experiment {args.experiment} (id {experiment['experiment_id']}): {len(runs)} runs = 1 search + "
            f"{len(trials)} trials + {len(kinds.get('sp', []))} SP, all FINISHED, val_top1 at steps "
            f"1..{args.steps} in every trial")


def artifacts(args) -> str:
    """The search's parent run lists the files ``skipnet pareto`` logged under pareto/: they
    went through the MLflow server's artifact proxy into its artifact store."""
    api = f"{args.mlflow}/api/2.0/mlflow"
    experiment = _experiment(api, args.experiment)
    page = _request(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                           "filter": "tags.`skipnet.kind` = 'search'"})
    runs = page.get("runs", [])
    if len(runs) != 1:
        raise CheckFailed(f"expected 1 search run in {args.experiment!r}, found {len(runs)}")
    run_id = runs[0]["info"]["run_id"]
    listed = _request(f"{api}/artifacts/list?run_id={run_id}&path=pareto").get("files", [])
    sizes = {f["path"].split("/")[-1]: int(f.get("file_size") or 0) for f in listed if not f.get("is_dir")}
    wanted = {"front.png", "front.csv", "front.html"}
    if not wanted <= set(sizes) or not all(sizes[name] > 0 for name in wanted):
        raise CheckFailed(f"run {run_id}: pareto/ holds {sorted(sizes)}, expected {sorted(wanted)}, non-empty")
    return f"search run {run_id}: pareto/ holds " + ", ".join(f"{n} ({sizes[n]} B)" for n in sorted(wanted))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smoke_check.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("ready")
    p.add_argument("--dashboard", required=True)
    p.add_argument("--mlflow", required=True)
    p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("job")
    p.add_argument("job_id")
    p.add_argument("--dashboard", required=True)
    p.add_argument("--timeout", type=float, default=1800)
    p = sub.add_parser("mlflow")
    p.add_argument("--mlflow", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p = sub.add_parser("artifacts")
    p.add_argument("--mlflow", required=True)
    p.add_argument("--experiment", required=True)
    args = parser.parse_args(argv)
    try:
        print({"ready": ready, "job": job, "mlflow": mlflow, "artifacts": artifacts}[args.check](args))
    except CheckFailed as e:
        print(f"smoke_check {args.check}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
