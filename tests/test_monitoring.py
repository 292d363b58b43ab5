"""Stage metrics reach a Pushgateway when one is configured, and nothing breaks when none is."""

from __future__ import annotations

import http.server
import io
import logging
import sys
import threading

import pytest

from synthmri.monitoring import PUSHGATEWAY_ENV, RUN_INSTANCE_ENV, StageMonitor, monitored


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


def _group(path: str) -> dict[str, str]:
    """The grouping key of a push path: /metrics/job/<job>/<label>/<value>/..."""
    parts = path.split("/")[2:]
    return dict(zip(parts[::2], parts[1::2]))


@pytest.fixture
def gateway(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.pushes = []
    monkeypatch.delenv(RUN_INSTANCE_ENV, raising=False)
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


def test_pushes_add_to_the_group_and_a_success_reports_zero_failures(gateway):
    with StageMonitor("phantom", unit="subjects", total=2, push_every=0) as monitor:
        monitor.progress(2)
    method, _, body = gateway[-1]
    assert method == "POST"  # pushadd: a later failed run keeps this run's last-success time
    assert 'synthmri_stage_failures_total{stage="phantom"} 0.0' in body


def test_a_failed_run_replaces_progress_but_sends_no_success_time(gateway):
    with pytest.raises(OSError):
        with StageMonitor("phantom", unit="subjects", total=3, push_every=0):
            raise OSError("disk full")
    body = gateway[-1][2]
    assert 'synthmri_progress_items{stage="phantom",unit="subjects"} 0.0' in body
    assert 'synthmri_progress_ratio{stage="phantom"} 0.0' in body
    assert 'synthmri_stage_failures_total{stage="phantom"} 1.0' in body
    assert "synthmri_stage_last_success_unixtime{" not in body


def test_success_without_a_known_total_still_reports_ratio_one(gateway):
    with StageMonitor("generate", push_every=0) as monitor:
        monitor.progress(5)
    assert 'synthmri_progress_ratio{stage="generate"} 1.0' in gateway[-1][2]


def test_parallel_runs_are_separated_by_the_run_instance_env(gateway, monkeypatch):
    for name in ("ddpm", "stylegan"):
        monkeypatch.setenv(RUN_INSTANCE_ENV, name)
        with StageMonitor("train-generator", push_every=0):
            pass
    groups = [_group(path) for _, path, _ in gateway]
    assert {"job": "synthmri", "stage": "train-generator", "instance": "ddpm"} in groups, groups
    assert {"job": "synthmri", "stage": "train-generator", "instance": "stylegan"} in groups, groups


def test_an_explicit_instance_wins_over_the_env(gateway, monkeypatch):
    monkeypatch.setenv(RUN_INSTANCE_ENV, "pod")
    with StageMonitor("train-segmenter", instance="unet-real-0", push_every=0):
        pass
    assert _group(gateway[-1][1])["instance"] == "unet-real-0"


def test_monitored_decorator_wraps_a_stage_function(gateway):
    @monitored("promote", unit="decisions", instance_arg="model")
    def gate(model, version="candidate"):
        """Docstring kept."""
        if version == "bad":
            raise ValueError("no such version")
        return f"{model}:{version}"

    assert gate("ddpm") == "ddpm:candidate" and gate.__doc__ == "Docstring kept."
    _, path, body = gateway[-1]
    assert _group(path) == {"job": "synthmri", "stage": "promote", "instance": "ddpm"}
    assert 'synthmri_progress_items{stage="promote",unit="decisions"} 1.0' in body
    assert 'synthmri_stage_failures_total{stage="promote"} 0.0' in body
    with pytest.raises(ValueError, match="no such version"):
        gate(version="bad", model="stylegan")
    _, path, body = gateway[-1]
    assert _group(path)["instance"] == "stylegan"
    assert 'synthmri_stage_failures_total{stage="promote"} 1.0' in body


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_progress_bar_and_logs_get_lines(monkeypatch, caplog):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv(PUSHGATEWAY_ENV, raising=False)
    with StageMonitor("prepare", unit="subjects", total=4, push_every=0) as monitor:
        monitor._last_draw = -1.0
        monitor.progress(1)
    drawn = terminal.getvalue()
    assert "prepare [" in drawn and "] 1/4 subjects" in drawn and "subjects/s" in drawn
    assert drawn.endswith("\n")
    assert not [r for r in caplog.records if "1/4 subjects" in r.getMessage()]  # the bar replaces log lines

    plain = io.StringIO()  # not a terminal: no bar, a log line instead
    monkeypatch.setattr(sys, "stderr", plain)
    with caplog.at_level(logging.INFO, logger="synthmri.monitoring"):
        with StageMonitor("prepare", unit="subjects", total=4, push_every=0) as monitor:
            monitor.progress(2)
    assert plain.getvalue() == ""
    assert any("prepare: 2/4 subjects" in r.getMessage() for r in caplog.records)
    # One line when the stage ends, with its count and rate.
    assert any(r.getMessage().startswith("prepare finished: 2 subjects in ") and "subjects/s)" in r.getMessage()
               for r in caplog.records)
