"""Stage metrics reach a Pushgateway when one is configured, and nothing breaks when none is."""

from __future__ import annotations

import http.server
import threading

import pytest

from synthmri.monitoring import PUSHGATEWAY_ENV, StageMonitor


class _Recorder(http.server.BaseHTTPRequestHandler):
    pushes: list[tuple[str, str, str]] = []

    def do_PUT(self):  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8", "replace")
        _Recorder.pushes.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.pushes = []
    monkeypatch.setenv(PUSHGATEWAY_ENV, f"127.0.0.1:{server.server_port}")
    yield _Recorder.pushes
    server.shutdown()


def test_metrics_are_pushed_with_stage_grouping(gateway):
    with StageMonitor("prepare", unit="subjects", total=4, push_every=0) as monitor:
        monitor.progress(2)
        monitor.loss("mse", 0.25)
    assert gateway, "nothing was pushed"
    _, path, body = gateway[-1]
    assert path.startswith("/metrics/job/synthmri/") and "/stage/prepare" in path and "/instance/local" in path
    assert 'synthmri_progress_items{stage="prepare",unit="subjects"} 2.0' in body
    assert 'synthmri_progress_ratio{stage="prepare"} 1.0' in body
    assert 'synthmri_loss{name="mse",stage="prepare"} 0.25' in body
    assert "synthmri_stage_last_success_unixtime" in body


def test_failures_are_counted_and_reraised(gateway):
    with pytest.raises(RuntimeError):
        with StageMonitor("generate", push_every=0):
            raise RuntimeError("boom")
    assert 'synthmri_stage_failures_total{stage="generate"} 1.0' in gateway[-1][2]


def test_no_gateway_is_a_no_op(monkeypatch):
    monkeypatch.delenv(PUSHGATEWAY_ENV, raising=False)
    with StageMonitor("phantom", push_every=0) as monitor:
        monitor.progress(1, total=1)
    assert monitor.gateway is None


def test_unreachable_gateway_never_fails_the_stage(monkeypatch, caplog):
    monkeypatch.setenv(PUSHGATEWAY_ENV, "127.0.0.1:9")  # discard port: connection refused
    with StageMonitor("phantom", push_every=0) as monitor:
        monitor.progress(1)
    assert "could not push metrics" in caplog.text
