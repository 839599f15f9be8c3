"""Malformed input through the real command line, one table row per case.

Every row runs ``python -m skipnet ...`` (a process forked from ``tests/cli_server.py``, which
imports once what each fresh process would; a sample of rows also runs fresh and must give the
same result) in a fresh, empty working directory and must end with
exit code 2, exactly one line on stderr that names the offending field and what it accepts, no
traceback, and nothing written: neither in the working directory (no ``runs/``, ``mlflow.db``,
output directory) nor next to the input files. The inputs live in a separate directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from cli_server import CliServer
from conftest import free_port

pytestmark = pytest.mark.slow      # some 70 CLI processes (7 fresh ones importing torch, ray and mlflow)

TRAIN = """\
data: {name: synthetic, synthetic_size: 200, synthetic_test_size: 50, val_size: 20}
sp: {iterations: 2, batch_size: 8, eval_every: 1}
hrl: {iterations: 1, batch_size: 8, eval_every: 1}
"""
EXPERIMENT = """\
name: bad-input
train:
  data: {name: synthetic, synthetic_size: 200, synthetic_test_size: 50, val_size: 20}
  sp: {iterations: 2, batch_size: 8, eval_every: 1}
  hrl: {iterations: 1, batch_size: 8, eval_every: 1}
search_space:
  hrl.alpha: {type: loguniform, low: 1.0e-3, high: 1.0}
