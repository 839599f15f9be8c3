"""FLOPs against torch.utils.flop_counter (2 FLOPs per multiply-accumulate) and a hand count."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import skipnet
from skipnet.core.flops import block_costs, block_count_pct
from skipnet.core.models.blocks import BasicBlock
from skipnet.core.models.gates import GateKind, GateSpec
from skipnet.core.models.skipnet import SkipResNet


def counted_macs(model, x, **kw):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, **kw)
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name,size", [("cifar10_resnet_38", 32), ("cifar10_resnet_110", 32),
                                       ("cifar100_resnet_152", 32), ("resnet50", 224), ("resnet101", 224),
                                       ("resnet18", 224)])
def test_plain_resnets_match_independent_counter(name, size):
    model = skipnet.create_model(name).eval()
    costs = block_costs(model, (size, size))
    assert costs.plain_total == counted_macs(model, torch.randn(1, 3, size, size))


def test_published_imagenet_figures():
    assert block_costs(skipnet.create_model("resnet50"), (224, 224)).plain_total == pytest.approx(4.1e9, rel=0.01)
    assert block_costs(skipnet.create_model("resnet101"), (224, 224)).plain_total == pytest.approx(7.8e9, rel=0.01)


@pytest.mark.parametrize("name", ["cifar10_rnn_gate_38", "cifar10_feedforward_38", "cifar10_feedforward_110",
                                  "imagenet_rnn_gate_50"])
def test_gate_costs_match_counter_with_every_block_executed(name):
    model = skipnet.create_model(name).eval()
    size = 32 if model.stem_type == "cifar" else 224
    costs = block_costs(model, (size, size))
    ones = torch.ones(1, model.num_gates)
    assert costs.plain_total + sum(costs.gates) == counted_macs(model, torch.randn(1, 3, size, size), decisions=ones)
    assert costs.executed_flops(ones).item() == costs.plain_total + sum(costs.gates)


@pytest.mark.parametrize("name", ["cifar10_rnn_gate_rl_38", "cifar10_feedforward_rl_74"])
def test_executed_flops_equal_what_the_executor_computes(name):
    """At batch 1 the executor runs exactly the executed blocks, so the counter sees executed FLOPs."""
    model = skipnet.create_model(name).eval()
    torch.manual_seed(3)
    decisions = (torch.rand(1, model.num_gates) < 0.5).float()
    costs = block_costs(model)
    measured = counted_macs(model, torch.randn(1, 3, 32, 32), skip_compute=True, decisions=decisions)
    assert costs.executed_flops(decisions).item() == measured
    assert costs.computation_pct(decisions).item() == pytest.approx(100 * measured / costs.plain_total)


def test_hand_count_on_a_small_config():
    # stem 3->2 at 8x8; stage 1: one 2->2 block; stage 2: one 2->4 block, stride 2 (+ projection);
    # recurrent gate embed 3, hidden 5; head 4 -> 3 classes.
    model = SkipResNet(BasicBlock, (1, 1), num_classes=3, widths=(2, 4), gate=GateSpec(GateKind.RECURRENT, 3, 5))
    costs = block_costs(model, (8, 8))
    assert costs.stem == 3 * 2 * 9 * 64
    assert costs.blocks == (2 * 2 * 9 * 64 * 2, 2 * 4 * 9 * 16 + 4 * 4 * 9 * 16)
    assert costs.shortcuts == (0, 2 * 4 * 16)
    assert costs.gates == (2 * 3 + 4 * 5 * (3 + 5) + 5,)
    assert costs.head == 4 * 3
    decision = torch.tensor([[0.0], [1.0]])
    always = costs.stem + costs.head + costs.shortcuts[1] + costs.blocks[0] + costs.gates[0]
    assert costs.executed_flops(decision).tolist() == [always, always + costs.blocks[1]]
    assert block_count_pct(decision).tolist() == [50.0, 100.0]
    assert costs.by_block()["group2_layer0"] == costs.blocks[1] + costs.shortcuts[1]
    assert list(costs.by_gate()) == ["group1_layer0"]


def test_plain_network_is_one_hundred_percent():
    model = skipnet.create_model("cifar10_resnet_38")
    costs = block_costs(model)
    _, record = model.eval()(torch.randn(2, 3, 32, 32))
    assert costs.computation_pct(record.decision).tolist() == [100.0, 100.0]
