"""``synthmri pipeline submit`` against a recording stand-in for the Kubeflow Pipelines API.

The stand-in answers the three calls ``kfp.Client`` makes (health, experiment lookup, run
creation) and keeps what it was sent, so the test reads the run exactly as the cluster
would receive it: the compiled spec, the Kubernetes platform spec and the parameters.
"""

import http.server
import json
import threading
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("kfp", reason="the kfp extra is not installed")

from synthmri.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class _KfpApi(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        _KfpApi.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [{"experiment_id": "exp-1", "display_name": "synthmri"}]})
        else:
            self._reply({})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        _KfpApi.requests.append({"method": "POST", "path": self.path, "body": body,
                                 "auth": self.headers.get("Authorization")})
        if self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-42", "display_name": body.get("display_name")})
        else:
            self._reply({"experiment_id": "exp-1", "display_name": "synthmri"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def kfp_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _KfpApi.requests = []
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_submit_starts_a_run_with_the_compiled_pipeline_and_parameters(kfp_api: str, monkeypatch, capfd) -> None:
    monkeypatch.setenv("KFP_HOST", kfp_api)
    monkeypatch.setenv("KFP_TOKEN", "token-from-env")
    status = main(["pipeline", "submit", "--pipeline", "paper", "--project-root", str(REPO), "--parallelism", "5",
                   "--param", "repeats=2", "--param", "generators=[ddpm, stylegan2]", "--run-name", "paper-smoke"])
    assert status == 0, capfd.readouterr().err
    assert "submitted paper as run run-42" in capfd.readouterr().out
    (run,) = [r for r in _KfpApi.requests if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs"]
    assert run["auth"] == "Bearer token-from-env"
    body = run["body"]
    assert body["display_name"] == "paper-smoke" and body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"repeats": 2, "generators": ["ddpm", "stylegan2"]}
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "synthmri-paper"
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nodeSelector" in executors["exec-train-generator"] and "nodeSelector" not in executors["exec-promote"]


def test_submit_refuses_an_unknown_parameter_before_calling_the_api(kfp_api: str, capfd) -> None:
    status = main(["pipeline", "submit", "--host", kfp_api, "--project-root", str(REPO), "--param", "gpus=2"])
    assert status == 1
    assert "has no parameter(s) ['gpus']" in capfd.readouterr().err
    assert _KfpApi.requests == []


def test_pipeline_verb_needs_the_checkout_that_holds_pipelines(tmp_path: Path, capfd) -> None:
    assert main(["pipeline", "compile", "--out", str(tmp_path), "--project-root", str(tmp_path)]) == 2
    assert "has no pipelines/ package" in capfd.readouterr().err
