"""``SGD``: ``torch.optim.SGD`` without the ``torch._dynamo`` import its first call makes.

torch wraps an optimizer's ``add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict`` and ``step`` so that ``torch.compile`` does not trace into them; each wrapper
imports ``torch._dynamo`` on its first call, about 2 CPU-seconds in every process that trains
(every Tune trial actor, every ``skipnet train``), although nothing here compiles. This class
calls the functions those wrappers wrap (``inspect.unwrap``), under ``torch.no_grad`` for
``step`` as its wrapper does: the same update, state and checkpoint format, bit for bit
(``tests/train/test_optim.py``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

# the functions under torch's wrappers, resolved once: what the wrappers add is the import (and, for
# step, the grad mode that SGD.step below sets)
_add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
_zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
_state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
_load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)
_sgd_step = inspect.unwrap(torch.optim.SGD.step)


class SGD(torch.optim.SGD):
    """``torch.optim.SGD``, same arguments and results; see the module docstring."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _add_param_group(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grad(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _state_dict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _load_state_dict(self, state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        with torch.no_grad():
            return _sgd_step(self, closure)
