"""The core (``skipnet.core``: models, gates, FLOPs, executor, checkpoints, data, training) and
the fronts layer above it (``skipnet.fronts``: the front maths, trials as points, plots) import
for real with ray, mlflow and optuna blocked: those belong to the tracking, search and cluster
layers. ``test_layout.py`` reads the same from the source, for every import."""
import subprocess
import sys

PACKAGES = ["skipnet.core", "skipnet.fronts"]


def test_core_imports_without_ray_mlflow_optuna():
    code = ("import sys, importlib, pkgutil\n"
            "for banned in ('ray', 'mlflow', 'optuna'):\n"
            "    sys.modules[banned] = None\n"
            "importlib.import_module('skipnet')\n"
            "names = []\n"
            f"for package in {PACKAGES!r}:\n"
            "    root = importlib.import_module(package)\n"
            "    names += [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + '.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "print(len(names))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 20          # every module of both, not just the packages
