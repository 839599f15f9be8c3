"""Routing metrics of every evaluation and the gate threshold of evaluation decisions: real
models and data; decisions forced where the expected figures must be known exactly."""
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import skipnet
from skipnet.core.config import load_train_config
from skipnet.core.data import build_splits, difficulty, eval_batches
from skipnet.core.flops import block_costs
from skipnet.core.models.gates import GateMode, decide
from skipnet.core.train import Engine
from skipnet.core.train.evaluate import FULL_EXECUTION_LOSS, SYNTHETIC_DIFFICULTY, evaluate, spearman

pytestmark = pytest.mark.slow      # trains engines to check the routing metrics they report


@pytest.fixture(scope="module")
def val():
    return build_splits("synthetic", None, val_size=120, synthetic_size=400, synthetic_test_size=40).val


class Forced(nn.Module):
    """A SkipNet whose gate decisions are given per image, in evaluation order (a forward with
    its own ``decisions``, such as the every-block pass of the loss proxy, keeps those)."""

    def __init__(self, model, decisions):
        super().__init__()
        self.model, self.decisions, self.at = model, decisions, 0
        self.gate_spec, self.num_gates = model.gate_spec, model.num_gates

    def forward(self, images, *, skip_compute=False, decisions=None):
        if decisions is None:
            decisions = self.decisions[self.at:self.at + len(images)]
            self.at += len(images)
        return self.model(images, skip_compute=skip_compute, decisions=decisions)


def first_blocks(counts, gates):
    """(N, G) decisions running the first ``counts[i]`` gated blocks of image i."""
    return (torch.arange(gates)[None, :] < counts[:, None]).float()


def test_decisions_following_difficulty_give_its_rank_correlation_percentiles_and_paths(val):
    model = skipnet.create_model("cifar10_rnn_gate_38").eval()
    costs = block_costs(model)
    diff = difficulty(val)
    decision = first_blocks((diff * model.num_gates).round().long(), model.num_gates)
    m = evaluate(Forced(model, decision), val, costs, batch_size=50)
    flops = costs.executed_flops(decision).numpy()
    assert m["val_difficulty_source"] == SYNTHETIC_DIFFICULTY
    assert m["val_difficulty_spearman"] == pytest.approx(stats.spearmanr(flops, diff.numpy())[0], abs=1e-9)
    assert m["val_difficulty_spearman"] > 0.95
    pct = costs.computation_pct(decision).numpy()
    for q in (10, 50, 90):
        assert m[f"val_computation_p{q}"] == pytest.approx(np.percentile(pct, q), abs=1e-9)
    assert m["val_distinct_paths"] == len(set(map(tuple, decision.tolist())))
    assert m["val_computation_pct"] == pytest.approx(pct.mean())
    reverse = evaluate(Forced(model, first_blocks(((1 - diff) * model.num_gates).round().long(), model.num_gates)),
                       val, costs, batch_size=50)
    assert reverse["val_difficulty_spearman"] == pytest.approx(-m["val_difficulty_spearman"], abs=1e-9)


def test_a_constant_policy_has_one_path_and_no_correlation(val):
    model = skipnet.create_model("cifar10_rnn_gate_38").eval()
    costs = block_costs(model)
    decision = torch.zeros(len(val), model.num_gates)
    decision[:, ::2] = 1.0                        # a statically pruned network: the same blocks for every image
    m = evaluate(Forced(model, decision), val, costs, batch_size=50)
    assert m["val_distinct_paths"] == 1 and m["val_difficulty_spearman"] == 0.0
    assert m["val_computation_p10"] == m["val_computation_p50"] == m["val_computation_p90"]


def test_without_difficulty_the_proxy_is_the_loss_with_every_block_executed(val):
    model = skipnet.create_model("cifar10_rnn_gate_38").eval()
    costs = block_costs(model)
    images, labels = map(torch.cat, zip(*eval_batches(val, 60)))
    plain = torch.utils.data.TensorDataset(images, labels)          # a data set that carries no difficulty
    assert difficulty(plain) is None
    m = evaluate(model, plain, costs, batch_size=50)
    assert m["val_difficulty_source"] == FULL_EXECUTION_LOSS
    with torch.no_grad():
        logits, _ = model(images, decisions=torch.ones(len(images), model.num_gates))
        _, record = model(images, skip_compute=True)
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = stats.spearmanr(costs.executed_flops(record.decision).numpy(), loss.numpy())[0]
    if np.isnan(expected):                          # an untrained model may route every image alike
        expected = 0.0
    assert m["val_difficulty_spearman"] == pytest.approx(expected, abs=1e-6)


