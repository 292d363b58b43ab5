"""MLflow as the cluster runs it: a real ``mlflow server`` whose artifacts live on S3.

The server gets a sqlite backend and ``--artifacts-destination s3://synthmri-mlflow/artifacts
--serve-artifacts``, with S3 played by ``moto_server``; the S3 endpoint and credentials are in
the server's environment only. The test process is a pipeline pod: it talks HTTP to the server
and has no S3 credentials, so every artifact it writes or reads goes through the server's proxy.

The pipeline's own verbs run in-process at the tiny profile: ``phantom`` -> ``prepare`` ->
``train-generator`` (run, params, tags, config.yaml, pyfunc model, registry entry with alias
``candidate``) -> ``generate`` from ``models:/synthmri-ddpm@candidate`` -> ``evaluate-synthetic``
-> ``promote``. Only the two segmenter evaluations the gate compares are written by the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import REPO, one_thread

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BIN = Path(sys.executable).parent
MOTO_SERVER = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
MLFLOW = shutil.which("mlflow", path=str(BIN)) or shutil.which("mlflow")
pytestmark = pytest.mark.skipif(not (MOTO_SERVER and MLFLOW), reason="needs the moto_server and mlflow commands")

PROFILE = str(REPO / "tests" / "profiles" / "tiny.yaml")
BUCKET = "synthmri-mlflow"
PREFIX = "artifacts"
MODEL = "synthmri-ddpm"
#: Only the server holds these; the test process (the "pod") must not.
SERVER_S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
STARTUP_TIMEOUT_S = 180.0


# ------------------------------------------------------------------------------------ servers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Servers:
    """The running moto and MLflow servers, and how to reach and diagnose them."""

    mlflow_uri: str
    s3_endpoint: str
    logs_dir: Path
    procs: dict[str, subprocess.Popen]

    def s3(self) -> Any:
        """A boto3 S3 client with the server's credentials (the test's own look behind the proxy)."""
        return boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id=SERVER_S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=SERVER_S3_ENV["AWS_SECRET_ACCESS_KEY"],
                            region_name=SERVER_S3_ENV["AWS_DEFAULT_REGION"])

    def objects(self) -> dict[str, bytes]:
        """Every object under the artifact prefix of the bucket, key -> bytes."""
        s3, found = self.s3(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
            for item in page.get("Contents", []):
                found[item["Key"]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        return found

    def logs(self, tail: int = 4000) -> str:
        """The last `tail` characters of each server's output, for failure messages."""
        parts = []
        for name, proc in self.procs.items():
            text = (self.logs_dir / f"{name}.log").read_text(errors="replace")
            state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
            parts.append(f"----- {name} ({state}) -----\n{text[-tail:]}")
        return "\n".join(parts)


