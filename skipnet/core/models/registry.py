"""Models registered by name: ``create_model(name, **overrides)`` and ``list_models(pattern)``.

Builders register with ``@register_model``; the authors' misspelled config names resolve
through an alias table. An unknown name fails with the closest registered names.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable

from torch import nn

from skipnet.errors import UnknownModelError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module], name: str | None = None) -> Callable[..., nn.Module]:
    """Register ``fn`` under ``name`` (default: its function name); usable as a decorator."""
    name = name or fn.__name__
    if name in _MODELS or name in _ALIASES:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def register_alias(alias: str, target: str) -> None:
    """Accept ``alias`` (for example the authors' misspelling) as another name of ``target``."""
    if alias in _MODELS or alias in _ALIASES:
        raise ValueError(f"model alias {alias!r} is registered twice")
    _ALIASES[alias] = target


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    """Registered names matching the fnmatch ``pattern``, in natural order."""
    names = list(_MODELS) + (list(_ALIASES) if include_aliases else [])
    return sorted(fnmatch.filter(names, pattern), key=_natural_key)


def resolve_name(name: str) -> str:
    """The canonical registered name of ``name`` (aliases resolved)."""
    name = _ALIASES.get(name, name)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS) + list(_ALIASES), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see skipnet.list_models()"
        raise UnknownModelError(f"model.arch: unknown architecture {name!r}{hint}")
    return name


def registered_gate_kind(name: str):
    """The gate kind (``GateKind``) ``create_model(name)`` builds without a ``gate`` override;
    None for a plain ResNet.

    Read from the defaults ``skipnet.core.models.zoo`` records on its builders, so nothing is built;
    a model registered otherwise is built once on the meta device (no weights allocated).
    """
    from skipnet.core.models.gates import parse_gate_kind
    fn = _MODELS[resolve_name(name)]
    defaults = getattr(fn, "defaults", None)
    if isinstance(defaults, dict):
        gate = defaults.get("gate")
        if gate is None or gate == "none":
            return None
        return getattr(gate, "kind", None) or parse_gate_kind(gate)     # a GateSpec or a name
    import torch
    with torch.device("meta"):
        spec = getattr(fn(), "gate_spec", None)
    return None if spec is None else spec.kind


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides (``num_classes``, ``mode``, ``gate``...) win.

    ``None`` overrides are dropped, so callers can pass optional settings through.

    Example:
        >>> import skipnet
        >>> model = skipnet.create_model("cifar10_rnn_gate_110", mode="policy")
        >>> logits, record = model(torch.randn(2, 3, 32, 32))
        >>> record.decision.shape
        torch.Size([2, 53])
    """
    canonical = resolve_name(name)
    model = _MODELS[canonical](**{k: v for k, v in overrides.items() if v is not None})
    model.arch = _name_of_built(canonical, model)
    return model


def _name_of_built(canonical: str, model: nn.Module) -> str:
    """The registered name that says what ``model`` is: ``canonical``, unless a ``gate``
    override changed its gate kind; then the name registered for the same network with that
    gate (ours, ``..._skipnet_{depth}_{gate}``, first), so that a checkpoint's recorded
    architecture never contradicts the gates it holds. ``canonical`` when there is none."""
    spec = getattr(model, "gate_spec", None)
    kind = None if spec is None else spec.kind
    if kind == registered_gate_kind(canonical):
        return canonical
    defaults = getattr(_MODELS[canonical], "defaults", None)
    if not isinstance(defaults, dict):
        return canonical
    want = {k: v for k, v in defaults.items() if k not in ("gate", "mode")}
    matches = [n for n, fn in _MODELS.items() if isinstance(getattr(fn, "defaults", None), dict)
               and {k: v for k, v in fn.defaults.items() if k not in ("gate", "mode")} == want
               and registered_gate_kind(n) == kind]
    matches.sort(key=lambda n: ("_skipnet_" not in n and "_resnet_" not in n, _natural_key(n)))
    return matches[0] if matches else canonical
