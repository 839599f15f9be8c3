"""Tune's per-trial result files (``result.json``, ``progress.csv``) without lost rows.

When a trial restarts from a checkpoint (a PBT pause or exploit, a retry after a failure), Ray's
JSON and CSV loggers first copy the file from the storage path over the driver's own copy. The
storage copy is synced only now and then, so the rows reported since the last sync were lost:
a PBT trial's ``result.json`` read steps 1, 2, 4. These loggers copy from storage only when the
driver has no copy of its own (a search resumed on another machine).
"""
from __future__ import annotations

from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


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
