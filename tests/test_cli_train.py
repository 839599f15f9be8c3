"""``skipnet train`` and ``skipnet eval`` end to end through the real entry point (subprocess)."""
import json
import subprocess
import sys

import pytest
import torch

import skipnet

pytestmark = pytest.mark.slow      # trains and evaluates through the CLI (subprocesses)


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "skipnet", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


TINY = ["--set", "data.synthetic_size=800", "--set", "data.synthetic_test_size=100", "--set", "data.val_size=100",
        "--set", "sp.iterations=4", "--set", "hrl.iterations=2", "--set", "sp.batch_size=16",
        "--set", "hrl.batch_size=16", "--set", "sp.eval_every=2", "--set", "hrl.eval_every=2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run("train", "--config", "experiments/quickstart_train.yaml", "--set", f"output_dir={out}",
                 *TINY[:-1], "--progress-interval", "0")            # output to a pipe: progress lines
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_writes_checkpoints_metrics_and_table(trained):
    out, result = trained
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "final.json"} <= {p.name for p in out.iterdir()}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [2, 4, 6] and lines[-1]["stage"] == "hrl"
    final = json.loads((out / "final.json").read_text())
    assert "test_top1" in final and "val_computation_pct" in final
    assert "val_top1" in result.stdout and "test_computation_pct" in result.stdout
    assert "val_difficulty_spearman" in result.stdout and "val_distinct_paths" in result.stdout
    curve = sorted(k.split("/")[1] for k in final if k.startswith("threshold_curve/") and k.endswith("/val_top1"))
    assert curve == ["0.2", "0.35", "0.5", "0.7", "0.85"] and "validation at each gate threshold" in result.stdout
    assert final["threshold_curve/0.5/val_top1"] == final["val_top1"]
    progress = [line for line in result.stdout.splitlines() if line.startswith("train: iteration")]
    assert [line.split()[2] for line in progress] == [f"{i}/6" for i in range(1, 7)], result.stdout
    assert all("img/s" in line and "ETA" in line for line in progress) and "\r" not in result.stdout


def test_resume_of_a_finished_run_says_so(trained):
    """``--resume`` of a run that has nothing left to train says so (and that nothing was
    trained), then prints its final evaluation, unchanged."""
    out, first = trained
    before = (out / "metrics.jsonl").read_text()
    result = run("train", "--config", "experiments/quickstart_train.yaml", "--set", f"output_dir={out}",
                 *TINY, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip() == (f"skipnet train: {out / 'last.pt'} had already finished (iteration 6 of 6): "
                                     "nothing left to train; its final evaluation follows"), result.stderr
    assert (out / "metrics.jsonl").read_text() == before
    table = lambda text: [line for line in text.splitlines() if line.startswith("  val_")]  # noqa: E731
    assert table(result.stdout) == table(first.stdout)


def test_eval_of_our_checkpoint(trained):
    out, _ = trained
    result = run("eval", "--checkpoint", str(out / "best.pt"), "--split", "val")
    assert result.returncode == 0, result.stderr[-2000:]
    final = json.loads((out / "final.json").read_text())
    assert f"{final['val_top1']:.3f}" in result.stdout
    assert "skip ratio per gate" in result.stdout


def test_eval_decides_at_the_checkpoints_gate_threshold_or_the_given_one(trained, tmp_path):
    """``skipnet eval`` of a checkpoint whose config says ``model.gate_threshold: 0.35`` reports
    the training run's curve at 0.35; ``--gate-threshold`` overrides it; routing metrics print."""
    out, _ = trained
    final = json.loads((out / "final.json").read_text())
    state = torch.load(out / "best.pt", weights_only=True)
    state["config"]["model"]["gate_threshold"] = 0.35
    torch.save(state, tmp_path / "at035.pt")
    for args, t in (([], "0.35"), (["--gate-threshold", "0.2"], "0.2")):
        result = run("eval", "--checkpoint", str(tmp_path / "at035.pt"), "--split", "val", *args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"gate threshold {t})" in result.stdout.splitlines()[0]
        top1 = next(line.split()[1] for line in result.stdout.splitlines() if line.split()[:1] == ["val_top1"])
        assert top1 == f"{final[f'threshold_curve/{t}/val_top1']:.3f}", result.stdout
        assert "val_distinct_paths" in result.stdout and "synthetic difficulty" in result.stdout


def test_eval_of_an_authors_file_needs_arch(tmp_path):
    model = skipnet.create_model("cifar10_rnn_gate_rl_38")
    state = {"module." + k: v for k, v in model.state_dict().items() if "num_batches" not in k}
    torch.save({"state_dict": state, "iter": 1}, tmp_path / "a.pth.tar")
    result = run("eval", "--checkpoint", str(tmp_path / "a.pth.tar"), "--data", "synthetic")
    assert result.returncode == 2 and "--arch" in result.stderr and "Traceback" not in result.stderr
    result = run("eval", "--checkpoint", str(tmp_path / "a.pth.tar"), "--data", "synthetic",
                 "--arch", "cifar10_rnn_gate_rl_38")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test_computation_pct" in result.stdout


@pytest.mark.parametrize("args,needle", [
    (["train", "--config", "nope.yaml"], "--config: must be an existing YAML file"),
    (["train", "--config", "experiments/quickstart_train.yaml", "--set", "hrl.alpha=-1"], "hrl.alpha: must be a number >= 0"),
    (["train", "--config", "experiments/quickstart_train.yaml", "--set", "sp.lrr=0.1"], "sp.lrr: must be a known key"),
    (["train", "--config", "experiments/quickstart_train.yaml", "--set", "model.arch=cifar10_rnn_gate_111"],
     "did you mean cifar10_rnn_gate_110"),
    (["train", "--config", "experiments/quickstart_train.yaml", "--set", "data.name=mnist"], "data.name"),
    (["eval", "--checkpoint", "missing.pt"], "no such file"),
    (["bogus"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, needle):
    if args[0] == "train":
        args = [*args, "--set", f"output_dir={tmp_path / 'out'}"]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_best_checkpoint_is_the_most_accurate_then_the_cheaper():
    """best.pt: higher validation top-1 wins; at equal top-1 the evaluation with less computation
    (seen: HRL at 99.83 % with 83.0 % and then 75.6 % kept the first); a best.pt saved before the
    computation was recorded counts as 100 %."""
    from skipnet.core.train.run import best_rank
    first, cheaper, better = ({"val_top1": 99.83, "val_computation_pct": 83.0},
                              {"val_top1": 99.83, "val_computation_pct": 75.6},
                              {"val_top1": 99.9, "val_computation_pct": 90.0})
    assert best_rank(cheaper) > best_rank(first) and best_rank(better) > best_rank(cheaper)
    saved = {"best_val_top1": 99.83, "best_val_computation_pct": 83.0}
    assert best_rank(saved) == best_rank(first) and not best_rank(first) > best_rank(saved)
    assert best_rank({"best_val_top1": 99.83}) < best_rank(first)
