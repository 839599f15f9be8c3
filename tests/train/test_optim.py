"""``skipnet.core.train.optim.SGD`` is torch's SGD bit for bit, and training never imports
``torch._dynamo`` (what the class is for: ~2 CPU-s in every process that trains)."""
import copy
import subprocess
import sys

import pytest
import torch

from skipnet.core.train.optim import SGD


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _groups(net: torch.nn.Module) -> list[dict]:
    return [{"params": net[0].parameters(), "lr": 0.1}, {"params": net[2].parameters(), "lr": 0.02}]


def _steps(net: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        schedule.step()


def _schedule(optimizer: torch.optim.Optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 ** (i // 3))


@pytest.mark.parametrize("kwargs", [{"momentum": 0.9, "weight_decay": 1e-4}, {"momentum": 0.9, "nesterov": True}, {},
                                    {"momentum": 0.9, "foreach": True}])      # foreach: CUDA's default path
def test_the_same_updates_and_state_as_torch_sgd(kwargs):
    ours, theirs = _net(), _net()
    mine, reference = SGD(_groups(ours), lr=0.1, **kwargs), torch.optim.SGD(_groups(theirs), lr=0.1, **kwargs)
    _steps(ours, mine, _schedule(mine), 7, seed=1)
    _steps(theirs, reference, _schedule(reference), 7, seed=1)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)        # (an in-place update outside no_grad would have raised)
    state, reference_state = mine.state_dict(), reference.state_dict()
    assert state["param_groups"] == reference_state["param_groups"]
    assert state["state"].keys() == reference_state["state"].keys()
    for key, value in state["state"].items():
        assert torch.equal(value["momentum_buffer"], reference_state["state"][key]["momentum_buffer"])


@pytest.mark.parametrize("first, second", [(torch.optim.SGD, SGD), (SGD, torch.optim.SGD)])
def test_a_state_saved_by_either_resumes_in_the_other(first, second):
    net, twin = _net(), _net()
    optimizer = first(_groups(net), lr=0.1, momentum=0.9)
    schedule = _schedule(optimizer)
    _steps(net, optimizer, schedule, 4, seed=1)
    twin.load_state_dict(net.state_dict())
    resumed = second(_groups(twin), lr=0.5, momentum=0.1)           # every setting comes from the state
    resumed_schedule = _schedule(resumed)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))     # as through a file: own buffers
    resumed_schedule.load_state_dict(schedule.state_dict())
    _steps(net, optimizer, schedule, 4, seed=2)
    _steps(twin, resumed, resumed_schedule, 4, seed=2)
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow                  # trains an engine, in a fresh process
def test_training_saving_and_resuming_never_import_dynamo(tmp_path):
    """A fresh process: SP then HRL, a checkpoint written and resumed from, one more step."""
    script = f"""
import sys
import torch
from skipnet.core.config import load_train_config
from skipnet.core.train import Engine
cfg = load_train_config(None, {{"stage": "pipeline", "model.arch": "cifar10_skipnet_20_recurrent",
    "data.synthetic_size": 200, "data.synthetic_test_size": 50, "data.val_size": 50, "sp.batch_size": 8,
    "hrl.batch_size": 8, "sp.iterations": 2, "sp.gate_warmup": 1, "hrl.iterations": 3, "eval.batch_size": 50}})
engine = Engine(cfg)
engine.train(2)                        # SP
engine.train(1)                        # HRL
engine.evaluate("val")
engine.save(r"{tmp_path / 'last.pt'}")
resumed = Engine.restore(r"{tmp_path / 'last.pt'}")
resumed.train(1)
assert resumed.stage == "hrl" and resumed.iteration == 2, (resumed.stage, resumed.iteration)
print("torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False", "training imported torch._dynamo"
