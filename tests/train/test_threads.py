"""The CPU thread policy (``skipnet.core.threads``): the config's count wins, the default is one
thread per usable CPU (affinity, cgroup quota, OMP_NUM_THREADS, a trial's CPUs), and
``import skipnet`` makes OpenMP threads sleep rather than spin before torch loads libgomp.

Whether libgomp took the wait policy is read from libgomp itself: ``OMP_DISPLAY_ENV=verbose``
prints its settings as it loads, and ``GOMP_SPINCOUNT`` is 0 under ``passive``, 300000 (its
spin-then-sleep default) when the variable was unset when it loaded, 3e10 under ``active``.
"""
import os
import subprocess
import sys

import pytest
import torch

from skipnet.core import threads
from skipnet.core.config import load_train_config


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def spin_count(*argv: str, **env: str) -> str:
    """libgomp's GOMP_SPINCOUNT in a fresh ``python *argv`` (OMP_WAIT_POLICY unset unless given)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                            env={**environ, "OMP_DISPLAY_ENV": "verbose", **env})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert lines, f"libgomp printed no settings: {result.stderr[-2000:]}"
    return lines[0].split("=")[1].strip().strip("'")


def test_import_skipnet_before_torch_makes_openmp_threads_sleep():
    """Every entry point imports the package first: ``skipnet``/``python -m skipnet`` (skipnet.cli)
    and a Ray worker building the trainable (skipnet.tune.trainable) alike."""
    assert spin_count("-c", "import skipnet, torch; torch.ones(1)") == "0"


def test_a_wait_policy_in_the_environment_is_kept():
    assert spin_count("-c", "import skipnet, torch; torch.ones(1)", OMP_WAIT_POLICY="active") == "30000000000"


def test_torch_imported_first_keeps_libgomp_default():
    """What the hook in skipnet/__init__.py is for: too late once torch has loaded libgomp."""
    assert spin_count("-c", "import torch, skipnet; torch.ones(1)") == "300000"


def test_explicit_threads_win_over_every_default(keep_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.configure(3, cap=1) == 3
    assert threads.configure(None, cap=1) == 1


def test_default_is_one_thread_per_usable_cpu(keep_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = sorted(os.sched_getaffinity(0))
    assert threads.default_threads() == threads.usable_cpus() <= len(cpus)
    try:
        os.sched_setaffinity(0, cpus[:1])          # this thread may now run on one CPU only
        assert threads.usable_cpus() == 1 and threads.configure(None) == 1
    finally:
        os.sched_setaffinity(0, cpus)
    assert threads.configure(None) == threads.usable_cpus()


def test_default_is_capped_by_omp_num_threads_and_the_trial(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    usable = threads.usable_cpus()
    assert threads.default_threads(cap=1) == 1
    assert threads.default_threads(cap=0.5) == 1                 # a fractional CPU still gets a thread
    assert threads.default_threads(cap=usable + 8) == usable      # a cap never adds threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "0")                    # not a count: ignored
    assert threads.default_threads() == usable


@pytest.mark.parametrize("files,quota", [
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_caps_usable_cpus(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_cpu_quota(tmp_path) == quota
    cpus = len(os.sched_getaffinity(0))
    expected = cpus if quota is None else max(1, min(cpus, -(-quota // 1)))
    assert threads.usable_cpus(tmp_path) == expected


def test_fit_applies_the_policy(tmp_path, keep_threads, monkeypatch):
    from skipnet.core.train.run import fit
    small = {"stage": "sp", "data.synthetic_size": 300, "data.synthetic_test_size": 50, "data.val_size": 50,
             "sp.batch_size": 8, "sp.iterations": 1, "sp.eval_every": 1, "eval.max_batches": 1,
             "eval.batch_size": 8, "model.arch": "cifar10_rnn_gate_38"}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    fit(load_train_config(None, {**small, "output_dir": str(tmp_path / "a"), "threads": 1}))
    assert torch.get_num_threads() == 1                          # the config's count
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    fit(load_train_config(None, {**small, "output_dir": str(tmp_path / "b")}))
    assert torch.get_num_threads() == 1                          # the default, capped by OMP_NUM_THREADS
