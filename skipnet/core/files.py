"""Atomic text writes (exports, configs, search metadata): the file appears whole or not at all.

Kept apart from the training code so that commands which only write YAML or JSON (``skipnet
export``) do not import torch for it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