def test_spearman_averages_ties_and_is_zero_for_constants():
    x, y = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0]), torch.tensor([0.3, 0.1, 0.4, 0.4, 0.9])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert spearman(torch.ones(5), y) == 0.0 and spearman(x, torch.zeros(5)) == 0.0


def test_a_plain_resnet_reports_no_routing_metrics(val):
    model = skipnet.create_model("cifar10_resnet_38").eval()
    m = evaluate(model, val, block_costs(model), batch_size=60)
    assert not [k for k in m if "skip_ratio" in k or "paths" in k or "spearman" in k or "p50" in k]


def test_lower_thresholds_execute_at_least_as_much():
    logit = torch.randn(4000) * 3
    thresholds = [0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95]
    for mode in GateMode:
        decisions = [decide(logit, mode, training=False, threshold=t)[1] for t in thresholds]
        for lower, higher in zip(decisions, decisions[1:]):
            assert (lower >= higher).all() and lower.sum() > higher.sum(), mode
        assert torch.equal(decisions[thresholds.index(0.5)], decide(logit, mode, training=False)[1])
    # training decisions ignore it: SP's hard forward stays prob > 0.5
    hard = decide(logit, GateMode.HARD, training=True, threshold=0.2)
    assert torch.equal(hard[1], (torch.sigmoid(logit) > 0.5).float())


def test_execute_and_the_model_decide_at_the_gate_threshold():
    model = skipnet.create_model("cifar10_rnn_gate_38").eval()
    images = torch.randn(6, 3, 32, 32)
    assert model.gate_threshold == 0.5
    _, everything = skipnet.execute(model, images, threshold=1e-6)
    _, nothing = skipnet.execute(model, images, threshold=1 - 1e-6)
    assert everything.decision.all() and not nothing.decision.any() and model.gate_threshold == 0.5
    model.gate_threshold = 1e-6
    _, record = model(images, skip_compute=True)
    assert torch.equal(record.decision, everything.decision)


SMALL = {"data.synthetic_size": 600, "data.synthetic_test_size": 100, "data.val_size": 100, "sp.batch_size": 16,
         "hrl.batch_size": 16, "eval.batch_size": 100, "model.arch": "cifar10_rnn_gate_38", "sp.iterations": 4,
         "hrl.iterations": 3, "eval.gate_thresholds": [0.2, 0.35, 0.5, 0.65]}


@pytest.mark.parametrize("baseline", ["batch_mean", "greedy"])
def test_engine_curve_and_a_retrain_at_a_swept_threshold_reproduce_exactly(baseline):
    """The curve's point at t is what a run configured with ``model.gate_threshold: t`` reports:
    the threshold changes evaluation only, never training (the greedy baseline runs the model in
    eval mode inside a training step: it still decides at 0.5)."""
    engine = Engine(load_train_config(None, dict(SMALL, **{"hrl.baseline": baseline})))
    while not engine.done:
        engine.step()
    own = engine.evaluate("val")
    curve = engine.threshold_curve(own=own)
    assert engine.model.gate_threshold == 0.5
    assert sorted({k.split("/")[1] for k in curve}) == ["0.2", "0.35", "0.5", "0.65"]
    assert curve["threshold_curve/0.5/val_top1"] == own["val_top1"]
    assert curve["threshold_curve/0.2/val_computation_pct"] >= curve["threshold_curve/0.65/val_computation_pct"]
    again = Engine(load_train_config(None, dict(SMALL, **{"model.gate_threshold": 0.35, "hrl.baseline": baseline})))
    while not again.done:
        again.step()
        assert again.model.gate_threshold == 0.5            # training never sees the evaluation threshold
    at = again.evaluate("val")
    for (name, a), b in zip(engine.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    for name in ("top1", "computation_pct", "block_count_pct", "distinct_paths", "difficulty_spearman"):
        assert at[f"val_{name}"] == curve[f"threshold_curve/0.35/val_{name}"], name
    plain = Engine(load_train_config(None, dict(SMALL, **{"stage": "base", "model.arch": "cifar10_resnet_38"})))
    assert plain.threshold_curve() == {}
