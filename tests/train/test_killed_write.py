"""A checkpoint write interrupted for real: ``skipnet train`` is SIGKILLed while it writes
``last.pt``; the previous checkpoint is intact, and ``--resume`` continues from it to the same
numbers as a run that was never killed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from skipnet.core.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow      # trains, kills and resumes real processes

# one batch of 10 images per evaluation (an evaluation of 100 images after every iteration took
# most of the 95 s a run lasted); ResNet-110 so that a checkpoint write lasts long enough to be hit
TINY = ["--set", "data.synthetic_size=600", "--set", "data.synthetic_test_size=100", "--set", "data.val_size=100",
        "--set", "sp.iterations=24", "--set", "hrl.iterations=10", "--set", "sp.batch_size=8",
        "--set", "hrl.batch_size=8", "--set", "sp.eval_every=1", "--set", "hrl.eval_every=5",
        "--set", "sp.lr_milestones=[]", "--set", "eval.max_batches=1", "--set", "eval.batch_size=10",
        "--set", "threads=1", "--set", "model.arch=cifar10_rnn_gate_110", "--quiet"]


def train(out, *extra, **kw):
    return subprocess.Popen([sys.executable, "-m", "skipnet", "train", "--config", "experiments/quickstart_train.yaml",
                             "--set", f"output_dir={out}", *TINY, *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def kill_during_a_write(out, resume: bool):
    """Start training, SIGKILL it while it writes last.pt; the partial file, or None if the
    write had finished by the time the signal landed."""
    victim = train(out, *(["--resume"] if resume else []))
    deadline = time.time() + 300
    while True:
        assert victim.poll() is None, victim.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint write seen"
        if (out / "last.pt").exists():
            partial = list(out.glob(".last.pt.*.tmp"))
            if partial:
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
                return partial[0] if partial[0].exists() else None
        time.sleep(0.001)


def test_killed_checkpoint_write_keeps_the_previous_one_and_resume_uses_it(tmp_path):
    reference = train(tmp_path / "reference")
    out = tmp_path / "killed"
    for attempt in range(6):                   # a write takes milliseconds: the signal may land after it
        if kill_during_a_write(out, resume=attempt > 0) is not None:
            break
    else:
        pytest.fail("six kills all landed between two checkpoint writes")
    state = read_checkpoint(out / "last.pt")       # the previous checkpoint, whole
    assert state["iteration"] > 0 and {"model", "optimizer", "rng"} <= set(state)
    resumed = subprocess.run([sys.executable, "-m", "skipnet", "train", "--config",
                              "experiments/quickstart_train.yaml", "--set", f"output_dir={out}", *TINY, "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-2000:]
    expected = json.loads((tmp_path / "reference" / "final.json").read_text())
    got = json.loads((out / "final.json").read_text())
    for key in ("val_top1", "val_computation_pct", "test_top1", "test_computation_pct", "iteration"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
