"""Real skipping equals the masked reference (CPU, float32, eval mode) within 1e-5 of the logits' scale
(a fresh ResNet-110 in eval mode has logits near 1e4, where float32 rounding alone is about 1e-3)."""
import pytest
import torch

import skipnet
from skipnet.core.executor import execute, run_selected


def _spread_gates(model):
    """Random gate weights large enough that decisions mix (fresh gates all say skip or run)."""
    torch.manual_seed(11)
    for name, p in model.named_parameters():
        if ("gate" in name or "control" in name) and ".2." not in name:   # the embedding norm stays (1, 0)
            p.data.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("name", ["cifar10_rnn_gate_rl_38", "cifar10_feedforward_rl_38",
                                  "cifar10_feedforward_110", "cifar100_rnn_gate_74"])
@pytest.mark.parametrize("batch", [1, 9])
def test_executor_matches_masked_reference(name, batch):
    model = _spread_gates(skipnet.create_model(name)).eval()
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        ref_logits, ref = model(x)
    logits, record = execute(model, x)
    assert torch.equal(record.decision, ref.decision)
    assert torch.allclose(logits, ref_logits, atol=1e-5 * max(1.0, ref_logits.abs().max().item()), rtol=0)
    if batch > 1:
        frac = ref.decision.mean().item()
        assert 0.05 < frac < 0.95, "test needs mixed decisions"


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_forced_patterns_including_none_and_all(fraction):
    model = skipnet.create_model("cifar10_rnn_gate_rl_38").eval()
    torch.manual_seed(5)
    x = torch.randn(4, 3, 32, 32)
    decisions = (torch.rand(4, model.num_gates) < fraction).float()
    with torch.no_grad():
        ref_logits, _ = model(x, decisions=decisions)
    logits, record = execute(model, x, decisions=decisions)
    assert torch.equal(record.decision, decisions)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)


def test_imagenet_bottleneck_executor():
    model = _spread_gates(skipnet.create_model("imagenet_rnn_gate_rl_50")).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref_logits, _ = model(x)
    logits, _ = execute(model, x)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)


def test_skipped_block_is_not_run():
    calls = []

    def block(x, shortcut):
        calls.append(x.shape[0])
        return x + shortcut

    x = torch.ones(4, 2, 3, 3)
    assert run_selected(block, x, x * 2, torch.zeros(4)) is not None and calls == []
    out = run_selected(block, x, x * 2, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert calls == [2]
    assert out[:, 0, 0, 0].tolist() == [2.0, 3.0, 2.0, 3.0]


def test_selected_training_needs_policy_mode():
    from skipnet.errors import ConfigError
    model = skipnet.create_model("cifar10_rnn_gate_38").train()
    with pytest.raises(ConfigError, match="skip_compute"):
        model(torch.randn(2, 3, 32, 32), skip_compute=True)
    policy = skipnet.create_model("cifar10_rnn_gate_rl_38").train()
    logits, record = policy(torch.randn(4, 3, 32, 32), skip_compute=True)
    (logits.sum() + record.log_prob.sum()).backward()
