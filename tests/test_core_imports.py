"""The core (models, gates, FLOPs, executor, checkpoints, data, training) imports no ray, mlflow
or optuna: those belong to the search, tracking and cluster layers."""
import subprocess
import sys

CORE = ["skipnet", "skipnet.core.models", "skipnet.core.flops", "skipnet.core.executor", "skipnet.core.checkpoint",
        "skipnet.core.data", "skipnet.core.config", "skipnet.core.train", "skipnet.fronts.pareto"]


def test_core_imports_without_ray_mlflow_optuna():
    code = ("import sys, importlib\n"
            "for banned in ('ray', 'mlflow', 'optuna'):\n"
            "    sys.modules[banned] = None\n"
            f"for name in {CORE!r}:\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
