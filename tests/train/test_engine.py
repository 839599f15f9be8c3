"""Training engine: steps, rewards, exact resume, stage switching, hyper-parameter updates."""
import pytest
import torch

from skipnet.core.config import load_train_config
from skipnet.core.train import Engine, gate_returns, reinforce_loss
from skipnet.core.train.steps import advantages, bernoulli_entropy, greedy_returns, random_path_loss
from skipnet.errors import ConfigError

pytestmark = pytest.mark.slow      # trains engines (SP, HRL, resume equivalence)

SMALL = {"data.synthetic_size": 1200, "data.synthetic_test_size": 200, "data.val_size": 200,
         "sp.batch_size": 16, "hrl.batch_size": 16, "eval.batch_size": 100, "model.arch": "cifar10_rnn_gate_38"}


def small_cfg(tmp_path=None, **extra):
    overrides = dict(SMALL, **extra)
    if tmp_path is not None:
        overrides["output_dir"] = str(tmp_path)
    return load_train_config(None, overrides)


def test_gate_returns_follow_the_authors_recursion():
    decision = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    loss = torch.tensor([0.5, 2.0])
    r = gate_returns(decision, loss, alpha=0.3, gamma=0.9)
    step = 0.3 / 3
    # sample 0: rewards (0, step, step); final reward -0.5
    r2 = step + 0.9 * -0.5
    r1 = step + 0.9 * r2
    r0 = 0.0 + 0.9 * r1
    assert torch.allclose(r[0], torch.tensor([r0, r1, r2]))
    assert torch.allclose(r[1], torch.tensor([step + 0.9 * 0.81 * -2.0, 0.81 * -2.0, 0.9 * -2.0]))


def test_reinforce_loss_gradient_is_minus_weighted_return():
    log_prob = torch.tensor([[-0.1, -2.0]], requires_grad=True)
    returns = torch.tensor([[1.0, -3.0]])
    reinforce_loss(log_prob, returns, rl_weight=0.5).backward()
    assert torch.allclose(log_prob.grad, torch.tensor([[-0.5, 1.5]]))


@pytest.mark.parametrize("skip_compute", [False, True])
def test_resume_equals_uninterrupted_run(tmp_path, skip_compute):
    """Stopped halfway (inside HRL), saved, restored in a new engine: identical to never stopping."""
    cfg = small_cfg(**{"sp.iterations": 6, "hrl.iterations": 6, "hrl.skip_compute": skip_compute,
                       "hrl.lr": 0.01})
    straight = Engine(cfg)
    straight.train(6)
    straight.train(3)
    straight.train(3)
    expected = straight.evaluate("val")

    first = Engine(cfg)
    first.train(6)
    first.train(3)
    first.save(tmp_path / "half.pt")
    del first
    resumed = Engine.restore(tmp_path / "half.pt")
    assert resumed.stage == "hrl" and resumed.iteration == 3
    resumed.train(3)
    assert resumed.evaluate("val") == expected
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_pipeline_switches_to_policy_mode_and_reports_metrics():
    engine = Engine(small_cfg(**{"sp.iterations": 2, "hrl.iterations": 2, "sp.eval_every": 2}))
    m = engine.train(5)
    assert m["stage"] == "sp" and m["iteration"] == 2          # a window stops at the stage's end
    m = engine.train(5)
    assert m["stage"] == "hrl" and engine.model.mode.value == "policy" and engine.done
    assert m["lr"] == pytest.approx(1e-4) and m["train_images_per_s"] > 0
    v = engine.evaluate("val")
    assert set(v) >= {"val_top1", "val_loss", "val_computation_pct", "val_block_count_pct", "val_skip_ratio"}
    assert len(v["val_skip_ratio"]) == engine.model.num_gates
    t = engine.evaluate("test", per_sample=True)
    assert t["executed_blocks"].shape == t["difficulty"].shape == (200,)


def test_update_hyperparameters_keeps_schedule_position():
    engine = Engine(small_cfg(**{"stage": "sp", "sp.iterations": 4, "sp.lr_milestones": [2], "sp.lr_decay": 0.5}))
    engine.train(3)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    engine.update_hyperparameters(lr=0.2, alpha=0.3)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert engine.cfg.hrl.alpha == 0.3 and engine.cfg.sp.lr == 0.2


