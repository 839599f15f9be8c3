"""The core (``skipnet.core``: models, gates, FLOPs, executor, checkpoints, data, training) and
the fronts layer above it (``skipnet.fronts``: the front maths, trials as points, plots) import
for real with ray, mlflow and optuna blocked: those belong to the tracking, search and cluster
layers. ``test_layout.py`` reads the same from the source, for every import."""
import subprocess
import sys

PACKAGES = ["skipnet.core", "skipnet.fronts"]


def python(code: str) -> str:
    """``code``'s standard output in a fresh interpreter, which must succeed."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


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
    assert int(python(code).split()[-1]) >= 20          # every module of both, not just the packages


def test_a_synthetic_run_and_a_search_worker_never_import_torchvision():
    """torchvision loads ``torch._dynamo`` as it imports (about 3 s a process: every CLI command
    and every Ray worker paid it); only the cifar / svhn / folder loaders need it. A short SP run
    on the synthetic set, with every module a search's worker imports, leaves it unimported."""
    code = ("import sys\n"
            "import skipnet, skipnet.cli, skipnet.tune.trainable, skipnet.tune.runner\n"
            "from skipnet.core.config import load_train_config\n"
            "from skipnet.core.train import Engine\n"
            "engine = Engine(load_train_config(None, {'data.synthetic_size': 200, 'data.synthetic_test_size': 20,\n"
            "    'data.val_size': 20, 'sp.batch_size': 8, 'eval.batch_size': 20, 'model.arch': 'cifar10_rnn_gate_38'}))\n"
            "engine.train(1)\n"
            "engine.evaluate('val')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n")
    output = python(code)
    assert output.splitlines()[-1] == "[]", output[-2000:]
