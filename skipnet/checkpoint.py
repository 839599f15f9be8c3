"""Checkpoints: atomic writes, weights-only loads, and the SkipNet authors' file layout.

Our files are a dict ``{"format": FORMAT, "info": CheckpointInfo as dict, "model": state_dict,
...}`` (training checkpoints add optimizer, schedule, iteration, RNG states and config).
The authors' released ``.pth.tar`` files are ``{"state_dict": ..., "iter", "best_prec1", ...}``
saved from DataParallel. ``authors_to_ours`` maps their keys explicitly:

* drop the ``module.`` prefix;
* ``group{g}_layer{i}.downsample.*`` duplicates ``group{g}_ds{i}.*`` (one shared module in
  their code): dropped after checking it is identical;
* plain ResNets: ``layer{g}.{i}.*`` -> ``group{g}_layer{i}.*``, ``layer{g}.{i}.downsample.*``
  -> ``group{g}_ds{i}.*``;
* the gate after the last block (built but never used by them) is dropped;
* ImageNet recurrent gates: ``control.proj.weight`` (1, h, 1, 1) of their 1x1 conv -> (1, h);
* BN ``num_batches_tracked`` buffers, absent from PyTorch 0.3 files, are taken from the model.

Every load uses ``torch.load(weights_only=True)``: a pickle carrying code is refused.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipnet.errors import CheckpointError

FORMAT = "skipnet-tune/1"
_ACCEPTED = "expected a complete .pt file written by skipnet or one of the authors' .pth.tar files"


@dataclass
class CheckpointInfo:
    """Metadata written into every checkpoint of ours (torchvision ``Weights.meta`` in spirit)."""

    arch: str
    gate: str | None = None
    mode: str | None = None
    num_classes: int | None = None
    source: str = "ours"                  # "ours" or "authors"
    alpha: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    code_version: str = ""

    @classmethod
    def of(cls, model: nn.Module, **kw) -> "CheckpointInfo":
        from skipnet import __version__
        spec = getattr(model, "gate_spec", None)
        return cls(arch=getattr(model, "arch", type(model).__name__),
                   gate=None if spec is None else spec.kind.value,
                   mode=getattr(getattr(model, "mode", None), "value", None),
                   num_classes=getattr(model, "num_classes", None), code_version=__version__, **kw)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, info: CheckpointInfo | None = None,
                    **extra: Any) -> Path:
    """Write ``model``'s weights, its ``CheckpointInfo`` and ``extra`` entries atomically."""
    info = info or CheckpointInfo.of(model)
    return atomic_save({"format": FORMAT, "info": dataclasses.asdict(info),
                        "model": model.state_dict(), **extra}, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file weights-only; one-line ``CheckpointError`` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(262)
    if not head.startswith((b"PK\x03\x04", b"\x80")) and head[257:262] != b"ustar":   # zip, pickle, old tar
        raise CheckpointError(f"checkpoint {path}: not a PyTorch checkpoint (neither a zip archive nor a "
                              f"pickle); {_ACCEPTED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"checkpoint {path}: refused: it is not weights-only (it would run "
                                  f"code or load objects other than tensors): {_unsafe_reason(e)}") from None
        raise CheckpointError(f"checkpoint {path}: not a PyTorch checkpoint ({first}); {_ACCEPTED}") from None
    except Exception as e:  # torch raises many kinds on damaged files (KeyError, EOFError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: unreadable or truncated ({msg}); {_ACCEPTED}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict with a state_dict, got {type(obj).__name__}")
    return obj


def _unsafe_reason(e: Exception) -> str:
    for line in str(e).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip()
    return "unsupported content"


def authors_to_ours(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an authors' ``state_dict`` onto ``model``'s parameter names (see module docstring)."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        plain = re.match(r"layer(\d+)\.(\d+)\.(.*)", key)
        if plain:                                                   # plain ResNet naming
            g, i, rest = plain.groups()
            if rest.startswith("downsample."):
                key = f"group{g}_ds{i}.{rest[len('downsample.'):]}"
            else:
                key = f"group{g}_layer{i}.{rest}"
        dup = re.match(r"(group\d+)_layer(\d+)\.downsample\.(.*)", key)
        if dup:                                                     # shared with group{g}_ds{i}
            twin = state.get(f"{dup.group(1)}_ds{dup.group(2)}.{dup.group(3)}")
            if twin is not None and not torch.equal(twin, value):
                raise CheckpointError(f"checkpoint: {key} differs from its shared twin "
                                      f"{dup.group(1)}_ds{dup.group(2)}.{dup.group(3)}")
            if twin is not None:
                continue
            key = f"{dup.group(1)}_ds{dup.group(2)}.{dup.group(3)}"
        if key == "control.proj.weight" and value.dim() == 4:       # ImageNet: 1x1 conv -> linear
            value = value.flatten(1)
        out[key] = value
    last = model.block_info[-1]
    prefix = f"group{last.group}_gate{last.index}."
    out = {k: v for k, v in out.items() if not k.startswith(prefix)}   # their unused last gate
    for key, value in ours.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value.clone()
    return out


def is_authors_layout(ckpt: dict[str, Any]) -> bool:
    return "state_dict" in ckpt and ckpt.get("format") != FORMAT


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> CheckpointInfo:
    """Load weights into ``model`` from one of our checkpoints or one of the authors' files.

    Checks keys and shapes (the architecture's name may differ: an SP checkpoint loads into
    the HRL variant of the same network); any mismatch is a one-line ``CheckpointError``
    naming the recorded architecture and what did not match.
    """
    ckpt = read_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        info = CheckpointInfo(**ckpt["info"])
        state = ckpt["model"]
    elif is_authors_layout(ckpt):
        state = authors_to_ours(ckpt["state_dict"], model)
        info = CheckpointInfo.of(model, source="authors")
        if "best_prec1" in ckpt:
            info.metrics["best_prec1"] = float(ckpt["best_prec1"])
    else:
        keys = ", ".join(sorted(map(str, ckpt))[:6])
        raise CheckpointError(f"checkpoint {path}: no 'model' or 'state_dict' entry (keys: {keys}); {_ACCEPTED}")
    _check_compatible(model, state, f"{path} (architecture {info.arch!r})", strict)
    model.load_state_dict(state, strict=strict)
    return info


def _check_compatible(model: nn.Module, state: dict[str, torch.Tensor], path, strict: bool) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing and strict:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected and strict:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
    if problems:
        arch = getattr(model, "arch", type(model).__name__)
        raise CheckpointError(f"checkpoint {path} does not match {arch}: " + "; ".join(problems))