budget: {iterations_per_step: 1, max_steps: 1}
num_samples: 1
"""
FILES = {
    "train.yaml": TRAIN,
    "train_malformed.yaml": "sp: {lr: 0.1, batch_size: 8\nhrl: [\n",
    "train_unknown_key.yaml": TRAIN + "model: {arch: cifar10_rnn_gate_38, gaet: recurrent}\n",
    "train_negative_alpha.yaml": "hrl: {alpha: -0.5}\n",
    "train_threshold_string.yaml": TRAIN + 'model: {gate_threshold: "0.3"}\n',
    "train_quoted_number.yaml": TRAIN.replace("hrl: {iterations: 1,", 'hrl: {alpha: "2.5", iterations: 1,'),
    "exp.yaml": EXPERIMENT,
    "exp_quoted_number.yaml": EXPERIMENT.replace("high: 1.0}", 'high: "30"}'),
    "space_quoted_number.yaml": 'hrl.alpha: {type: loguniform, low: 2, high: "30"}\n',
    "exp_malformed.yaml": "name: broken\ntrain: {model: {arch: cifar10_rnn_gate_38}\nnum_samples: 2\n",
    "exp_unknown_key.yaml": EXPERIMENT + "scheduler: {type: asha, grace: 2}\n",
    "space_unknown_key.yaml": "hrl.alpah: {type: loguniform, low: 1.0e-3, high: 1.0}\n",
    "space_low_above_high.yaml": "hrl:\n  lr: {type: uniform, low: 0.1, high: 0.01}\n",
    "space_unknown_type.yaml": "hrl.alpha: {type: normal, mean: 0.1, std: 0.01}\n",
    "space_log_negative.yaml": "hrl.alpha: {type: loguniform, low: -0.1, high: 1.0}\n",
    "notes.pt": "hello, I am a text file, not a checkpoint\n",
}


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Path, int], list[str]]   # (inputs directory, a closed port) -> argv after "skipnet"
    needles: tuple[str, ...]                 # all in the one stderr line: the field, what is accepted


def train(*extra):
    return lambda d, port: ["train", "--config", str(d / "train.yaml"), "--quiet", *extra]


def sets(*items):
    return [a for item in items for a in ("--set", item)]


def search(*extra, exp="exp.yaml"):
    return lambda d, port: ["search", str(d / exp), *[a.format(d=d, port=port) for a in extra]]


def eval_(*extra, ckpt="ok.pt"):
    return lambda d, port: ["eval", "--checkpoint", str(d / ckpt), *[a.format(d=d) for a in extra]]


CASES = [
    # -- skipnet train: config file and --set -------------------------------------------------
    Case("train-malformed-yaml", lambda d, p: ["train", "--config", str(d / "train_malformed.yaml")],
         ("train_malformed.yaml: <yaml>: must be valid YAML", "line")),
    Case("train-unknown-key-in-file", lambda d, p: ["train", "--config", str(d / "train_unknown_key.yaml")],
         ("model.gaet: must be a known key", "arch, gate, mode")),
    Case("train-wrong-type-int", train(*sets("sp.batch_size=abc")),
         ("--set sp.batch_size=abc: sp.batch_size: must be an integer",)),
    Case("train-unknown-key-in-set", train(*sets("hrl.alpah=0.05")),
         ("--set hrl.alpah=0.05: hrl.alpah: must be a known key", "alpha")),
    Case("train-negative-lr", train(*sets("hrl.lr=-0.01")), ("hrl.lr: must be a number > 0", "-0.01")),
    Case("train-negative-alpha-in-file",
         lambda d, p: ["train", "--config", str(d / "train_negative_alpha.yaml")],
         ("hrl.alpha: must be a number >= 0", "-0.5")),
    Case("train-gate-threshold-above-1", train(*sets("model.gate_threshold=1.5")),
         ("--set model.gate_threshold=1.5: model.gate_threshold: must be a number strictly between 0 and 1", "1.5")),
    Case("train-gate-threshold-zero", train(*sets("model.gate_threshold=0")),
         ("model.gate_threshold: must be a number strictly between 0 and 1", "(got 0")),
    Case("train-gate-threshold-quoted-string", train(*sets('model.gate_threshold="0.3"')),
         ("model.gate_threshold: must be a number", "(got '0.3')")),
    Case("train-gate-threshold-string-in-file",
         lambda d, p: ["train", "--config", str(d / "train_threshold_string.yaml")],
         ("train_threshold_string.yaml: model.gate_threshold: must be a number", "(got '0.3')")),
    Case("train-quoted-number-in-file", lambda d, p: ["train", "--config", str(d / "train_quoted_number.yaml")],
         ("train_quoted_number.yaml: hrl.alpha: must be a number", "(got '2.5')")),
    Case("train-gate-thresholds-not-a-list", train(*sets("eval.gate_thresholds=0.5")),
         ("eval.gate_thresholds: must be a list", "(got 0.5)")),
    Case("train-gate-thresholds-value-out-of-range", train(*sets("eval.gate_thresholds=[0.2, 1.0]")),
         ("eval.gate_thresholds[1]: must be a number strictly between 0 and 1", "(got 1.0)")),
    Case("train-synthetic-difficulty-reversed", train(*sets("data.synthetic_difficulty=[0.8, 0.2]")),
         ("data.synthetic_difficulty: must be a list [low, high] of numbers with 0 <= low <= high <= 1",
          "(got [0.8, 0.2])")),
    Case("train-synthetic-difficulty-not-a-list", train(*sets("data.synthetic_difficulty=0.5")),
         ("data.synthetic_difficulty: must be a list", "(got 0.5)")),
    Case("train-synthetic-difficulty-three-numbers", train(*sets("data.synthetic_difficulty=[0, 0.5, 1]")),
         ("data.synthetic_difficulty: must be a list [low, high]", "(got [0.0, 0.5, 1.0])")),
    Case("train-negative-lr-warmup", train(*sets("sp.lr_warmup=-5")),
         ("sp.lr_warmup: must be an integer >= 0 or null (as long as the gate warm-up)", "(got -5)")),
    Case("train-gate-init-prob-out-of-range", train(*sets("sp.gate_init_prob=1.5")),
         ("sp.gate_init_prob: must be a number strictly between 0 and 1 or null", "(got 1.5)")),
    Case("train-unknown-architecture", train(*sets("model.arch=vgg16")),
         ("model.arch: must be a registered architecture", "cifar10_rnn_gate_110", "vgg16")),
    Case("train-unknown-gate", train(*sets("model.gate=lstm2")),
         ("model.gate: must be one of feedforward_conv, feedforward_fc, recurrent", "lstm2")),
    Case("train-set-without-value", train("--set", "hrl.alpha"), ("--set: must be key=value",)),
    Case("train-cifar10-missing-directory",
         lambda d, p: train(*sets("data.name=cifar10", f"data.root={d / 'no-such-dir'}"))(d, p),
         ("data.root: must be an existing directory holding cifar-10-batches-py/", "no-such-dir")),
    Case("train-svhn-empty-directory",
         lambda d, p: train(*sets("data.name=svhn", f"data.root={d / 'empty'}"))(d, p),
         ("data.root: must be an existing directory holding train_32x32.mat",)),
    Case("train-imagefolder-empty-train-tree",
         lambda d, p: train(*sets("data.name=imagefolder", f"data.root={d / 'folders'}"))(d, p),
         ("data.root: must be an existing directory holding a train/ ImageFolder tree",)),
    # -- skipnet eval: checkpoints, architectures, data ----------------------------------------
    Case("eval-text-file-as-checkpoint", eval_(ckpt="notes.pt"),
         ("checkpoint", "notes.pt: not a PyTorch checkpoint", "expected a complete .pt file")),
    Case("eval-truncated-checkpoint", eval_(ckpt="cut.pt"), ("checkpoint", "cut.pt: unreadable or truncated")),
    Case("eval-foreign-checkpoint", eval_("--arch", "cifar10_rnn_gate_38", ckpt="foreign.pt"),
         ("checkpoint", "no 'model' or 'state_dict' entry", "keys: epoch, optimizer")),
    Case("eval-checkpoint-of-another-architecture", eval_("--arch", "cifar10_feedforward_38"),
         ("checkpoint", "architecture 'cifar10_rnn_gate_38'", "does not match cifar10_feedforward_38",
          "holds recurrent gates, the model has feedforward_conv gates")),
    Case("eval-missing-data-directory", eval_("--data", "cifar10", "--data-root", "{d}/no-such-dir"),
         ("data.root: must be an existing directory holding cifar-10-batches-py/",)),
    Case("eval-directory-without-checkpoint", eval_(ckpt="empty"),
         ("--checkpoint: checkpoint", "empty: a directory holding no checkpoint", "a trial directory")),
    Case("eval-unknown-split", eval_("--split", "train"), ("--split", "invalid choice", "'val', 'test'")),
    Case("eval-unknown-data-set", eval_("--data", "mnist"), ("data.name: must be one of cifar10", "mnist")),
    Case("eval-gate-threshold-out-of-range", eval_("--split", "val", "--gate-threshold", "1.5"),
         ("--gate-threshold: must be a number strictly between 0 and 1", "1.5")),
    Case("eval-foreign-checkpoint-without-arch", eval_(ckpt="foreign.pt"),
         ("--checkpoint: checkpoint", "no 'model' or 'state_dict' entry", "authors' .pth.tar")),
    # -- skipnet search: experiment files and --set -------------------------------------------
    Case("search-missing-experiment", search(exp="no-such.yaml"),
         ("EXPERIMENT: must be an existing YAML file", "no-such.yaml")),
    Case("search-malformed-yaml", search(exp="exp_malformed.yaml"),
         ("exp_malformed.yaml: <yaml>: must be valid YAML", "line")),
    Case("search-unknown-key", search(exp="exp_unknown_key.yaml"),
         ("scheduler.grace: must be a known key", "grace_period")),
    Case("search-quoted-number-in-experiment", search(exp="exp_quoted_number.yaml"),
         ("hrl.alpha.high: must be a number", "(got '30')")),
    Case("search-wrong-type-num-samples", search(*sets("num_samples=many")),
         ("num_samples: must be an integer", "many")),
    Case("search-unknown-architecture", search(*sets("train.model.arch=resnet_9000")),
         ("train.model.arch: must be a registered architecture", "resnet_9000")),
    Case("search-gate-thresholds-value-out-of-range", search(*sets("train.eval.gate_thresholds=[0.2, 0]")),
         ("train.eval.gate_thresholds[1]: must be a number strictly between 0 and 1",)),
    Case("search-gate-threshold-not-a-number", search(*sets("train.model.gate_threshold=half")),
         ("train.model.gate_threshold: must be a number", "half")),
    Case("search-unknown-data-set", search(*sets("train.data.name=mnist")),
         ("train.data.name: must be one of cifar10", "mnist")),
    Case("search-unknown-scheduler", search(*sets("scheduler.type=bohb")),
         ("scheduler.type: must be one of fifo, asha, pbt, moasha", "bohb")),
    Case("search-unknown-searcher", search(*sets("searcher.type=hyperopt")),
         ("searcher.type: must be one of random, grid, optuna-tpe, optuna-mo", "hyperopt")),
    Case("search-pbt-without-mutations", search(*sets("scheduler.type=pbt")),
         ("scheduler.mutations: must be a search-space file",)),
    # -- search-space files -------------------------------------------------------------------
    Case("space-missing-file", search(*sets("search_space={d}/no-such-space.yaml")),
         ("search_space: must be an existing search-space YAML file", "no-such-space.yaml")),
    Case("space-unknown-key", search(*sets("search_space={d}/space_unknown_key.yaml")),
         ("space_unknown_key.yaml: hrl.alpah: must be a TrainConfig key", "did you mean hrl.alpha")),
    Case("space-low-above-high", search(*sets("search_space={d}/space_low_above_high.yaml")),
         ("hrl.lr.high: must be a number > low (0.1)",)),
    Case("space-quoted-number", search(*sets("search_space={d}/space_quoted_number.yaml")),
         ("space_quoted_number.yaml: hrl.alpha.high: must be a number", "(got '30')")),
    Case("space-unknown-distribution", search(*sets("search_space={d}/space_unknown_type.yaml")),
         ("hrl.alpha.type: must be one of loguniform, uniform", "normal")),
    Case("space-loguniform-negative-low", search(*sets("search_space={d}/space_log_negative.yaml")),
         ("hrl.alpha.low: must be a number > 0 (log scale)",)),
    # -- addresses ----------------------------------------------------------------------------
    Case("search-unreachable-ray-client", search("--address", "ray://127.0.0.1:{port}"),
         ("--address: must be the address of a running Ray cluster", "connecting failed")),
    Case("search-dashboard-url-as-address", search("--address", "http://127.0.0.1:{port}"),
         ("--address: must be auto, HOST:PORT", "skipnet submit")),
    Case("search-unreachable-mlflow", search(*sets("mlflow.tracking_uri=http://127.0.0.1:{port}")),
         ("mlflow.tracking_uri", "MLflow tracking server")),
    Case("resume-directory-without-search-file", lambda d, p: ["resume", str(d / "empty")],
         ("PATH: must be a search directory or URI holding skipnet_search.json",)),
    Case("resume-damaged-search-file", lambda d, p: ["resume", str(d / "damaged")],
         ("PATH: must be a search directory or URI holding skipnet_search.json", "damaged (JSONDecodeError")),
    Case("sync-mlflow-not-a-search-directory", lambda d, p: ["sync-mlflow", str(d / "empty")],
         ("PATH: must be a search directory or URI holding skipnet_search.json",)),
    # -- skipnet pareto / export: stores and selections ------------------------------------------
    Case("pareto-no-store-here", lambda d, p: ["pareto", "quickstart"],
         ("--tracking-uri: must be an existing MLflow SQLite store", "mlflow.db")),
    Case("pareto-unreachable-server", lambda d, p: ["pareto", "x", "--tracking-uri", f"http://127.0.0.1:{p}"],
         ("--tracking-uri: must be the URL of a running MLflow tracking server",)),
    Case("export-percentage-out-of-range",
         lambda d, p: ["export", "x", "--max-computation", "150", "-o", "best.yaml"],
         ("--max-computation: must be a percentage in (0, 100]", "150")),
    Case("export-two-selections", lambda d, p: ["export", "x", "--knee", "--min-accuracy", "90", "-o", "b.yaml"],
         ("--min-accuracy", "not allowed with argument --knee")),
    Case("export-into-a-missing-directory",
         lambda d, p: ["export", "x", "--knee", "-o", str(d / "no-such-dir" / "best.yaml")],
         ("-o: must be a file path in an existing directory",)),
    Case("submit-address-without-scheme",
         lambda d, p: ["submit", str(d / "exp.yaml"), "--address", f"127.0.0.1:{p}", "--working-dir", str(d)],
         ("--address: must be the Ray dashboard URL", "http://")),
    Case("submit-bad-override-checked-before-the-cluster",
         lambda d, p: ["submit", str(d / "exp.yaml"), "--address", f"http://127.0.0.1:{p}",
                       "--working-dir", str(d), "--set", "num_samples=0"],
         ("--set num_samples=0: num_samples: must be a positive integer",)),
    Case("submit-env-not-set",
         lambda d, p: ["submit", str(d / "exp.yaml"), "--address", f"http://127.0.0.1:{p}", "--working-dir", str(d),
                       "--env", "SKIPNET_NO_SUCH_VARIABLE"],
         ("--env: must be a variable set in this environment", "SKIPNET_NO_SUCH_VARIABLE")),
    Case("submit-env-not-a-name",
         lambda d, p: ["submit", str(d / "exp.yaml"), "--address", f"http://127.0.0.1:{p}", "--working-dir", str(d),
                       "--env", "AWS_KEY=secret"],
         ("--env: must be the name of an environment variable", "AWS_KEY=secret")),
    Case("status-nothing-listening", lambda d, p: ["status", "raysubmit_x", "--address", f"http://127.0.0.1:{p}"],
         ("--address: cannot reach the Ray Jobs API", "dashboard URL")),
]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The files the cases read (never the working directory the cases run in)."""
    import torch

    import skipnet
    d = tmp_path_factory.mktemp("inputs")
    for name, text in FILES.items():
        (d / name).write_text(text)
    (d / "empty").mkdir()
    (d / "damaged").mkdir()
    (d / "damaged" / "skipnet_search.json").write_text('{"search_id": "x", "parent_run')
    (d / "folders" / "train").mkdir(parents=True)
    skipnet.save_checkpoint(skipnet.create_model("cifar10_rnn_gate_38"), d / "ok.pt")
    data = (d / "ok.pt").read_bytes()
    (d / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"optimizer": {"lr": torch.tensor(0.1)}, "epoch": 3}, d / "foreign.pt")
    return d


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A fresh ``python -m skipnet`` process."""
    return subprocess.run([sys.executable, "-m", "skipnet", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def cli():
    server = CliServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def results(request, inputs, cli, tmp_path_factory):
    """The selected cases, each a process forked from the CLI server (``tests/cli_server.py``:
    the imports, 6 s of each fresh process, paid once): the inputs' listing before any ran,
    ``{case id: (argv, working directory, result)}``."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    baseline = _listing(inputs)
    runs = {}
    for case in selected:
        cwd = tmp_path_factory.mktemp(f"cwd-{case.id}")
        args = case.args(inputs, free_port())     # nothing listens on a port just released
        runs[case.id] = (args, cwd, cli.run(args, cwd, _env(), tmp_path_factory.mktemp(f"logs-{case.id}")))
    return baseline, runs


