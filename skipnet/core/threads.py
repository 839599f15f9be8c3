"""CPU threads of training (``skipnet train`` and Tune trials): what they default to, and why.

Two defaults (``threads:`` in the training config sets the count instead, ``OMP_WAIT_POLICY``
in the environment the wait policy):

* OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=passive``). torch's libgomp otherwise
  spins about 3 ms at every barrier before it sleeps: on a machine where other processes hold
  the cores, the spinning thread takes the CPU that the thread it waits for needs, and every
  parallel op waits out scheduler time slices. libgomp reads the variable once, when torch loads
  it, so ``prepare_openmp`` runs first thing in ``import skipnet`` (skipnet/__init__.py), before
  anything imports torch; that covers ``skipnet train``, ``skipnet search`` and the Ray workers
  of its trials (they import skipnet to build the trainable; a local Ray's workers also inherit
  the driver's environment). A value already in the environment is left alone; a process that
  imported torch before skipnet keeps libgomp's default.
* One intra-op thread per usable CPU: the process's CPU affinity, capped by a cgroup CPU quota
  (a container limited to 2 CPUs on a 64-core host gets 2, where torch would start 64), by
  ``OMP_NUM_THREADS`` when set (Ray sets it to a trial's CPUs) and by a trial's CPU resources.
  The count does not follow the machine's load: float sums differ with the thread count, so a
  load-dependent count would make the same config give different numbers from run to run (and
  a resumed run differ from an uninterrupted one).

Measured with ``benchmarks/train_speed.py --quickstart --busy 0 1 2 --rounds 2`` (the
quickstart's SkipNet-38, synthetic data, batch 64, through the Engine; each setting in a fresh
process; N Python busy loops beside it; a 2-core machine that other jobs also used, load average
7 to 14), training iterations/s, SP / HRL, median of two rounds:

    setting (threads)                  idle          1 busy loop   2 busy loops
    torch's default: spin (2)          1.29 / 0.39   0.06 / 0.05   0.07 / 0.04
    passive (2)                        1.34 / 1.41   0.69 / 0.76   0.60 / 0.61
    this module: passive, per CPU (2)  0.82 / 0.75   0.49 / 0.47   0.67 / 0.64
    one thread, spin (1)               0.97 / 0.96   0.35 / 0.48   0.26 / 0.28
    one per idle CPU, spin (1)         0.90 / 0.79   0.56 / 0.58   0.22 / 0.17

Beside busy loops the spinning default ran 19 to 35 times slower than passive waiting idle (its
own idle rounds: 2.45 and 0.12 it/s SP, the other jobs alone stalled it once), 7 to 14 times
below a fair share of the machine (the best idle rate / (N + 1)). Passive waiting kept two threads
at 0.7 to 1.5 times the fair share, above one thread (0.5 to 0.7) and above one thread per CPU
left idle (0.4 to 0.8), which also tied the numbers to the load (above). "passive" and "this
module" are the same setting measured twice: their gap is the machine's noise.
"""
from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

WAIT_POLICY = "passive"


def prepare_openmp(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``OMP_WAIT_POLICY=passive`` in ``environ`` unless it holds a value already. Called
    by ``import skipnet`` before torch is imported: libgomp reads it only when it is loaded."""
    environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def usable_cpus(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity, capped by the cgroup CPU quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The cgroup's CPU quota in CPUs (v2 ``cpu.max``, v1 ``cpu/cpu.cfs_quota_us``); None if unlimited."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]           # "max 100000" or "200000 100000"
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # -1: unlimited
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return int(quota) / int(period)


def default_threads(cap: float | None = None) -> int:
    """Intra-op threads when the config does not say: one per usable CPU, at most
    ``OMP_NUM_THREADS`` (when set) and ``cap`` (a trial's CPUs), at least one."""
    limits = [usable_cpus()]
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        limits.append(int(omp))
    if cap is not None:
        limits.append(int(cap))
    return max(1, min(limits))


def configure(threads: int | None, cap: float | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (the config's explicit count, which wins)
    or ``default_threads(cap)``; returns the count now in use."""
    import torch
    torch.set_num_threads(threads or default_threads(cap))
    return torch.get_num_threads()
