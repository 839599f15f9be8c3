"""Which authentication a Ray cluster asks for, and putting this process in that mode.

Ray 2.60 turns token authentication on for a cluster that ``ray.init()`` starts locally, and
for a head that ``ray start --head`` starts where a token already exists (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) or ``RAY_AUTH_MODE=token`` is set; a plain
``ray start --head`` on a fresh machine runs without. A client must match: one without token
mode is refused by a token cluster (after ~30 s of retries, in a misleading error), and the
Jobs SDK in token mode refuses to run without a token even against a cluster that needs none.
So the CLI asks the cluster first (the Jobs API's ``/api/authentication_mode``, or one GCS
call that a token cluster refuses in milliseconds) and sets ``RAY_AUTH_MODE`` to match before
Ray connects; a mode the user set is kept. Nothing here imports ray at module import.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from skipnet.errors import SkipNetError

MODE_VAR = "RAY_AUTH_MODE"
NO_TOKEN = ("set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or copy the head's ~/.ray/auth_token "
            "(ray get-auth-token on the head prints it)")


def token() -> str | None:
    """The cluster token as Ray's own client finds it: ``RAY_AUTH_TOKEN``, the file named by
    ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (where ``ray start`` writes it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def set_mode(mode: str) -> None:
    """Put this process (and the processes it starts) in ``mode`` (``token`` or ``disabled``);
    refreshes Ray's cached config when ray is already imported."""
    os.environ[MODE_VAR] = mode
    import sys
    if "ray" in sys.modules:
        from ray._raylet import Config
        Config.initialize("")


def dashboard_mode(address: str, timeout: float = 10.0) -> str | None:
    """The mode the dashboard at ``address`` reports (``token``/``disabled``); None if it cannot say
    (an older Ray, a proxy): the caller then keeps its default."""
    try:
        with urllib.request.urlopen(address.rstrip("/") + "/api/authentication_mode", timeout=timeout) as r:
            return str(json.loads(r.read() or b"{}").get("authentication_mode") or "") or None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def match_dashboard(address: str) -> None:
    """Before the Jobs SDK talks to ``address``: token mode where the cluster asks for a token
    (one line if none is found here), disabled where it does not."""
    if os.environ.get(MODE_VAR):
        return
    mode = dashboard_mode(address)
    if mode == "token" and token() is None:
        raise SkipNetError(f"--address: the cluster at {address} requires token authentication and no token "
                           f"was found here: {NO_TOKEN}")
    set_mode("disabled" if mode == "disabled" else "token")


def match_gcs(address: str) -> None:
    """Before ``ray.init(address)``: one GCS call in the current mode. A token cluster refuses it
    at once when this process is not in token mode: token mode is then turned on if a token is
    found here. Anything the cluster still refuses becomes one line saying how to fix it."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    def probe() -> None:
        with _quiet_stderr():                        # the GCS client logs its refusal in C++ too
            GcsClient(address=address).internal_kv_get(b"dashboard", namespace=b"dashboard", timeout=5)
    try:
        try:
            probe()
        except AuthenticationError:
            mode = os.environ.get(MODE_VAR, "")
            if mode.lower() == "token":
                raise
            if mode:                                 # the user chose disabled: say what the cluster wants
                raise SkipNetError(f"--address: the cluster at {address} requires token authentication, "
                                   f"but {MODE_VAR}={mode}: unset it or set {MODE_VAR}=token") from None
            if token() is None:
                raise SkipNetError(f"--address: the cluster at {address} requires token authentication and no "
                                   f"token was found here: {NO_TOKEN}") from None
            set_mode("token")
            probe()
    except AuthenticationError:
        raise SkipNetError(f"--address: the cluster at {address} refused this token: use the head's token "
                           "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)") from None
    except SkipNetError:
        raise
    except Exception:                                # unreachable or slow: ray.init reports it in its own words
        return


class _quiet_stderr:
    """Send file descriptor 2 to /dev/null for a moment (Ray's C++ logs bypass Python)."""

    def __enter__(self):
        import sys
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
