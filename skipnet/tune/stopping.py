"""A search stopped on purpose: Ctrl-C, SIGTERM (``skipnet stop JOB``, a scheduler's kill), or
Tune's own interrupt. Its MLflow parent run and its running trial runs end ``KILLED`` at once,
Tune saves the search's state, and the driver exits with ``128 + signal`` and the resume command;
``skipnet resume`` reopens the runs it continues.

Tune turns SIGINT (and SIGUSR1) into a graceful stop itself, but its callbacks cannot tell a
stopped search from a finished one, and SIGTERM would end the driver on the spot. So
``on_stop_signals`` handles both: it notes the stop, ends the MLflow runs, then asks for Tune's
graceful stop (SIGUSR1 while a ``fit`` runs). Ending the runs takes a few requests: a Ray job
is SIGKILLed some seconds after its SIGTERM (``RAY_JOB_STOP_WAIT_TIME_S``, which ``skipnet
submit`` raises).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager

from skipnet.errors import SkipNetError

log = logging.getLogger(__name__)
_stopped: dict[str, int | None] = {"signum": None}


class SearchInterrupted(SkipNetError):
    """The search stopped before its trials finished; its state is saved for ``skipnet resume``."""

    def __init__(self, path: str, signum: int) -> None:
        self.path, self.signum = path, signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; MLflow runs marked KILLED; "
                         f"continue with: skipnet resume {path}")


def interrupted() -> int | None:
    """The signal that stopped the search in this process, or None."""
    return _stopped["signum"]


def note_interrupt(signum: int) -> None:
    """Record that the search was stopped (Tune's callbacks read it at the experiment's end)."""
    if _stopped["signum"] is None:
        _stopped["signum"] = signum


def check(path: str) -> None:
    """After a ``fit``: raise ``SearchInterrupted`` if the search was stopped meanwhile."""
    if interrupted() is not None:
        raise SearchInterrupted(path, interrupted())


def end_killed(tracker) -> None:
    """The parent run and its running child runs, ended ``KILLED`` now; MLflow down: logged, skipped."""
    if tracker is None:
        return
    try:
        from skipnet.tracking import server_reachable
        if not server_reachable(tracker.uri, timeout=2.0):
            raise ConnectionError(f"no answer from {tracker.uri}")
        for run in tracker.children():
            if run.info.status == "RUNNING":
                tracker.client.set_terminated(run.info.run_id, status="KILLED")
        tracker.end_search("KILLED")
    except Exception as e:                   # the search's state is saved either way
        log.warning("could not mark the search's MLflow runs KILLED (%s); skipnet sync-mlflow can later", e)


@contextmanager
def on_stop_signals(tracker, path: str):
    """Within: SIGINT and SIGTERM end the MLflow runs KILLED and stop Tune gracefully (a second
    one stops at once); on leaving, a stopped search raises ``SearchInterrupted``. Only in the
    main thread (signals need it); Tune's own SIGINT handler is off meanwhile, this one replaces it."""
    _stopped["signum"] = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        if interrupted() is not None:                    # the second one: stop now
            raise SearchInterrupted(path, signum)
        note_interrupt(signum)
        end_killed(tracker)
        if callable(signal.getsignal(signal.SIGUSR1)):   # Tune's fit is running: its graceful stop
            os.kill(os.getpid(), signal.SIGUSR1)
        else:                                            # between phases: stop here
            raise SearchInterrupted(path, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler
    check(path)
