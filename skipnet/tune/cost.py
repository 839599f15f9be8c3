"""What a search costs, added up over its parts: the run that started it and every resume.

The one writer of the cost. The part running in this process (``start_part``) counts the
training iterations of every result its driver receives, by stage (``count``, called by the
MLflow callback of each phase; a step redone after a restore counts again, since it was paid
again), and its own wall time. It keeps them as its entry of the ``cost`` list in the search's
``skipnet_search.json``: rewritten at most every ``FLUSH_S`` seconds while results arrive (a
driver killed outright loses at most that much) and when the part ends: finished, stopped
(Ctrl-C, SIGTERM, a second one included: ``skipnet.tune.stopping``) or failed. When it ends, the
parent run's metrics ``search_sp_iterations``, ``search_hrl_iterations``, ``search_iterations``
and ``search_wall_time_s`` are logged as the sums over every part's entry.

A part that trained nothing after a finished part (a resume of a finished search) writes
nothing, so MLflow stays as it was. Tune's stored results are no ledger of what was paid: a trial
that restarts without a checkpoint (a PBT member stopped before its first perturbation) has its
``result.json`` rewritten from its first step, and the rows reported since Tune's last sync are
not stored when the driver stops at once; ``runner.search_cost`` reads what they hold.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from skipnet.core import storage

log = logging.getLogger(__name__)
SEARCH_FILE = "skipnet_search.json"
FLUSH_S = 10.0                          # the ledger's entry of a running part, rewritten at most this often
METRICS = ("search_sp_iterations", "search_hrl_iterations", "search_iterations", "search_wall_time_s")


class Part:
    """One part of a search (a run or a resume), from ``start_part`` to ``end``."""

    def __init__(self, path: str, parent_run_id: str, tracking_uri: str, clock=time.monotonic) -> None:
        self.path, self.parent_run_id, self.tracking_uri, self.clock = path, parent_run_id, tracking_uri, clock
        self.started, self.started_at = clock(), datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.iterations = {"sp": 0.0, "hrl": 0.0}
        self.ended: str | None = None
        self._flushed = self.started
        try:
            self.meta: dict[str, Any] | None = json.loads(storage.read_text(storage.join(path, SEARCH_FILE)))
        except Exception as e:                        # bookkeeping never fails a search
            log.warning("the search's cost is not recorded: %s unreadable (%s)", SEARCH_FILE, e)
            self.meta = None
        self.previous = list(((self.meta or {}).get("cost") or {}).get("parts") or [])

    def count(self, result: dict[str, Any]) -> None:
        """Add a result's ``iterations_trained`` to this part (its stage: ``hrl``, else ``sp``)."""
        if self.ended is not None:
            return
        stage = "hrl" if result.get("stage") == "hrl" else "sp"
        try:
            self.iterations[stage] += float(result.get("iterations_trained", 0) or 0)
        except (TypeError, ValueError):
            return
        if self.clock() - self._flushed >= FLUSH_S:
            self.flush("running")

    def entry(self, ended: str) -> dict[str, Any]:
        return {"started": self.started_at, "ended": ended, "wall_time_s": round(self.clock() - self.started, 3),
                "sp_iterations": self.iterations["sp"], "hrl_iterations": self.iterations["hrl"]}

    def parts(self, ended: str) -> list[dict[str, Any]]:
        return [*self.previous, self.entry(ended)]

    def totals(self, ended: str = "running") -> dict[str, float]:
        """The search's cost so far: every earlier part's entry plus this one's."""
        parts = self.parts(ended)
        sp = sum(float(p.get("sp_iterations", 0)) for p in parts)
        hrl = sum(float(p.get("hrl_iterations", 0)) for p in parts)
        return {"search_sp_iterations": sp, "search_hrl_iterations": hrl, "search_iterations": sp + hrl,
                "search_wall_time_s": sum(float(p.get("wall_time_s", 0)) for p in parts)}

    def adds_nothing(self) -> bool:
        """Trained nothing after a finished part, or before any part: a resume of a finished search."""
        trained = self.iterations["sp"] or self.iterations["hrl"]
        return not trained and (not self.previous or self.previous[-1].get("ended") == "finished")

    def flush(self, ended: str) -> None:
        """This part's entry into ``skipnet_search.json`` (written whole, as ``storage.write_text`` does)."""
        self._flushed = self.clock()
        if self.meta is None:
            return
        meta = dict(self.meta, cost={"parts": self.parts(ended)})
        try:
            storage.write_text(storage.join(self.path, SEARCH_FILE), json.dumps(meta, indent=2))
        except Exception as e:                        # bookkeeping never fails a search
            log.warning("could not record the search's cost in %s (%s)", SEARCH_FILE, e)

    def end(self, ended: str) -> None:
        """The part's last entry, and the search's totals on its MLflow parent run. Once (a second
        Ctrl-C that interrupts it ends the part again, as ``stopped``: the same sums)."""
        if self.ended is not None:
            return
        if self.adds_nothing():
            self.ended = ended
            return
        totals = self.totals(ended)
        self.flush(ended)
        self.ended = ended
        self._log(totals)

    def _log(self, totals: dict[str, float]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        from skipnet.tracking.runs import brief_retries, server_reachable
        try:
            if not server_reachable(self.tracking_uri, timeout=2.0):
                raise ConnectionError(f"no answer from {self.tracking_uri}")
            now = int(time.time() * 1000)
            with brief_retries():
                MlflowClient(tracking_uri=self.tracking_uri).log_batch(
                    self.parent_run_id, metrics=[Metric(k, float(totals[k]), now, 0) for k in METRICS])
        except Exception as e:                        # the ledger has it; the next part logs the sums again
            log.warning("could not log the search's cost to MLflow (%s); %s holds it", e, SEARCH_FILE)


def last_part_ended(meta: dict[str, Any]) -> str | None:
    """How the last part in a search's ``skipnet_search.json`` (``meta``) ended: ``finished``,
    ``stopped``, ``failed``, ``running`` (its driver was killed outright), or None before any."""
    parts = (meta.get("cost") or {}).get("parts") or []
    return parts[-1].get("ended") if parts else None


_current: dict[str, Part | None] = {"part": None}


def start_part(path: str, parent_run_id: str, tracking_uri: str) -> Part:
    """The part of the search this process runs from now on (what ``count`` adds to)."""
    _current["part"] = Part(path, parent_run_id, tracking_uri)
    return _current["part"]


def count(result: dict[str, Any]) -> None:
    """Add a result the driver received to the running part, if any (never raises)."""
    part = _current["part"]
    if part is not None:
        try:
            part.count(result)
        except Exception as e:                        # bookkeeping never fails a search
            log.warning("the search's cost left a result out (%s)", e)


def end_part(ended: str) -> None:
    """End the running part, if any, as ``ended`` (``finished``, ``stopped``, ``failed``)."""
    part = _current["part"]
    if part is not None:
        part.end(ended)
        _current["part"] = None
