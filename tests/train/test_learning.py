"""What SP then HRL learn on the synthetic data set in a short CPU run, with the default recipe:
SP as accurate as the plain ResNet at the same iterations while its gates still execute most
blocks (no collapse), computation falling as alpha rises, and harder samples executing more
blocks than easy ones."""
import pytest
import torch
from scipy.stats import spearmanr

from skipnet.config import load_train_config
from skipnet.train import Engine

BASE = {"model.arch": "cifar10_rnn_gate_38", "data.synthetic_size": 6000, "data.synthetic_test_size": 1000,
        "sp.batch_size": 64, "hrl.batch_size": 64, "eval.batch_size": 500}
SP = {"stage": "sp", "sp.iterations": 300, "sp.lr_milestones": [225]}
HRL = {"stage": "hrl", "hrl.iterations": 150, "hrl.lr": 0.01}
ALPHAS = [0.3, 3.0, 10.0]


@pytest.fixture(scope="module")
def sp_checkpoint(tmp_path_factory):
    engine = Engine(load_train_config(None, {**BASE, **SP}))
    engine.train(SP["sp.iterations"])
    path = tmp_path_factory.mktemp("sp") / "sp.pt"
    engine.save(path)
    return path, engine.evaluate("val"), engine.splits


@pytest.fixture(scope="module")
def hrl_runs(sp_checkpoint):
    path, _, splits = sp_checkpoint
    out = {}
    for alpha in ALPHAS:
        engine = Engine(load_train_config(None, {**BASE, **HRL, "hrl.alpha": alpha, "hrl.init_checkpoint": str(path)}),
                        splits=splits)
        engine.train(HRL["hrl.iterations"])
        out[alpha] = engine.evaluate("val", per_sample=True)
    return out


@pytest.fixture(scope="module")
def plain_resnet(sp_checkpoint):
    """The plain ResNet-38 trained as long, on the same data and batches."""
    _, _, splits = sp_checkpoint
    engine = Engine(load_train_config(None, {**BASE, **SP, "stage": "base", "model.arch": "cifar10_resnet_38"}),
                    splits=splits)
    engine.train(SP["sp.iterations"])
    return engine.evaluate("val")


@pytest.mark.slow
def test_sp_is_as_accurate_as_the_plain_resnet_and_executes_most_blocks(sp_checkpoint, plain_resnet):
    _, metrics, _ = sp_checkpoint
    print(f"SP: val {metrics['val_top1']:.2f} % at {metrics['val_block_count_pct']:.1f} % of blocks; "
          f"plain ResNet-38: {plain_resnet['val_top1']:.2f} %")
    assert metrics["val_top1"] >= plain_resnet["val_top1"] - 2.0
    assert metrics["val_block_count_pct"] >= 80.0          # gates did not collapse into skipping


@pytest.mark.slow
def test_computation_falls_as_alpha_rises(hrl_runs):
    comps = [hrl_runs[a]["val_computation_pct"] for a in ALPHAS]
    assert comps[0] > comps[1] > comps[2], comps
    assert all(hrl_runs[a]["val_top1"] > 20.0 for a in ALPHAS)


@pytest.mark.slow
def test_harder_samples_execute_more_blocks(hrl_runs):
    run = hrl_runs[ALPHAS[1]]           # the alpha whose policy mixes skipping and executing
    rho = spearmanr(run["difficulty"].numpy(), run["executed_blocks"].numpy()).correlation
    assert rho > 0.1, rho
    assert torch.isfinite(run["executed_blocks"]).all()

