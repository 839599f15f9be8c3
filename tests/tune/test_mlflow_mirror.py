"""The search's MLflow mirror against a server in trouble (a real HTTP server on loopback whose
``/health`` answers while its API returns 503, as a tracking server does when it stops or
fails during a call): the callback gives up within seconds and goes on, it does not sit in the
MLflow client's default back-off (7 retries, about 4 minutes per request)."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow.tracking import MlflowClient

from skipnet.tune.mlflow_callback import MLflowSearchCallback

SECONDS = 30          # the client's default back-off takes about 240 s for one request


class HealthyButFailing(BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        type(self).calls += 1
        self.send_response(503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def failing_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthyButFailing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    HealthyButFailing.calls = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_failing_during_a_call_costs_seconds_and_marks_mlflow_down(failing_server):
    callback = MLflowSearchCallback(failing_server, "mirror", "parent-run", {}, max_steps=1, search_path="/x")
    started = time.monotonic()
    callback._mirror("a result", lambda: MlflowClient(failing_server).get_experiment_by_name("mirror"))
    took = time.monotonic() - started
    assert took < SECONDS, f"the mirror waited {took:.0f} s on a failing server"
    assert HealthyButFailing.calls == 3                 # the call and two retries
    assert callback.missed == 1 and callback._offline_since is not None
    # down: the next event is counted as missed without a request (until the next probe)
    callback._mirror("another result", lambda: MlflowClient(failing_server).get_experiment_by_name("mirror"))
    assert callback.missed == 2 and HealthyButFailing.calls == 3
