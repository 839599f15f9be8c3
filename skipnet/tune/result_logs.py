"""Tune's per-trial result files (``result.json``, ``progress.csv``) without lost rows, and
reading a trial's directory back (its results, last checkpoint and error time: ``skipnet.tune.sync``).

When a trial restarts from a checkpoint (a PBT pause or exploit, a retry after a failure), Ray's
JSON and CSV loggers first copy the file from the storage path over the driver's own copy. The
storage copy is synced only now and then, so the rows reported since the last sync were lost:
a PBT trial's ``result.json`` read steps 1, 2, 4. These loggers copy from storage only when the
driver has no copy of its own (a search resumed on another machine).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from skipnet.core import storage


class _KeepLocalCopy:
    def _restore_from_remote(self, file_name: str, trial) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class JsonResults(_KeepLocalCopy, JsonLoggerCallback):
    """``result.json``, one JSON line per result."""


class CsvResults(_KeepLocalCopy, CSVLoggerCallback):
    """``progress.csv``, one row per result."""


def result_loggers() -> list:
    """Use in place of Tune's default JSON and CSV loggers (Tune adds neither once these are given)."""
    return [JsonResults(), CsvResults()]


def trial_results(trial_dir: str) -> list[dict[str, Any]]:
    """The trial's reports in order, first occurrence of each step (as the callback logs them)."""
    results, seen = [], set()
    try:
        text = storage.read_text(storage.join(trial_dir, "result.json"))
    except FileNotFoundError:
        text = ""                                     # no report yet
    for line in text.splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue                                  # a line cut by a crash
        step = result.get("training_iteration")
        if step not in seen:
            seen.add(step)
            results.append(result)
    return results


def last_checkpoint(trial_dir: str) -> str | None:
    """The trial's latest checkpoint directory (path or URI), or None."""
    checkpoints = [name for name in storage.list_dir(trial_dir) if name.startswith("checkpoint_")]
    return storage.join(trial_dir, max(checkpoints)) if checkpoints else None


def error_time(trial_dir: str) -> float | None:
    """When Tune wrote the trial's ``error.txt`` (seconds since the epoch), or None."""
    return storage.mtime(storage.join(trial_dir, "error.txt"))
