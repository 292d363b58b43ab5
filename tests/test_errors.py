"""Failures a user meets end in one line naming the cause, a non-zero status and no traceback.

An MLflow look-up that finds nothing names the URI; a tracking server that does not answer is
given up on within a bounded wait, named; a full disk names the file (or where the stage was
writing). The look-ups against a real ``mlflow server`` are in test_mlflow_server.py.
"""

from __future__ import annotations

import errno
import http.server
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from synthmri.cli import main

TINY = str(REPO / "tests" / "profiles" / "tiny.yaml")
#: Seconds the CLI may take to give up on a dead tracking server: the default wait (10 s) plus
#: the start of a Python that imports torch on a busy 2-core box.
UNREACHABLE_BOUND_S = 60.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SYNTHMRI_"))}
    return {**env, **extra}


@pytest.fixture
def no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MLflow or synthmri settings from outside; whatever the test (or MLflow) sets is undone."""
    import mlflow

    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "SYNTHMRI_"))] + [
            "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]:
        monkeypatch.setenv(key, "")  # set, then delete: the monkeypatch restores the state before
        monkeypatch.delenv(key)
    yield monkeypatch
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


# ------------------------------------------------------------------------- tracking server


def test_unreachable_tracking_server_fails_within_a_bound_naming_it(tmp_path: Path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    argv = [sys.executable, "-m", "synthmri", "generate", "--profile", TINY, "--generator",
            "models:/synthmri-ddpm@candidate", "--out", str(tmp_path / "synthetic")]
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=2 * UNREACHABLE_BOUND_S,
                                env=_clean_env(MLFLOW_TRACKING_URI=uri))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still retrying {uri} after {exc.timeout:.0f} s:\n{(exc.stderr or b'')[-2000:]!r}")
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert elapsed < UNREACHABLE_BOUND_S, f"took {elapsed:.0f} s"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("synthmri generate: error:")]
    assert len(errors) == 1 and uri in errors[0] and "Connection refused" in errors[0], result.stderr
    assert f"waiting for the MLflow tracking server at {uri}" in result.stderr  # said while it waited


def test_configure_sets_short_mlflow_retries_unless_the_user_set_them(no_tracking_env: pytest.MonkeyPatch):
    from synthmri.config import TrackingConfig
    from synthmri.tracking import WAIT_ENV, TrackingUnreachableError, configure

    no_tracking_env.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "5")  # the user's own
    no_tracking_env.setenv(WAIT_ENV, "0")  # one try
    uri = f"http://user:secret@127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnreachableError) as failure:
        configure(TrackingConfig(tracking_uri=uri))
    assert time.monotonic() - start < 5
    assert uri.replace(":secret@", ":***@") in str(failure.value) and "secret" not in str(failure.value)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "5"


def test_a_bad_wait_setting_is_named(no_tracking_env: pytest.MonkeyPatch):
    from synthmri.tracking import WAIT_ENV, wait_for_server

    no_tracking_env.setenv(WAIT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{WAIT_ENV} must be a number of seconds, got 'soon'"):
        wait_for_server(f"http://127.0.0.1:{_closed_port()}")


def test_a_server_that_comes_up_late_is_waited_for_and_announced(caplog: pytest.LogCaptureFixture):
    from synthmri.tracking import wait_for_server

    port = _closed_port()
    started: list[http.server.HTTPServer] = []

    def serve_later() -> None:
        time.sleep(3.0)
        server = http.server.HTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)  # 501s: an answer
        started.append(server)
        server.serve_forever(poll_interval=0.1)

    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="synthmri.tracking"):
            start = time.monotonic()
            wait_for_server(f"http://127.0.0.1:{port}", wait_s=30)
        assert 2.5 < time.monotonic() - start < 30
        assert f"waiting for the MLflow tracking server at http://127.0.0.1:{port}" in caplog.text
    finally:
        thread.join(timeout=10)
        for server in started:
            server.shutdown()
            server.server_close()


def test_a_request_that_finds_no_server_is_one_line_naming_it():
    from mlflow.exceptions import MlflowException

    from synthmri.cli import describe_mlflow_error

    url = "http://127.0.0.1:9/api/2.0/mlflow/experiments/get-by-name"
    exc = MlflowException(f"API request to {url} failed with exception HTTPConnectionPool(host='127.0.0.1', port=9): "
                          "Max retries exceeded with url: /api/2.0/mlflow/experiments/get-by-name (Caused by "
                          "NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish "
                          "a new connection: [Errno 111] Connection refused'))")
    assert describe_mlflow_error(exc, []) == f"MLflow request to {url} failed ([Errno 111] Connection refused)"


# ------------------------------------------------------------------------------ look-ups


@pytest.mark.parametrize("generator", ["models:/nope@candidate", "models:/nope/3"])
def test_unknown_registered_model_is_one_line_naming_the_uri(generator, mlflow_uri, tmp_path, capsys):
    code = main(["generate", "--profile", TINY, "--generator", generator, "--out", str(tmp_path / "synthetic")])
    err = capsys.readouterr().err  # MLflow logs its new database's tables there too
    errors = [line for line in err.splitlines() if line.startswith("synthmri generate: error:")]
    assert code == 1, err
    assert len(errors) == 1 and errors[0].startswith(f"synthmri generate: error: {generator}: "), err
    assert "nope" in errors[0] and mlflow_uri in errors[0] and "Traceback" not in err, err


# ------------------------------------------------------------------------------ full disk


def test_a_full_disk_names_where_the_stage_was_writing(tmp_path, monkeypatch, capsys):
    """A real ENOSPC (writes to /dev/full) without a file name: the message names the output."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    out = tmp_path / "cells.json"
    used = []

    def full_disk(*args, dir=None, **kwargs):  # every atomic write's temporary file is /dev/full
        used.append(dir)
        return os.open("/dev/full", os.O_WRONLY), str(Path(dir) / ".cells.json.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    code = main(["grid", "--archs", "unet", "--out", str(out)])
    err = capsys.readouterr().err
    assert used, "the stage wrote no file through tempfile.mkstemp; the test needs another way to fill the disk"
    assert code == 1, err
    assert err.startswith("synthmri grid: error: no space left on device") and str(out) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file(number, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cells.json"
    blocked = tmp_path / ".cells.json.tmp"

    def full_disk(*args, **kwargs):
        raise OSError(number, os.strerror(number), str(blocked))

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    code = main(["grid", "--archs", "unet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(f"synthmri grid: error: {blocked}: no space left on device"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