def test_hrl_from_sp_checkpoint_and_stage_checks(tmp_path):
    sp = Engine(small_cfg(**{"stage": "sp", "sp.iterations": 2}))
    sp.train(2)
    sp.save(tmp_path / "sp.pt")
    hrl = Engine(small_cfg(**{"stage": "hrl", "hrl.iterations": 1, "hrl.init_checkpoint": str(tmp_path / "sp.pt")}))
    assert torch.equal(hrl.model.fc.weight, sp.model.fc.weight)
    with pytest.raises(ConfigError, match="hrl.init_checkpoint"):
        Engine(small_cfg(**{"stage": "hrl"}))
    with pytest.raises(ConfigError, match="model.arch.*plain ResNet"):
        Engine(small_cfg(**{"stage": "base"}))
    with pytest.raises(ConfigError, match="model.arch.*gated SkipNet"):
        Engine(small_cfg(**{"stage": "sp", "model.arch": "cifar10_resnet_38"}))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny ImageFolder tree (train/ and val/, PNG files, three classes)."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    for split, per_class in (("train", 12), ("val", 4)):
        for name in ("ant", "bee", "cat"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("num_workers", [0, 1])
def test_evaluation_never_changes_training(image_folder, num_workers):
    """A folder data set's DataLoader draws its seed from the global RNG that HRL samples gate
    actions from: evaluating as often as one likes must still train the very same model."""
    cfg = load_train_config(None, {"model.arch": "cifar10_rnn_gate_38", "data.name": "imagefolder",
                                   "data.root": str(image_folder), "data.image_size": 16, "data.val_size": 6,
                                   "data.num_workers": num_workers, "sp.batch_size": 6, "sp.iterations": 3,
                                   "hrl.batch_size": 6, "hrl.iterations": 4, "eval.batch_size": 4})
    quiet = Engine(cfg)                   # each engine seeds the global RNG when it is built
    while not quiet.done:
        quiet.step()
    busy = Engine(cfg)
    while not busy.done:
        busy.step()
        before = torch.get_rng_state()
        busy.evaluate("val")
        assert torch.equal(torch.get_rng_state(), before)
    for (name, a), b in zip(quiet.model.state_dict().items(), busy.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_first_hrl_chunk_of_a_pipeline_uses_hrl_eval_every(tmp_path):
    from skipnet.core.train.run import fit
    evaluated = []
    fit(small_cfg(tmp_path, **{"sp.iterations": 4, "sp.eval_every": 4, "hrl.iterations": 4, "hrl.eval_every": 2}),
        on_eval=lambda m: evaluated.append((m["stage"], m["iteration"])))
    assert evaluated == [("sp", 4), ("hrl", 6), ("hrl", 8)]


def test_default_recipe_warms_up_and_authors_recipe_restores_their_settings():
    default = load_train_config(None, {"sp.iterations": 400})
    assert default.recipe == "stable" and default.sp.warmup_iterations == 133 and default.hrl.baseline == "greedy"
    assert default.model.gate_norm and default.hrl.gate_lr_scale == 10.0 and default.hrl.entropy_weight > 0
    assert default.hrl.straight_through and default.hrl.random_path_weight == 1.0
    authors = load_train_config(None, {"recipe": "authors", "sp.iterations": 400})
    assert authors.sp.warmup_iterations == 0 and authors.hrl.baseline == "none"
    assert not authors.model.gate_norm and authors.hrl.gate_lr_scale == 1.0 and authors.hrl.entropy_weight == 0.0
    assert not authors.hrl.straight_through and authors.hrl.random_path_weight == 0.0
    assert not any(".2." in k for k in Engine(load_train_config(None, {**SMALL, "recipe": "authors"})).model.state_dict())
    mixed = load_train_config(None, {"recipe": "authors", "sp.gate_warmup": 50})     # a stated key wins
    assert mixed.sp.warmup_iterations == 50 and mixed.hrl.baseline == "none"
    with pytest.raises(ConfigError, match="recipe"):
        load_train_config(None, {"recipe": "fast"})


def test_greedy_baseline_cancels_what_the_image_alone_decides():
    """The self-critical advantage is the sampled path's return minus the greedy path's: zero
    where the policy sampled its greedy actions, so an image's difficulty alone moves nothing."""
    returns = torch.tensor([[-1.0, -0.5], [-3.0, -2.0]])
    greedy = torch.tensor([[-1.0, -0.5], [-2.5, -2.0]])
    assert torch.equal(advantages(returns, "greedy", greedy), torch.tensor([[0.0, 0.0], [-0.5, 0.0]]))
    assert torch.equal(advantages(returns, "batch_mean"), returns - returns.mean(0, keepdim=True))
    assert torch.equal(advantages(returns, "none"), returns)


def test_greedy_returns_leave_bn_statistics_and_rng_alone():
    engine = Engine(small_cfg(**{"stage": "hrl", "hrl.iterations": 1, "hrl.baseline": "greedy"}), load_init=False)
    model = engine.model
    model.train()
    images, labels = engine._next_batch()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    rng = torch.get_rng_state()
    r = greedy_returns(model, images, labels, alpha=1.0, gamma=1.0)
    assert r.shape == (images.shape[0], model.num_gates) and model.training and model.mode.value == "policy"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())
    assert torch.equal(torch.get_rng_state(), rng)
    engine.step()                                        # and a greedy-baseline step trains
    assert engine.iteration == 1


def test_gates_train_at_their_own_learning_rate_through_schedule_and_updates():
    engine = Engine(small_cfg(**{"stage": "sp", "sp.iterations": 4, "sp.lr_milestones": [2], "sp.lr_decay": 0.5,
                                 "sp.gate_lr_scale": 10.0}))
    blocks, gates = engine.optimizer.param_groups
    names = {id(p): n for n, p in engine.model.named_parameters()}
    assert all("_gate" in names[id(p)] or names[id(p)].startswith("control.") for p in gates["params"])
    assert not any("_gate" in names[id(p)] for p in blocks["params"])
    assert (blocks["lr"], gates["lr"]) == pytest.approx((0.1, 1.0))
    engine.train(3)
    assert (blocks["lr"], gates["lr"]) == pytest.approx((0.05, 0.5))
    engine.update_hyperparameters(lr=0.2)                 # PBT: the ratio stays
    assert (blocks["lr"], gates["lr"]) == pytest.approx((0.1, 1.0))
    with pytest.raises(ConfigError, match="hrl.gate_lr_scale"):
        small_cfg(**{"hrl.gate_lr_scale": 0})


def test_entropy_weight_pulls_gate_probabilities_towards_one_half():
    prob = torch.tensor([0.9, 0.5, 0.1], requires_grad=True)
    bernoulli_entropy(prob).sum().backward()
    assert prob.grad[0] < 0 and abs(prob.grad[1]) < 1e-6 and prob.grad[2] > 0


@pytest.mark.parametrize("skip_compute", [False, True])
def test_random_path_loss_trains_the_blocks_on_paths_of_every_length_and_never_the_gates(skip_compute):
    engine = Engine(small_cfg(**{"stage": "hrl", "hrl.init_checkpoint": None}), load_init=False)
    model = engine.model.train()
    images, labels = engine._next_batch()
    seen = []
    forward = model.forward
    model.forward = lambda x, **kw: (seen.append(kw["decisions"]), forward(x, **kw))[1]
    torch.manual_seed(0)
    random_path_loss(model, images, labels, skip_compute).backward()
    keep = seen[0].mean(1)                              # per image: the share of gated blocks kept
    assert seen[0].shape == (16, model.num_gates) and keep.min() < 0.3 and keep.max() > 0.7
    gates = [n for n, p in model.named_parameters() if "gate" in n or n.startswith("control")]
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert gates and all(grads[n] is None or not grads[n].any() for n in gates)
    assert grads["conv1.weight"].abs().sum() > 0 and grads["fc.weight"].abs().sum() > 0


def test_random_path_weight_must_not_be_negative():
    with pytest.raises(ConfigError, match="hrl.random_path_weight"):
        small_cfg(**{"hrl.random_path_weight": -1})


def test_hrl_step_runs_the_random_path_on_the_first_share_of_the_batch_and_no_gate_there():
    """``hrl.random_path_fraction`` of 0.5: the random-path forward gets the batch's first half
    (with forced decisions) and evaluates no gate; the policy forward gets the whole batch."""
    engine = Engine(small_cfg(**{"stage": "hrl", "hrl.init_checkpoint": None, "hrl.random_path_fraction": 0.5}),
                    load_init=False)
    model, calls = engine.model, []
    forward = model.forward

    def spy(x, **kw):
        gate_calls = []
        hooks = [m.register_forward_hook(lambda *a: gate_calls.append(1))
                 for n, m in model.named_children() if "_gate" in n]
        try:
            return forward(x, **kw)
        finally:
            calls.append((x.shape[0], kw.get("decisions") is not None, len(gate_calls)))
            for h in hooks:
                h.remove()

    model.forward = spy
    engine.step()
    batch = SMALL["hrl.batch_size"]
    policy = [c for c in calls if c[0] == batch and not c[1]]
    random_paths = [c for c in calls if c[1]]
    assert policy and all(c[2] == model.num_gates for c in policy)          # greedy and policy forwards
    assert random_paths == [(batch // 2, True, 0)]


@pytest.mark.parametrize("value", [0, -0.5, 1.5])
def test_random_path_fraction_must_be_in_zero_one(value):
    with pytest.raises(ConfigError, match=r"hrl.random_path_fraction.*\(0, 1\]"):
        small_cfg(**{"hrl.random_path_fraction": value})


def test_sp_learning_rate_warms_up_with_the_gates_and_resumes_on_its_ramp(tmp_path):
    """``sp.lr_warmup`` (default: as long as the gate warm-up) ramps the learning rate linearly,
    then step decay applies; HRL has no ramp; a resumed run and a PBT update stay on the ramp."""
    cfg = {"stage": "pipeline", "sp.iterations": 8, "sp.gate_warmup": 4, "sp.lr_milestones": [6], "sp.lr_decay": 0.5,
           "hrl.iterations": 2, "hrl.lr": 0.01}
    engine = Engine(small_cfg(**cfg))
    assert engine.cfg.sp.lr_warmup_iterations == 4
    lrs = []
    for _ in range(10):
        lrs.append(engine.optimizer.param_groups[0]["lr"] if engine.iteration < 8 else None)
        engine.step()
    assert lrs[:8] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.05, 0.05])
    assert engine.stage == "hrl" and engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)

    engine = Engine(small_cfg(**cfg))
    engine.train(2)
    engine.save(tmp_path / "ramp.pt")
    resumed = Engine.restore(tmp_path / "ramp.pt")
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.075)
    resumed.update_hyperparameters(lr=0.2)                 # PBT on the ramp: 3/4 of the new lr
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.15)
    resumed.step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.2)
    assert load_train_config(None, {**cfg, "sp.lr_warmup": 0}).sp.lr_warmup_iterations == 0
    assert load_train_config(None, {**cfg, "recipe": "authors"}).sp.lr_warmup_iterations == 0


def test_sp_starts_the_gates_executing_unless_the_authors_recipe_is_asked_for():
    def execute_bias(engine):
        return engine.model.control.proj.bias.item()
    stable = Engine(small_cfg(**{"stage": "sp", "sp.iterations": 2}))
    assert execute_bias(stable) == pytest.approx(float(torch.logit(torch.tensor(0.9))))
    assert execute_bias(Engine(small_cfg(**{"stage": "sp", "sp.gate_init_prob": 0.75}))) == pytest.approx(
        float(torch.logit(torch.tensor(0.75))))
    authors = Engine(small_cfg(**{"stage": "sp", "recipe": "authors"}))
    assert abs(execute_bias(authors) - execute_bias(stable)) > 0.5     # PyTorch's Linear bias, |b| <= 0.32
    with pytest.raises(ConfigError, match="sp.gate_init_prob"):
        small_cfg(**{"sp.gate_init_prob": 1.0})