def test_the_table_is_large_and_covers_every_verb():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    verbs = {c.args(Path("/x"), 1)[0] for c in CASES}
    assert {"train", "eval", "search", "resume", "submit"} <= verbs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(case, inputs, results):
    baseline, runs = results
    args, cwd, result = runs[case.id]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"skipnet {args[0]}: error: "), lines[0]
    for needle in case.needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert result.stdout == ""
    assert _listing(cwd) == [], "files created in the working directory"
    assert _listing(inputs) == baseline, "files created next to the inputs"


FRESH = ("train-malformed-yaml", "train-gate-threshold-above-1", "eval-truncated-checkpoint",
         "search-unreachable-mlflow", "space-quoted-number", "export-two-selections", "submit-env-not-set")


@pytest.mark.parametrize("case", [c for c in CASES if c.id in FRESH], ids=lambda c: c.id)
def test_a_forked_command_is_the_command(case, inputs, cli, tmp_path):
    """The server's forked child and a fresh ``python -m skipnet`` give the same exit status,
    output and error line (a sample of the table: one case per verb family)."""
    args = case.args(inputs, free_port())
    (tmp_path / "fresh").mkdir()
    (tmp_path / "forked").mkdir()
    (tmp_path / "logs").mkdir()
    fresh = _run(args, tmp_path / "fresh")
    forked = cli.run(args, tmp_path / "forked", _env(), tmp_path / "logs")
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert _listing(tmp_path / "fresh") == _listing(tmp_path / "forked") == []