def _start(name: str, cmd: list[str], env: dict[str, str], logs_dir: Path) -> subprocess.Popen:
    with open(logs_dir / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
        # A session of its own: the server's workers (uvicorn) share its process group.
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                # The leader is gone; its workers may not be. Nothing in the group may outlive the test.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_until(ready, servers: Servers, name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if servers.procs[name].poll() is not None:
            pytest.fail(f"{name} exited during startup\n{servers.logs()}")
        if ready():
            return
        time.sleep(0.5)
    pytest.fail(f"{name} not ready after {STARTUP_TIMEOUT_S:.0f} s\n{servers.logs()}")


def _bucket_created(servers: Servers) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        servers.s3().create_bucket(Bucket=BUCKET)
        return True
    except (BotoCoreError, ClientError):
        return False


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """moto_server with the bucket, then ``mlflow server`` proxying artifacts to it."""
    root = tmp_path_factory.mktemp("mlflow-server")
    s3_port, mlflow_port = _free_port(), _free_port()
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "MLFLOW_")) and k != "SYNTHMRI_PUSHGATEWAY"}
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    srv = Servers(f"http://127.0.0.1:{mlflow_port}", s3_endpoint, root, {})
    try:
        srv.procs["moto_server"] = _start("moto_server", [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(s3_port)],
                                          base_env, root)
        _wait_until(lambda: _bucket_created(srv), srv, "moto_server")
        server_env = {
            **base_env, **SERVER_S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            # The GenAI job runner spawns seven huey consumers; nothing here needs them.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        srv.procs["mlflow"] = _start("mlflow", [
            MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{BUCKET}/{PREFIX}", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        ], server_env, root)
        _wait_until(lambda: _healthy(srv.mlflow_uri), srv, "mlflow")
        yield srv
    finally:
        for proc in reversed(list(srv.procs.values())):
            _stop(proc)


@pytest.fixture(scope="module")
def pod(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The test process as a pipeline pod: no S3 endpoint or credentials, MLflow over HTTP only."""
    import mlflow

    home = tmp_path_factory.mktemp("pod")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
            mp.delenv(key, raising=False)
        # mlflow.set_tracking_uri/set_registry_uri export these; set-then-delete makes the
        # monkeypatch restore them to their state before this module, not leave ours behind.
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SYNTHMRI_PUSHGATEWAY", "SYNTHMRI_PARENT_RUN_ID",
                    "SYNTHMRI_PROFILE"):
            mp.setenv(key, "")
            mp.delenv(key, raising=False)
        # No credentials from files or instance metadata either.
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-credentials"))
        mp.setenv("AWS_CONFIG_FILE", str(home / "no-config"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server fails in seconds, not minutes
        mp.chdir(home)
        try:
            yield servers
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def cli(srv: Servers, *argv: str, expect: int = 0) -> None:
    """``synthmri <verb> --profile tiny --set tracking.tracking_uri=<server>``, in-process."""
    from synthmri.cli import main

    args = [argv[0], "--profile", PROFILE, "--set", f"tracking.tracking_uri={srv.mlflow_uri}", *argv[1:]]
    try:
        with one_thread():
            code = main(args)
    except Exception as exc:  # shown with the servers' side of the story
        pytest.fail(f"synthmri {' '.join(args)} raised {exc!r}\n{srv.logs()}")
    assert code == expect, f"synthmri {' '.join(args)} exited {code}, expected {expect}\n{srv.logs()}"


@dataclass
class Trained:
    work: Path
    slices: Path
    out: Path
    run_id: str
    version: str


@pytest.fixture(scope="module")
def trained(pod: Servers, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """phantom -> prepare -> train-generator --model ddpm against the server."""
    work = tmp_path_factory.mktemp("pipeline")
    cli(pod, "phantom", "--out", str(work / "brats"))
    cli(pod, "prepare", "--source", str(work / "brats"), "--out", str(work / "slices"))
    cli(pod, "train-generator", "--model", "ddpm", "--data", str(work / "slices"), "--out", str(work / "gen"))
    record = json.loads((work / "gen" / "registration.json").read_text())
    assert record["name"] == MODEL and record["version"] is not None, record
    return Trained(work, work / "slices", work / "gen", record["run_id"], str(record["version"]))


def _one(objects: dict[str, bytes], suffix: str) -> tuple[str, bytes]:
    hits = [(k, v) for k, v in objects.items() if k.endswith(suffix)]
    assert len(hits) == 1, f"expected one object ending in {suffix}, got {sorted(k for k, _ in hits)} of {sorted(objects)}"
    return hits[0]


def write_segmenter_evaluations(root: Path, real_dice: float, synthetic_dice: float,
                                generator: dict) -> dict[str, Path]:
    """The two evaluate-segmenter summaries the gate compares (same test data and architecture),
    each with the completion record evaluate-segmenter leaves; the synthetic one trained on
    samples of `generator` (a synthetic store's manifest entry)."""
    paths = {}
    for role, dice in (("real", real_dice), ("synthetic", synthetic_dice)):
        directory = root / f"eval-{role}"
        directory.mkdir(parents=True)
        (directory / "summary.json").write_text(json.dumps({
            "model": {"arch": "unet", "train": role, "augment": True, "seed": 0, "name": f"unet-{role}-aug-s0"},
            "data_hash": "e" * 64, "eval_slices": "filtered", "subjects": 2,
            "dice": dict.fromkeys(("ET", "ED", "NCR"), dice), "hausdorff": dict.fromkeys(("ET", "ED", "NCR"), 5.0),
            "mean_dice": dice,
        }))
        stores = [] if role == "real" else [{"path": "synthetic", "content_hash": "s" * 64, "generator": generator}]
        (directory / "completion.json").write_text(json.dumps({
            "schema": 1, "verb": "evaluate-segmenter", "seed": 0, "run_ids": [],
            "inputs": {"real": {"path": "slices", "content_hash": "e" * 64, "generator": None}},
            "models": [{"checkpoint": "model.pt", "training": {"train": role, "real_share": None, "real": None,
                                                                "synthetic": stores}}]}))
        paths[role] = directory
    return paths


# -------------------------------------------------------------------------------------- tests


def test_pod_has_no_s3_access_of_its_own(pod: Servers):
    session = boto3.Session()
    assert session.get_credentials() is None, "the test process must not hold AWS credentials"
    assert "MLFLOW_S3_ENDPOINT_URL" not in os.environ


@pytest.mark.parametrize(("generator", "cause"), [
    ("models:/nope@candidate", "Registered Model with name=nope not found"),
    ("models:/synthmri-empty@candidate", "Registered model alias candidate not found"),
])
def test_unknown_model_or_alias_is_one_line_naming_it(pod: Servers, generator: str, cause: str, tmp_path: Path):
    """No such registered model, or no such alias of one: one line, status 1, no traceback."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=pod.mlflow_uri, registry_uri=pod.mlflow_uri)
    if not client.search_registered_models("name = 'synthmri-empty'"):
        client.create_registered_model("synthmri-empty")  # a model without versions or aliases
    result = subprocess.run([sys.executable, "-m", "synthmri", "generate", "--profile", PROFILE, "--set",
                             f"tracking.tracking_uri={pod.mlflow_uri}", "--generator", generator, "--out",
                             str(tmp_path / "synthetic")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("synthmri generate: error:")]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"synthmri generate: error: {generator}: "), result.stderr
    assert cause in errors[0] and pod.mlflow_uri in errors[0], errors[0]
    assert not (tmp_path / "synthetic").exists()


def test_stage_run_is_tracked_on_the_server_with_artifacts_on_s3(pod: Servers, trained: Trained, tmp_path: Path):
    import mlflow
    import yaml

    from synthmri import __version__
    from synthmri.data.store import SliceStore

    client = mlflow.MlflowClient(tracking_uri=pod.mlflow_uri)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied, not s3://
    assert client.get_experiment(run.info.experiment_id).name == "synthmri-generators"
    data_hash = SliceStore(trained.slices).content_hash
    tags, params = run.data.tags, run.data.params
    assert tags["synthmri.stage"] == "train-generator" and tags["synthmri.model"] == "ddpm"
    assert tags["synthmri.profile"] == "tiny" and tags["synthmri.seed"] == "0"
    assert tags["synthmri.version"] == __version__ and tags["synthmri.git_commit"]
    assert tags["synthmri.data.real"] == data_hash and params["data.real.hash"] == data_hash
    assert params["profile"] == "tiny" and params["seed"] == "0" and params["generator.ddpm.iterations"] == "20"
    assert params["tracking.tracking_uri"] == pod.mlflow_uri
    assert "iterations_per_second" in run.data.metrics

    # The server wrote the run's files to the bucket ...
    objects = pod.objects()
    key, stored = _one(objects, f"/{trained.run_id}/artifacts/config.yaml")
    assert key.startswith(f"{PREFIX}/")
    _one(objects, f"/{trained.run_id}/artifacts/samples.png")
    assert yaml.safe_load(stored)["tracking"]["tracking_uri"] == pod.mlflow_uri

    # ... and hands them back byte for byte to a client without S3 credentials.
    listed = {item.path for item in client.list_artifacts(trained.run_id)}
    assert {"config.yaml", "samples.png"} <= listed, listed
    local = mlflow.artifacts.download_artifacts(run_id=trained.run_id, artifact_path="config.yaml",
                                                dst_path=str(tmp_path), tracking_uri=pod.mlflow_uri)
    assert Path(local).read_bytes() == stored


def test_registered_generator_round_trips_through_the_proxy(pod: Servers, trained: Trained, tmp_path: Path):
    import mlflow
    import numpy as np
    import pandas as pd

    client = mlflow.MlflowClient(tracking_uri=pod.mlflow_uri, registry_uri=pod.mlflow_uri)
    version = client.get_model_version_by_alias(MODEL, "candidate")
    assert str(version.version) == trained.version and version.run_id == trained.run_id
    assert version.status == "READY"
    assert version.tags["synthmri.run_id"] == trained.run_id and version.tags["synthmri.profile"] == "tiny"

    # The model's files are in the bucket; the checkpoint is the one training wrote.
    local_checkpoint = (trained.out / "generator.pt").read_bytes()
    objects = pod.objects()
    key, stored = _one(objects, "/artifacts/generator.pt")
    assert key.startswith(f"{PREFIX}/") and stored == local_checkpoint
    _one(objects, "/artifacts/MLmodel")
    _one(objects, "/artifacts/pyfunc.py")

    downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}@candidate",
                                                          dst_path=str(tmp_path / "model")))
    assert [p.read_bytes() for p in downloaded.rglob("generator.pt")] == [local_checkpoint]

    # The registered pyfunc loads through the server and samples: same seed, same bytes.
    with one_thread():
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@candidate")
        request = pd.DataFrame({"n": [3], "seed": [7]})
        images, again = model.predict(request), model.predict(request)
    assert images.shape == (3, 5, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, again)


def test_generate_evaluate_and_promotion_gate_through_the_server(pod: Servers, trained: Trained, tmp_path: Path):
    import mlflow
    from mlflow.exceptions import MlflowException

    from synthmri.data.store import SliceStore

    client = mlflow.MlflowClient(tracking_uri=pod.mlflow_uri, registry_uri=pod.mlflow_uri)
    v1 = trained.version

    # generate pulls the candidate through the proxy; evaluate-synthetic logs its run there.
    cli(pod, "generate", "--generator", f"models:/{MODEL}@candidate", "--out", str(tmp_path / "synthetic"))
    synthetic = SliceStore(tmp_path / "synthetic")
    assert len(synthetic) == 32 and str(synthetic.manifest["generator"]["version"]) == v1
    cli(pod, "evaluate-synthetic", "--real", str(trained.slices), "--synthetic", str(tmp_path / "synthetic"),
        "--out", str(tmp_path / "memorization"))
    memo = json.loads((tmp_path / "memorization" / "summary.json").read_text())
    memo_run = client.get_run(memo["mlflow_run_id"])
    assert memo_run.data.tags["synthmri.stage"] == "evaluate-synthetic"
    assert memo_run.data.tags["synthmri.data.synthetic"] == synthetic.content_hash
    _one(pod.objects(), f"/{memo['mlflow_run_id']}/artifacts/summary.json")

    def gate(name: str, real_dice: float, synthetic_dice: float, memorization: Path, version: str, expect: int) -> dict:
        record = json.loads((memorization / "completion.json").read_text())
        evals = write_segmenter_evaluations(tmp_path / name, real_dice, synthetic_dice,
                                            record["inputs"]["synthetic"]["generator"])
        decision_path = tmp_path / f"{name}.json"
        cli(pod, "promote", "--model", MODEL, "--version", version, "--memorization", str(memorization),
            "--real-evaluation", str(evals["real"]), "--synthetic-evaluation", str(evals["synthetic"]),
            "--out", str(decision_path), expect=expect)
        return json.loads(decision_path.read_text())

    def champion() -> str | None:
        try:
            return str(client.get_model_version_by_alias(MODEL, "champion").version)
        except MlflowException:
            return None

    # A failing gate (relative Dice 0.25) records its evidence and sets no champion.
    failed = gate("fail-v1", 0.8, 0.2, tmp_path / "memorization", "candidate", expect=1)
    assert not failed["passed"] and failed["version"] == v1
    assert [c["name"] for c in failed["criteria"] if not c["passed"]] == ["relative_dice"]
    assert champion() is None
    tags = client.get_model_version(MODEL, v1).tags
    assert tags["synthmri.gate.passed"] == "false" and tags["synthmri.gate.failed"] == "relative_dice"

    # A passing gate points champion at the version, evidence tags first.
    passed = gate("pass-v1", 0.8, 0.6, tmp_path / "memorization", "candidate", expect=0)
    assert passed["passed"], passed
    assert champion() == v1
    tags = client.get_model_version(MODEL, v1).tags
    assert tags["synthmri.gate.passed"] == "true" and tags["synthmri.gate.failed"] == "none"
    assert float(tags["synthmri.gate.relative_dice"]) == pytest.approx(0.75)
    assert tags["synthmri.gate.memorization_run_id"] == memo["mlflow_run_id"]
    assert tags["synthmri.gate.synthetic_hash"] == synthetic.content_hash
    assert tags["synthmri.gate.evaluation_data_hash"] == "e" * 64

    # A newer candidate that fails the gate leaves champion on the version that passed.
    out2 = tmp_path / "gen2"
    cli(pod, "train-generator", "--model", "ddpm", "--iterations", "2", "--data", str(trained.slices),
        "--out", str(out2))
    v2 = str(json.loads((out2 / "registration.json").read_text())["version"])
    assert v2 != v1 and str(client.get_model_version_by_alias(MODEL, "candidate").version) == v2
    memo2 = tmp_path / "memorization-v2"
    memo2.mkdir()
    (memo2 / "summary.json").write_text(json.dumps({**memo, "generator": {**memo["generator"], "version": int(v2)}}))
    # Its record as evaluate-synthetic would write it for samples of v2 (bound by v2's checkpoint hash).
    record = json.loads((tmp_path / "memorization" / "completion.json").read_text())
    v2_generator = {**record["inputs"]["synthetic"]["generator"], "version": int(v2),
                    "checkpoint_sha256": json.loads((out2 / "registration.json").read_text())["checkpoint_sha256"]}
    record["inputs"]["synthetic"]["generator"] = v2_generator
    (memo2 / "completion.json").write_text(json.dumps(record))
    failed2 = gate("fail-v2", 0.8, 0.1, memo2, str(out2 / "registration.json"), expect=1)
    assert not failed2["passed"] and failed2["version"] == v2
    assert champion() == v1
    assert client.get_model_version(MODEL, v2).tags["synthmri.gate.passed"] == "false"
    assert client.get_model_version(MODEL, v1).tags["synthmri.gate.passed"] == "true"
