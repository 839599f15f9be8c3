"""Gate modes and kinds: soft, hard straight-through, policy sampling with log-probabilities."""
import pytest
import torch

from skipnet.core.models.gates import (FeedforwardConvGate, FeedforwardFCGate, GateMode, RecurrentGate,
                                  RecurrentGateEmbedding, decide)


def test_hard_mode_is_binary_forward_with_soft_gradient():
    logit = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    mask, decision, prob, log_prob = decide(logit, GateMode.HARD, training=True)
    assert mask.tolist() == [0.0, 1.0, 1.0] and decision.tolist() == [0.0, 1.0, 1.0]
    assert log_prob is None
    mask.sum().backward()
    p = torch.sigmoid(logit.detach())
    assert torch.allclose(logit.grad, p * (1 - p))     # d prob / d logit: straight-through


def test_soft_mode_uses_probability_in_training_and_threshold_in_eval():
    logit = torch.tensor([-1.0, 1.0])
    mask, _, prob, _ = decide(logit, GateMode.SOFT, training=True)
    assert torch.equal(mask, prob)
    mask, _, _, _ = decide(logit, GateMode.SOFT, training=False)
    assert mask.tolist() == [0.0, 1.0]


def test_policy_mode_samples_bernoulli_and_exposes_log_prob():
    torch.manual_seed(1)
    logit = torch.full((20000,), 0.8473)   # prob 0.7
    mask, decision, prob, log_prob = decide(logit, GateMode.POLICY, training=True)
    assert torch.equal(mask, decision) and not mask.requires_grad
    assert decision.mean().item() == pytest.approx(0.7, abs=0.02)
    expected = torch.where(decision > 0, prob.log(), (1 - prob).log())
    assert torch.allclose(log_prob, expected, atol=1e-6)
    _, eval_decision, _, _ = decide(logit[:3], GateMode.POLICY, training=False)
    assert eval_decision.tolist() == [1.0, 1.0, 1.0]


def test_straight_through_policy_mask_is_the_sample_with_the_gradient_of_the_probability():
    torch.manual_seed(2)
    logit = torch.linspace(-2, 2, 9, requires_grad=True)
    mask, decision, prob, log_prob = decide(logit, GateMode.POLICY, training=True, straight_through=True)
    assert torch.equal(mask.detach(), decision) and log_prob is not None     # forward: the sampled action
    (mask * torch.arange(9.0)).sum().backward()
    assert torch.allclose(logit.grad, torch.arange(9.0) * prob.detach() * (1 - prob.detach()))
    mask, _, _, _ = decide(logit, GateMode.POLICY, training=False, straight_through=True)
    assert not mask.requires_grad                                              # eval: the threshold alone


def test_temperature_and_forced_decisions():
    logit = torch.tensor([2.0, -2.0])
    _, _, prob, _ = decide(logit, GateMode.HARD, training=False, temperature=2.0)
    assert torch.allclose(prob, torch.sigmoid(logit / 2))
    mask, decision, _, _ = decide(logit, GateMode.HARD, training=False, forced=torch.tensor([0.0, 1.0]))
    assert decision.tolist() == [0.0, 1.0] and mask.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("gate", [FeedforwardConvGate(16), FeedforwardFCGate(16)])
@pytest.mark.parametrize("size", [32, 16, 8])
def test_feedforward_gates_give_one_logit_per_sample(gate, size):
    gate.eval()
    assert gate(torch.randn(1, 16, size, size)).shape == (1,)   # batch 1 works (the authors' squeeze did not)
    out = gate(torch.randn(5, 16, size, size))
    assert out.shape == (5,)


def test_feedforward_logit_difference_equals_authors_softmax():
    gate = FeedforwardFCGate(8).eval()
    x = torch.randn(4, 8, 16, 16)
    h = torch.relu(gate.bn1(gate.conv1(x)))
    two = gate.linear_layer(h.mean((2, 3), keepdim=True)).flatten(1)
    assert torch.allclose(torch.sigmoid(gate(x)), torch.softmax(two, 1)[:, 1], atol=1e-6)


def test_recurrent_gate_state_is_passed_not_stored():
    emb, control = RecurrentGateEmbedding(16, 10), RecurrentGate(10, 10)
    x = torch.randn(3, 16, 8, 8)
    logit1, state1 = control(emb(x), None)
    logit2, state2 = control(emb(x), state1)
    again, _ = control(emb(x), None)
    assert torch.equal(logit1, again) and not torch.equal(logit1, logit2)
    # one step equals nn.LSTM on the same weights (the authors' computation)
    out, _ = control.rnn(emb(x).unsqueeze(0))
    assert torch.allclose(control.proj(out[0]).squeeze(1), logit1, atol=1e-6)


def test_skip_compute_is_refused_where_the_mask_carries_a_gradient():
    from skipnet import create_model
    from skipnet.errors import ConfigError
    model = create_model("cifar10_skipnet_20_recurrent").train()
    model.mode = GateMode.POLICY
    images = torch.randn(4, 3, 32, 32)
    model(images, skip_compute=True)                                  # sampled actions: no gradient through the mask
    with pytest.raises(ConfigError, match="straight_through"):
        model(images, skip_compute=True, straight_through=True)
    model(images, skip_compute=True, straight_through=True, decisions=torch.ones(4, model.num_gates))  # forced


@pytest.mark.parametrize("arch", ["cifar10_skipnet_20_feedforward_conv", "cifar10_skipnet_20_feedforward_fc",
                                  "cifar10_skipnet_20_recurrent"])
def test_start_executing_makes_every_gate_run_its_block_and_draws_nothing(arch):
    import skipnet
    from skipnet.core.models.gates import start_executing
    torch.manual_seed(0)
    model = skipnet.create_model(arch).train()
    images = torch.randn(32, 3, 32, 32)
    rng = torch.get_rng_state()
    start_executing(model, 0.9)
    assert torch.equal(torch.get_rng_state(), rng)
    _, record = model(images)
    assert record.decision.mean().item() == 1.0                 # every block runs for every image
    assert 0.8 < record.prob.mean().item() < 0.97
    assert record.prob.std().item() > 0                         # the gates still see their input
