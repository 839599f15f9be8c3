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

``checkpoint_gate_kind`` tells which gates a file holds (recorded in ours, read off the key
layout in the authors'), so that loading one into a model of another gate type fails naming
both gate types rather than listing missing keys.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from skipnet.core.models.gates import GateKind, parse_gate_kind
from skipnet.errors import CheckpointError

FORMAT = "skipnet-tune/1"
_ACCEPTED = "expected a complete .pt file written by skipnet or one of the authors' .pth.tar files"
TUNE_CHECKPOINT_FILE = "engine.pt"      # the file in each Tune checkpoint directory (skipnet.tune.trainable writes it)


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
        from skipnet.version import __version__
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
    """Load a checkpoint weights-only; one-line ``CheckpointError`` when it is not one.

    ``path`` is a file or a Tune trial's checkpoint directory (its ``engine.pt``), local or a
    storage URI (``s3://...``, fetched into a temporary directory first: ``skipnet.core.storage``).
    """
    from skipnet.core import storage
    if not storage.is_uri(path):
        path = checkpoint_file(path)
        return _read_local(Path(path), str(Path(path)))
    try:
        path = checkpoint_file(path)
        with storage.local_copy(path) as local:
            return _read_local(Path(local), path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: no such file: {path}") from None
    except OSError as e:                      # no credentials, no such bucket, no answer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: cannot be fetched ({first})") from None


_TUNE_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")


def checkpoint_file(path: str | os.PathLike) -> str:
    """The checkpoint file ``path`` names: a file as it is; a Tune checkpoint directory's
    ``engine.pt``; a trial directory's last checkpoint (the highest ``checkpoint_NNNNNN``).
    A search directory, or a directory holding none of these, is a one-line ``CheckpointError``
    saying what was expected. Local paths and storage URIs alike (``skipnet.core.storage``)."""
    from skipnet.core import storage
    path = str(path)
    if not storage.is_dir(path):
        return path                                # a file, or nothing: the reader says which
    if storage.exists(storage.join(path, TUNE_CHECKPOINT_FILE)):
        return storage.join(path, TUNE_CHECKPOINT_FILE)
    names = storage.list_dir(path)
    numbered = sorted((int(m.group(1)), n) for n in names if (m := _TUNE_CHECKPOINT.match(n)))
    for _, name in reversed(numbered):
        if storage.exists(storage.join(path, name, TUNE_CHECKPOINT_FILE)):
            return storage.join(path, name, TUNE_CHECKPOINT_FILE)
    trials = [n for n in names if storage.is_dir(storage.join(path, n))
              and any(_TUNE_CHECKPOINT.match(c) for c in storage.list_dir(storage.join(path, n)))]
    if trials:
        raise CheckpointError(f"checkpoint {path}: a search directory ({len(trials)} trials with checkpoints); "
                              f"name one trial's directory (its last checkpoint), e.g. {storage.join(path, trials[0])}")
    raise CheckpointError(f"checkpoint {path}: a directory holding no checkpoint; expected a .pt file, a Tune "
                          f"checkpoint directory (with {TUNE_CHECKPOINT_FILE}) or a trial directory holding them")


def _read_local(path: Path, shown: str) -> dict[str, Any]:
    """``read_checkpoint`` of a local file or checkpoint directory; messages name ``shown``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file: {shown}")
    with open(path, "rb") as f:
        head = f.read(262)
    if not head.startswith((b"PK\x03\x04", b"\x80")) and head[257:262] != b"ustar":   # zip, pickle, old tar
        raise CheckpointError(f"checkpoint {shown}: not a PyTorch checkpoint (neither a zip archive nor a "
                              f"pickle); {_ACCEPTED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"checkpoint {shown}: refused: it is not weights-only (it would run "
                                  f"code or load objects other than tensors): {_unsafe_reason(e)}") from None
        raise CheckpointError(f"checkpoint {shown}: not a PyTorch checkpoint ({first}); {_ACCEPTED}") from None
    except Exception as e:  # torch raises many kinds on damaged files (KeyError, EOFError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {shown}: unreadable or truncated ({msg}); {_ACCEPTED}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {shown}: expected a dict with a state_dict, got {type(obj).__name__}")
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


_GATE_MODULE = re.compile(r"group\d+_gate\d+\.([^.]+)\.")


def checkpoint_gate_kind(source: str | os.PathLike | Mapping[str, Any]) -> GateKind | None:
    """The kind of gates a checkpoint holds; None for a plain ResNet (no gates).

    ``source`` is a checkpoint path, a checkpoint as ``read_checkpoint`` returns it (ours or the
    authors'), or a bare ``state_dict``. Ours record the kind (``info.gate``); otherwise it is
    read off the authors' key layout (a ``module.`` prefix is ignored):

    * ``control.*`` (the shared LSTM) -> ``recurrent``;
    * ``group{g}_gate{i}.conv2.*`` -> ``feedforward_conv`` (FFGate-I);
    * ``group{g}_gate{i}.conv1.*`` without ``conv2`` -> ``feedforward_fc`` (FFGate-II);
    * ``group{g}_gate{i}.1.*`` alone (per-block embeddings without the LSTM) -> ``recurrent``;
    * no gate keys -> None.
    """
    ckpt = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if ckpt.get("format") == FORMAT:
        info = ckpt.get("info")
        if isinstance(info, Mapping) and "gate" in info:
            try:
                return None if info["gate"] in (None, "none") else parse_gate_kind(info["gate"])
            except ValueError:          # an unknown recorded name: fall back to the keys
                pass
        state = ckpt.get("model", {})
    elif is_authors_layout(ckpt):
        state = ckpt["state_dict"]
    else:
        state = ckpt
    keys = [k[len("module."):] if k.startswith("module.") else k for k in map(str, state)]
    if any(k.startswith("control.") for k in keys):
        return GateKind.RECURRENT
    parts = {m.group(1) for m in map(_GATE_MODULE.match, keys) if m}
    if "conv2" in parts:
        return GateKind.FEEDFORWARD_CONV
    if "conv1" in parts:
        return GateKind.FEEDFORWARD_FC
    if "1" in parts:
        return GateKind.RECURRENT
    return None


def recorded_model(ckpt: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """What network a checkpoint holds, as ``create_model(arch, **overrides)`` rebuilds it.

    The one place that reads a file's architecture and gates: ours record both (``info.arch``,
    ``info.gate``; a training checkpoint's ``config`` adds ``model.gate_norm``), so a model whose
    config overrode ``model.gate`` comes back with those gates whatever its architecture's name
    says; the authors' files give ``arch`` when they hold it and their gates' key layout.
    ``arch`` is None when the file records none (then the caller must name one).
    """
    info = ckpt.get("info") if ckpt.get("format") == FORMAT else None
    info = info if isinstance(info, Mapping) else {}
    model_cfg = (ckpt.get("config") or {}).get("model") or {}
    arch = info.get("arch") or model_cfg.get("arch") or (ckpt.get("arch") if is_authors_layout(ckpt) else None)
    kind = checkpoint_gate_kind(ckpt)
    overrides: dict[str, Any] = {"gate": "none" if kind is None else kind.value}
    if isinstance(model_cfg.get("gate_norm"), bool):
        overrides["gate_norm"] = model_cfg["gate_norm"]
    return (arch if isinstance(arch, str) else None), overrides


def _gates(kind: GateKind | None) -> str:
    return "no gates (a plain ResNet)" if kind is None else f"{kind.value} gates"


def _check_gate_kind(model: nn.Module, ckpt: dict[str, Any], where: str) -> None:
    """One-line ``CheckpointError`` naming both gate types when the file's differ from ``model``'s."""
    if not hasattr(model, "gate_spec"):              # not a SkipResNet: the key check decides
        return
    spec = model.gate_spec
    ours = None if spec is None else spec.kind
    theirs = checkpoint_gate_kind(ckpt)
    if theirs == ours:
        return
    arch = getattr(model, "arch", type(model).__name__)
    if ours is None:
        hint = f"use an architecture with {theirs.value} gates or a checkpoint of a plain ResNet"
    elif theirs is None:
        hint = f"use an SP checkpoint of {ours.value} gates"
    else:
        hint = f"set model.gate to {theirs.value} or use an SP checkpoint of {ours.value} gates"
    raise CheckpointError(f"checkpoint {where} does not match {arch}: the checkpoint holds {_gates(theirs)}, "
                          f"the model has {_gates(ours)}: {hint}")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                    checkpoint: Mapping[str, Any] | None = None) -> CheckpointInfo:
    """Load weights into ``model`` from one of our checkpoints or one of the authors' files.

    Checks keys and shapes (the architecture's name may differ: an SP checkpoint loads into
    the HRL variant of the same network); any mismatch is a one-line ``CheckpointError``
    naming the recorded architecture and what did not match -- with ``strict``, gates of
    another type than the model's are named as such (``checkpoint_gate_kind``).
    ``path`` may be a storage URI (``read_checkpoint``); ``checkpoint``: the file as
    ``read_checkpoint`` already returned it, not read (or fetched) again, ``path`` naming it.
    """
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    if ckpt.get("format") == FORMAT:
        info = CheckpointInfo(**ckpt["info"])
        if strict:
            _check_gate_kind(model, ckpt, f"{path} (architecture {info.arch!r})")
        state = ckpt["model"]
    elif is_authors_layout(ckpt):
        if strict:
            arch = ckpt.get("arch")
            _check_gate_kind(model, ckpt, f"{path} (the authors' architecture {arch!r})"
                             if isinstance(arch, str) else f"{path} (the authors' layout)")
        state = authors_to_ours(ckpt["state_dict"], model)
        info = CheckpointInfo.of(model, source="authors")
        if "best_prec1" in ckpt:
            info.metrics["best_prec1"] = float(ckpt["best_prec1"])
    else:
        keys = ", ".join(sorted(map(str, ckpt))[:6])
        raise CheckpointError(f"checkpoint {path}: no 'model' or 'state_dict' entry (keys: {keys}); {_ACCEPTED}")
    state = with_identity_embedding_norm(state, model)
    _check_compatible(model, state, f"{path} (architecture {info.arch!r})", strict)
    model.load_state_dict(state, strict=strict)
    return info


_EMBED_NORM = re.compile(r"(group\d+_gate\d+)\.2\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def with_identity_embedding_norm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` plus an exact identity for each recurrent-gate embedding norm ``model`` has and
    ``state`` lacks (the authors' files, or ours trained with ``model.gate_norm: false``).

    The identity is weight 1, bias 0, running mean 0 and running variance ``1 - eps``, so that
    ``sqrt(var + eps)`` is exactly 1 and the model computes bit for bit what the checkpoint's did."""
    out = dict(state)
    for key, value in model.state_dict().items():
        match = _EMBED_NORM.search(key)
        if key in out or not match or f"{match.group(1)}.1.weight" not in out:
            continue
        norm = model.get_submodule(key.rsplit(".", 1)[0])
        fill = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0 - norm.eps,
                "num_batches_tracked": 0}[match.group(2)]
        out[key] = torch.full_like(value, fill)
    return out


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
