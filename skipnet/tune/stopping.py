"""A search stopped on purpose: Ctrl-C, SIGTERM (``skipnet stop JOB``, a scheduler's kill), or
Tune's own interrupt. Its MLflow parent run and its running trial runs end ``KILLED`` at once,
Tune saves the search's state, and the driver exits with ``128 + signal`` and the resume command;
``skipnet resume`` reopens the runs it continues. A second signal stops the driver at once.

Tune turns SIGINT (and SIGUSR1) into a graceful stop itself, but its callbacks cannot tell a
stopped search from a finished one, and SIGTERM would end the driver on the spot. So
``on_stop_signals`` handles both. The handler itself raises nothing and waits for nothing: Python
runs it wherever the main thread is, often inside Ray's own code (``ray.wait`` checks for
signals from Cython, which turns any exception but ``KeyboardInterrupt`` and ``SystemExit`` into
``SystemError: ... returned a result with an exception set``), or inside Tune's loop, which logs
an exception and carries on. The first signal notes the stop, ends the MLflow runs in a thread
and asks Tune for its graceful stop (SIGUSR1, when a ``fit`` runs; between phases the runner's
``check`` stops the search before its next phase, and a ``fit`` starting meanwhile is asked by
``forward_to_tune`` from its callbacks' ``setup``). The second one ends the runs ``KILLED`` (again:
the first may still be at it), lets the runner record what the search cost (``before_exit``),
prints one line and exits with ``128 + signal`` on the spot (``os._exit``: a local Ray's GCS and
raylet are fate-shared with the driver, its workers and agents follow once they notice; a
cluster drops the job's actors). Ending the runs takes a few requests: a
Ray job is SIGKILLed some seconds after its SIGTERM (``RAY_JOB_STOP_WAIT_TIME_S``, which
``skipnet submit`` raises).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager

from skipnet.errors import SkipNetError

log = logging.getLogger(__name__)
_stopped: dict[str, int | None] = {"signum": None}


#: What the one line printed by a second signal starts with (``skipnet.cli`` names the command).
PROGRAM = {"name": "skipnet"}
STOP_NOW_S = 10.0                        # a second signal waits at most this long for the bookkeeping
STOP_WAIT_S = 30.0                       # leaving on_stop_signals waits at most this for the first's


class SearchInterrupted(SkipNetError):
    """The search stopped before its trials finished; its state is saved for ``skipnet resume``."""

    def __init__(self, path: str, signum: int, *, at_once: bool = False) -> None:
        self.path, self.signum = path, signum
        how = f"at once by a second {signal.Signals(signum).name}" if at_once else f"by {signal.Signals(signum).name}"
        super().__init__(f"stopped {how}; MLflow runs marked KILLED; continue with: skipnet resume {path}")


def interrupted() -> int | None:
    """The signal that stopped the search in this process, or None."""
    return _stopped["signum"]


def note_interrupt(signum: int) -> None:
    """Record that the search was stopped (Tune's callbacks read it at the experiment's end)."""
    if _stopped["signum"] is None:
        _stopped["signum"] = signum


def check(path: str) -> None:
    """Between phases and after a ``fit``: raise ``SearchInterrupted`` if the search was stopped."""
    if interrupted() is not None:
        raise SearchInterrupted(path, interrupted())


def forward_to_tune() -> None:
    """A ``fit`` starting after the stop (Tune's SIGUSR1 handler is now its own): ask it to stop."""
    if interrupted() is not None and threading.current_thread() is threading.main_thread() \
            and callable(signal.getsignal(signal.SIGUSR1)):
        os.kill(os.getpid(), signal.SIGUSR1)


def end_killed(tracker, probe: bool = True) -> bool:
    """The parent run and its running child runs, ended ``KILLED`` now (True); MLflow down (a
    2-second probe first, unless ``probe`` is off): logged, skipped."""
    if tracker is None:
        return False
    try:
        from skipnet.tracking.runs import brief_retries, server_reachable
        if probe and not server_reachable(tracker.uri, timeout=2.0):
            raise ConnectionError(f"no answer from {tracker.uri}")
        with brief_retries():
            for run in tracker.children():
                if run.info.status == "RUNNING":
                    tracker.client.set_terminated(run.info.run_id, status="KILLED")
            tracker.end_search("KILLED")
        return True
    except Exception as e:                   # the search's state is saved either way
        log.warning("could not mark the search's MLflow runs KILLED (%s); skipnet sync-mlflow can later", e)
        return False


@contextmanager
def on_stop_signals(tracker, path: str, before_exit: Callable[[], None] | None = None):
    """Within: SIGINT and SIGTERM end the MLflow runs KILLED and stop Tune gracefully; a second
    one calls ``before_exit``, prints one line and exits ``128 + signal`` at once. On leaving, a
    stopped search raises ``SearchInterrupted``. Only in the main thread (signals need it);
    Tune's own SIGINT handler is off meanwhile, this one replaces it."""
    _stopped["signum"] = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ending: list[threading.Thread] = []              # the first signal's thread ending the MLflow runs
    ended: list[bool] = []                           # ... and whether it reached MLflow

    def end_runs() -> None:
        ended.append(end_killed(tracker))

    def stop_now(signum: int) -> None:
        def bookkeeping():
            for thread in ending:
                thread.join(STOP_NOW_S)
            end_killed(tracker, probe=not any(ended))    # a trial's run reopened since the first one
            if before_exit is not None:
                before_exit()
        worker = threading.Thread(target=bookkeeping, name="skipnet-stop-now", daemon=True)
        worker.start()
        worker.join(STOP_NOW_S)                          # locks the interrupted code holds cannot hang the exit
        try:
            sys.stdout.flush()
            sys.stderr.write(f"{PROGRAM['name']}: {SearchInterrupted(path, signum, at_once=True)}\n")
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)

    def on_signal(signum, frame):
        if interrupted() is not None:                    # the second one: stop now
            stop_now(signum)
        note_interrupt(signum)
        thread = threading.Thread(target=end_runs, name="skipnet-stop", daemon=True)
        ending.append(thread)
        thread.start()
        if callable(signal.getsignal(signal.SIGUSR1)):   # a fit's Tune handler (or a past fit's: harmless)
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        for thread in ending:                            # the runs KILLED before the driver says so
            thread.join(STOP_WAIT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler
    check(path)
