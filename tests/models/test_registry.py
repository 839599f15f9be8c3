"""Contract tests over the registry: every name builds, runs, records its gates, and backprops."""
import pytest
import torch

import skipnet
from skipnet.core.models import SkipResNet
from skipnet.core.models.registry import register_model
from skipnet.errors import UnknownModelError

ALL = skipnet.list_models()


def _input(model, batch=2):
    size = 32 if model.stem_type == "cifar" else 64   # ImageNet nets pool adaptively: 64 px is enough here
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_and_runs(name):
    model = skipnet.create_model(name)
    assert isinstance(model, SkipResNet), "one family for every architecture"
    model.eval()
    with torch.no_grad():
        logits, record = model(_input(model))
    assert logits.shape == (2, model.num_classes)
    gates = 0 if model.gate_spec is None else len(model.block_info) - 1
    assert record.decision.shape == record.prob.shape == (2, gates)
    assert ((record.decision == 0) | (record.decision == 1)).all()
    if model.mode.value == "policy":
        assert record.log_prob is not None and record.log_prob.shape == (2, gates)


@pytest.mark.parametrize("name,mode", [("cifar10_resnet_38", "hard"), ("cifar10_rnn_gate_38", "hard"),
                                       ("cifar10_feedforward_38", "soft"), ("cifar10_feedforward_110", "hard"),
                                       ("cifar10_rnn_gate_rl_38", "policy"), ("cifar10_feedforward_rl_38", "policy"),
                                       ("imagenet_rnn_gate_rl_18", "policy")])
def test_every_trainable_parameter_gets_a_gradient(name, mode):
    model = skipnet.create_model(name, mode=mode).train()
    logits, record = model(_input(model, batch=4))
    loss = logits.logsumexp(1).mean()
    if record.log_prob is not None:                 # REINFORCE term reaches the gates in policy mode
        loss = loss + record.log_prob.sum()
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"No gradient for {n}"


def test_parameter_counts_match_published_figures():
    def count(name):
        return sum(p.numel() for p in skipnet.create_model(name).parameters())
    assert count("cifar10_resnet_110") == pytest.approx(1.7e6, rel=0.03)
    assert count("resnet50") == pytest.approx(25.6e6, rel=0.005)
    assert count("resnet101") == pytest.approx(44.5e6, rel=0.005)


def test_authors_names_and_aliases():
    for name in ["cifar10_rnn_gate_rl_110", "cifar100_feedforward_74", "cifar10_resnet_38",
                 "imagenet_rnn_gate_rl_101", "cifar10_feedfoward_rl_38", "cifar100_feeforward_38",
                 "cifar100_feedford_rl_38", "resnet152"]:
        skipnet.create_model(name)
    m = skipnet.create_model("cifar10_feedfoward_rl_38")
    assert m.arch == "cifar10_feedforward_rl_38" and m.mode.value == "policy"
    assert skipnet.create_model("cifar10_feedforward_110").gate_spec.kind.value == "feedforward_fc"
    assert skipnet.create_model("cifar10_feedforward_74").gate_spec.kind.value == "feedforward_conv"
    assert skipnet.create_model("cifar100_rnn_gate_110").num_classes == 100


def test_overrides_and_none_dropped():
    m = skipnet.create_model("cifar10_skipnet_38_recurrent", mode="policy", num_classes=7, gate=None)
    assert m.mode.value == "policy" and m.num_classes == 7 and m.gate_spec.kind.value == "recurrent"
    m = skipnet.create_model("cifar10_rnn_gate_38", gate="feedforward")
    assert m.gate_spec.kind.value == "feedforward_conv"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean cifar10_rnn_gate_110"):
        skipnet.create_model("cifar10_rnn_gate_111")
    with pytest.raises(ValueError, match="registered twice"):
        register_model(lambda: None, name="cifar10_resnet_38")


def test_list_models_pattern_natural_order():
    names = skipnet.list_models("cifar10_resnet_*")
    assert names == ["cifar10_resnet_20", "cifar10_resnet_38", "cifar10_resnet_74", "cifar10_resnet_110", "cifar10_resnet_152"]


def test_bad_gate_value_names_the_key():
    from skipnet.errors import ConfigError
    with pytest.raises(ConfigError, match="model.gate"):
        skipnet.create_model("cifar10_rnn_gate_38", gate="banana")
    with pytest.raises(ConfigError, match="model.mode"):
        skipnet.create_model("cifar10_rnn_gate_38", mode="greedy")


def test_the_same_seed_starts_every_gate_type_and_the_plain_resnet_from_the_same_weights():
    """The network's own layers are drawn before the gates' (``init_weights``): SP and the plain
    ResNet of a seed differ only by what the gates do."""
    nets = {}
    for name in ("cifar10_resnet_20", "cifar10_skipnet_20_feedforward_conv", "cifar10_skipnet_20_recurrent"):
        torch.manual_seed(7)
        nets[name] = skipnet.create_model(name).state_dict()
    plain = nets.pop("cifar10_resnet_20")
    for name, state in nets.items():
        assert all(torch.equal(state[k], v) for k, v in plain.items()), name
    torch.manual_seed(8)
    assert not torch.equal(skipnet.create_model("cifar10_resnet_20").state_dict()["conv1.weight"], plain["conv1.weight"])
