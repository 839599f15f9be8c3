"""benchmarks/gpu_check.py end to end on CPU with tiny settings: every correctness check passes,
every section's figures are present and positive, and a failed check exits 1 with one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
TINY = ["--device", "cpu", "--threads", "1", "--depth", "38", "--batch", "8", "--batches", "1", "4",
        "--steps", "2", "--repeats", "1", "--warmup", "1", "--infer-images", "8", "--packing", "1", "2",
        "--packing-seconds", "1", "--resume-iterations", "2", "--resume-val", "32"]


def _positive(row: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(row[k], float) and row[k] > 0, (k, row)


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"torch {torch.__version__}" in proc.stdout and "CUDA" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "gpu_check"
    dev = data["device"]
    assert dev["type"] == "cpu" and dev["name"] and dev["torch"] == torch.__version__ and "cuda" in dev
    assert dev["amp_dtype"] is None and "no-op" in dev["amp_note"]

    corr = data["correctness"]
    names = [c["check"] for c in corr["checks"]]
    expected = [f"executor {g} b{b} {p}" for g in ("recurrent", "feedforward_fc") for b in (1, 4)
                for p in ("fp32", "amp")] + ["sp step amp", "hrl step amp", "hrl_executed_only step amp", "resume"]
    assert names == expected
    assert corr["passed"] and all(c["passed"] for c in corr["checks"]), [c for c in corr["checks"] if not c["passed"]]
    for c in corr["checks"]:
        if c["check"].startswith("executor"):
            assert 0 <= c["max_abs_diff"] <= c["tolerance"] == 1e-4 and c["logit_scale"] > 0
            assert 0 < c["executed_pct"] < 100 and c["amp_active"] is False
        elif "step" in c["check"]:
            _positive(c, "grad_norm")
            assert c["amp_active"] is False and "no-op" in c["note"]
        else:
            assert c["max_param_diff"] == 0.0 and c["max_metric_diff"] == 0.0     # exact on CPU

    speed = data["speed"]
    assert [r["setting"] for r in speed["sp"]] == ["fp32"]
    for r in speed["sp"]:
        _positive(r, "plain_img_s", "skipnet_img_s", "skipnet_vs_plain")
    for r in speed["hrl"]:
        _positive(r, "compute_everything_img_s", "executed_only_img_s", "executed_only_vs_everything")
        assert 30 < r["executed_pct"] < 70                      # fair-coin gates: about half executes
    assert [r["batch"] for r in speed["inference"]] == [1, 4]
    for r in speed["inference"]:
        _positive(r, "masked_img_s", "executor_img_s", "executor_vs_masked")
        assert 40 < r["computation_pct"] < 60

    pack = data["packing"]
    assert [r["processes"] for r in pack["rows"]] == [1, 2]
    for r in pack["rows"]:
        _positive(r, "total_img_s", "per_process_img_s", "slowest_process_img_s", "total_vs_best")
    best = max(r["total_img_s"] for r in pack["rows"])
    chosen = next(r for r in pack["rows"] if r["processes"] == pack["recommended_processes"])
    assert chosen["total_img_s"] >= 0.9 * best
    assert all(r["total_img_s"] < 0.9 * best for r in pack["rows"] if r["processes"] < chosen["processes"])


def test_failed_check_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check
    bad = {"check": "executor recurrent b4 amp", "passed": False, "max_abs_diff": 0.5, "tolerance": 0.01}
    monkeypatch.setattr(gpu_check, "correctness", lambda args, device: [bad])
    out = tmp_path / "fail.json"
    threads = str(torch.get_num_threads())          # keep this process's thread count for later tests
    assert gpu_check.main(["--device", "cpu", "--sections", "correctness", "--threads", threads,
                           "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: FAILED executor recurrent b4 amp: max |logit diff| 0.5")
    assert json.loads(out.read_text())["correctness"]["passed"] is False
