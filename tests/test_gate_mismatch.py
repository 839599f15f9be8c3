"""HRL from an SP checkpoint of other gates: refused up front by the experiment, named by the load.

An HRL trial builds ``create_model(arch, gate=model.gate)`` and loads ``hrl.init_checkpoint``;
when the gate types differ, ``skipnet search`` refuses the experiment before anything starts
(one line naming the key and the checkpoint's gate type, exit 2), and a run that gets that far
anyway fails naming both gate types, not a count of missing keys.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import skipnet
from skipnet.core.config import load_train_config
from skipnet.errors import CheckpointError, ConfigError
from skipnet.tune.experiment import ExperimentConfig, load_experiment

DATA = {"name": "synthetic", "synthetic_size": 200, "synthetic_test_size": 50, "val_size": 20}
EXPERIMENT = """\
name: gate-mismatch
train:
  stage: hrl
  model: {arch: cifar10_rnn_gate_38}
  data: {name: synthetic, synthetic_size: 200, synthetic_test_size: 50, val_size: 20}
  hrl: {iterations: 1, batch_size: 8, eval_every: 1, init_checkpoint: sp.pt}
search_space:
  model.gate: {type: choice, values: [feedforward_conv, recurrent]}
  hrl.alpha: {type: loguniform, low: 1.0e-3, high: 1.0}
budget: {iterations_per_step: 1, max_steps: 1}
num_samples: 1
"""


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    """A recurrent SP checkpoint of ours, and an FFGate-I one in the authors' layout (DataParallel
    names, no format or info: the gate type is read off the keys)."""
    import torch
    d = tmp_path_factory.mktemp("sp")
    skipnet.save_checkpoint(skipnet.create_model("cifar10_rnn_gate_38"), d / "sp.pt")
    state = skipnet.create_model("cifar10_feedforward_38").state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "iter": 1}, d / "ff.pth.tar")
    return d


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_search_refuses_gate_types_the_checkpoint_cannot_start(tmp_path, sp_dir):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "sp.pt").write_bytes((sp_dir / "sp.pt").read_bytes())
    (inputs / "x.yaml").write_text(EXPERIMENT)
    before = _listing(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    result = subprocess.run([sys.executable, "-m", "skipnet", "search", "inputs/x.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0] == ("skipnet search: error: inputs/x.yaml: search_space.model.gate: must be gate types matching "
                        "hrl.init_checkpoint sp.pt (recurrent gates) (got ['feedforward_conv', 'recurrent'])"), lines[0]
    assert result.stdout == ""
    assert _listing(tmp_path) == before, "files created (mlflow.db, runs/...)"


def _experiment(sp_dir: Path, *, space=None, checkpoint="sp.pt", **train) -> ExperimentConfig:
    base = {"stage": "hrl", "data": DATA, "hrl": {"init_checkpoint": checkpoint}, **train}
    return ExperimentConfig(train=base, search_space=space or {"hrl.alpha": {"type": "uniform", "low": 0.1, "high": 0.2}},
                            base_dir=str(sp_dir))


def test_fixed_gate_and_registered_gate_are_checked(sp_dir):
    with pytest.raises(ConfigError, match=r"^train.model.gate: must be gate types matching hrl.init_checkpoint "
                                          r"sp.pt \(recurrent gates\) \(got \['feedforward_fc'\]\)$"):
        _experiment(sp_dir, model={"arch": "cifar10_rnn_gate_38", "gate": "ffgate2"}).validate()
    with pytest.raises(ConfigError, match=r"^train.model.arch: must be architectures with recurrent gates .*"
                                          r"cifar10_feedforward_38 has feedforward_conv gates"):
        _experiment(sp_dir, model={"arch": "cifar10_feedforward_38"}).validate()
    with pytest.raises(ConfigError, match=r"^search_space.model.arch: .*\(got \['cifar10_rnn_gate_38', "
                                          r"'cifar10_skipnet_38_feedforward_fc'\]\)"):
        _experiment(sp_dir, space={"model.arch": {"type": "grid", "values": ["cifar10_rnn_gate_38",
                                                                            "cifar10_skipnet_38_feedforward_fc"]}}).validate()
    with pytest.raises(ConfigError, match=r"fixed.yaml: train.model.gate: .*sp.pt \(recurrent gates\) "
                                          r"\(got \['feedforward_conv'\]\)$"):     # sp.pt: next to the file
        load_experiment(_write(sp_dir, "fixed.yaml", EXPERIMENT.replace(
            "  model.gate: {type: choice, values: [feedforward_conv, recurrent]}\n", "").replace(
            "{arch: cifar10_rnn_gate_38}", "{arch: cifar10_rnn_gate_38, gate: feedforward_conv}")))


def _write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def test_matching_gates_and_missing_checkpoints_pass(sp_dir):
    _experiment(sp_dir, model={"arch": "cifar10_rnn_gate_38"}).validate()
    _experiment(sp_dir, model={"arch": "cifar10_feedforward_38", "gate": "rnn"}).validate()
    _experiment(sp_dir, space={"model.gate": {"type": "choice", "values": ["recurrent", "lstm"]}}).validate()
    _experiment(sp_dir, space={"model.gate": {"type": "choice", "values": ["feedforward_conv", "recurrent"]}},
                checkpoint="not-written-yet.pt").validate()          # left to the trials
    # a search-space file; the authors' FFGate-I file fits feedforward_conv only
    space = _write(sp_dir, "space.yaml", "model:\n  gate: {type: grid, values: [ffgate1, feedforward_conv]}\n")
    _experiment(sp_dir, space=str(space), checkpoint="ff.pth.tar").validate()
    _write(sp_dir, "space2.yaml", "model:\n  gate: {type: grid, values: [ffgate1, ffgate2]}\n")
    with pytest.raises(ConfigError, match=r"^search_space.model.gate: .*ff.pth.tar \(feedforward_conv gates\) "
                                          r"\(got \['feedforward_conv', 'feedforward_fc'\]\)"):
        _experiment(sp_dir, space="space2.yaml", checkpoint="ff.pth.tar").validate()


def test_hrl_run_names_both_gate_types(sp_dir):
    """What a trial meets when the experiment check could not run (e.g. skipnet train)."""
    from skipnet.core.train import Engine
    cfg = load_train_config(None, {"stage": "hrl", "model.gate": "feedforward_conv", "hrl.init_checkpoint":
                                   str(sp_dir / "sp.pt"), **{f"data.{k}": v for k, v in DATA.items()}})
    with pytest.raises(CheckpointError, match=r"^hrl.init_checkpoint: checkpoint .*sp.pt \(architecture "
                                              r"'cifar10_rnn_gate_38'\) does not match cifar10_skipnet_38_feedforward_conv: the "
                                              r"checkpoint holds recurrent gates, the model has feedforward_conv "
                                              r"gates: set model.gate to recurrent") as err:
        Engine(cfg)
    assert "\n" not in str(err.value)
