"""Real stages push to a real Pushgateway, and Prometheus reads their metrics back through PromQL.

Starts Debian's ``prometheus-pushgateway`` and ``prometheus`` on 127.0.0.1 (free ports, temp
storage), scraping the gateway every second with ``honor_labels``, then runs ``synthmri``
verbs as subprocesses with ``$SYNTHMRI_PUSHGATEWAY`` set. ``.ci/run`` installs both binaries;
without them the tests skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUSHGATEWAY = shutil.which("prometheus-pushgateway")
PROMETHEUS = shutil.which("prometheus")
TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    not (PUSHGATEWAY and PROMETHEUS),
    reason="prometheus and prometheus-pushgateway not on PATH; .ci/run installs them "
           "(apt-get install prometheus prometheus-pushgateway)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """A child process whose stderr goes to a file, for failure messages."""

    def __init__(self, name: str, args: list[str], port: int, logs: Path) -> None:
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.log = logs / f"{name}.stderr"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def stderr(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} stderr (last {len(text)} lines) ---\n" + "\n".join(text)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}\n{self.stderr()}")
            with contextlib.suppress(OSError):
                if _get(f"{self.url}/-/ready")[0] == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"{self.name} not ready on {self.url} within {TIMEOUT:.0f} s\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Monitoring:
    """The running Pushgateway and Prometheus, and PromQL over Prometheus' HTTP API."""

    def __init__(self, gateway: Server, prometheus: Server) -> None:
        self.gateway, self.prometheus = gateway, prometheus

    def diagnostics(self) -> str:
        with contextlib.suppress(OSError):
            metrics = _get(f"{self.gateway.url}/metrics")[1].decode(errors="replace")
            pushed = "\n".join(line for line in metrics.splitlines() if line.startswith("synthmri_"))
            return f"--- series on the Pushgateway ---\n{pushed}\n{self.gateway.stderr()}\n{self.prometheus.stderr()}"
        return f"{self.gateway.stderr()}\n{self.prometheus.stderr()}"

    def query(self, promql: str) -> list[dict]:
        status, body = _get(f"{self.prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", f"{promql}: {reply}"
        return reply["data"]["result"]

    def wait_for(self, promql: str) -> list[dict]:
        """Poll until `promql` returns at least one series (a comparison filters until it holds)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.2)
        pytest.fail(f"no result for {promql} within {TIMEOUT:.0f} s\n{self.diagnostics()}")

    def value(self, promql: str) -> float:
        result = self.wait_for(promql)
        assert len(result) == 1, f"{promql}: expected one series, got {result}"
        return float(result[0]["value"][1])


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    gateway_port, prometheus_port = _free_port(), _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{gateway_port}"]
""")
    servers: list[Server] = []
    try:
        servers.append(Server("pushgateway", [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{gateway_port}"],
                              gateway_port, tmp))
        servers.append(Server("prometheus", [
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}"], prometheus_port, tmp))
        deadline = time.monotonic() + TIMEOUT
        for server in servers:
            server.wait_ready(deadline)
        yield Monitoring(*servers)
    finally:
        for server in reversed(servers):
            server.stop()


def _synthmri(*args: str, gateway: Server, instance: str) -> subprocess.Popen:
    env = {**os.environ, "SYNTHMRI_PUSHGATEWAY": f"127.0.0.1:{gateway.port}", "SYNTHMRI_RUN_INSTANCE": instance}
    env.pop("SYNTHMRI_PROFILE", None)
    return subprocess.Popen([sys.executable, "-m", "synthmri", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _phantom(out: Path, subjects: int, gateway: Server, instance: str) -> subprocess.Popen:
    return _synthmri("phantom", "--profile", "demo", "--out", str(out), "--subjects", str(subjects), "--seed", "0",
                     "--shape", "16", "16", "16", gateway=gateway, instance=instance)


def test_phantom_metrics_from_parallel_runs_and_a_failure_read_back_with_promql(monitoring, tmp_path):
    gateway = monitoring.gateway
    began = time.time()
    runs = {"gen-a": _phantom(tmp_path / "a", 3, gateway, "gen-a"), "gen-b": _phantom(tmp_path / "b", 2, gateway, "gen-b")}
    for name, run in runs.items():
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, f"phantom {name} failed\n{out}\n{err}"
    ended = time.time()

    # Two parallel runs of one stage, told apart by instance, neither overwriting the other.
    items = monitoring.wait_for('count by (stage) (synthmri_progress_items{job="synthmri",stage="phantom"}) == 2')
    assert items[0]["metric"] == {"stage": "phantom"}
    by_instance = {r["metric"]["instance"]: (r["metric"]["unit"], float(r["value"][1]))
                   for r in monitoring.query('synthmri_progress_items{stage="phantom"}')}
    assert by_instance == {"gen-a": ("subjects", 3.0), "gen-b": ("subjects", 2.0)}

    a = '{job="synthmri",stage="phantom",instance="gen-a"}'
    assert monitoring.value(f"synthmri_progress_ratio{a}") == 1.0
    assert monitoring.value(f"synthmri_throughput_items_per_second{a}") > 0
    assert 0 < monitoring.value(f"synthmri_stage_duration_seconds{a}") < ended - began
    success = monitoring.value(f"synthmri_stage_last_success_unixtime{a}")
    assert began <= success <= ended
    assert monitoring.value(f"synthmri_stage_failures_total{a}") == 0

    # The same instance again, failing inside the stage: the output directory is under a file.
    (tmp_path / "file").write_text("not a directory")
    run = _phantom(tmp_path / "file" / "out", 3, gateway, "gen-a")
    out, err = run.communicate(timeout=60)
    assert run.returncode != 0 and "NotADirectoryError" in err, f"{out}\n{err}"
    assert monitoring.value(f"synthmri_stage_failures_total{a} == 1") == 1
    assert monitoring.value(f"synthmri_progress_items{a}") == 0  # the failed run's progress replaced 3
    assert monitoring.value(f"synthmri_progress_ratio{a}") == 0
    assert monitoring.value(f"synthmri_stage_last_success_unixtime{a}") == success  # kept for alerting
    assert monitoring.value('synthmri_stage_failures_total{stage="phantom",instance="gen-b"}') == 0


def test_failing_promote_is_counted_under_its_model(monitoring, tmp_path):
    missing = str(tmp_path / "missing")
    run = _synthmri("promote", "--profile", "demo", "--model", "ddpm", "--memorization", missing,
                    "--real-evaluation", missing, "--synthetic-evaluation", missing,
                    gateway=monitoring.gateway, instance="ignored")
    out, err = run.communicate(timeout=60)
    # No such model in the registry (the gate asks for the version before it reads any evidence).
    assert run.returncode != 0 and "not found" in err, f"{out}\n{err}"
    # promote's instance is its --model, so parallel gates of several generators stay apart.
    labels = '{job="synthmri",stage="promote",instance="ddpm"}'
    assert monitoring.value(f"synthmri_stage_failures_total{labels} == 1") == 1
    assert monitoring.value(f"synthmri_progress_items{labels}") == 0
    assert monitoring.value(f"synthmri_stage_duration_seconds{labels}") > 0
    assert not monitoring.query(f"synthmri_stage_last_success_unixtime{labels}")
