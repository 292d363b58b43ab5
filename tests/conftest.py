"""Shared fixtures: a tiny config, an isolated MLflow store, a phantom slice store."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator

import pytest

from synthmri.config import Config, load_config
from synthmri.threads import affinity_cpus

REPO = Path(__file__).resolve().parents[1]

#: The smallest settings on which every stage still does its real work.
TINY_OVERRIDES = {
    "phantom.subjects": 8,
    "phantom.shape": [64, 64, 24],
    "data.pad_to": 64,
    "data.size": 32,
    "data.test_subjects": 2,
    "data.shard_size": 64,
}


@pytest.fixture(scope="session", autouse=True)
def verification_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Store verifications are cached in the session's temporary folder, not the user's home
    (subprocesses inherit it through the environment)."""
    folder = tmp_path_factory.mktemp("verified-cache")
    previous = os.environ.get("SYNTHMRI_CACHE_DIR")
    os.environ["SYNTHMRI_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SYNTHMRI_CACHE_DIR", None)
    else:
        os.environ["SYNTHMRI_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def fixed_thread_count() -> Iterator[None]:
    """Tests run a fixed number of compute threads, so results that compare two runs do not
    depend on what else the machine runs (the CLI otherwise follows the load: threads.py)."""
    previous = os.environ.get("SYNTHMRI_THREADS")
    os.environ.setdefault("SYNTHMRI_THREADS", str(affinity_cpus()))
    yield
    if previous is None:
        os.environ.pop("SYNTHMRI_THREADS", None)


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    """The demo profile shrunk to seconds."""
    return load_config(REPO / "configs" / "demo.yaml", TINY_OVERRIDES)


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private sqlite MLflow store for one test (tracking and registry)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # mlflow.set_registry_uri exports it process-wide
    monkeypatch.chdir(tmp_path)  # default artifact root lands in tmp_path/mlruns
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory: pytest.TempPathFactory, tiny_config: Config) -> Path:
    """A prepared slice store from 8 tiny phantom subjects (built once per session)."""
    from synthmri.data.phantom import write_phantom_dataset
    from synthmri.data.prepare import prepare

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root / "brats", tiny_config.phantom)
    prepare(root / "brats", root / "slices", tiny_config)
    return root / "slices"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: the tiny test nets are overhead-bound, and two OpenMP
    threads on a busy 2-core box (parallel test runs) are many times slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """:func:`one_thread` as a fixture (``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    with one_thread():
        yield


@dataclasses.dataclass(frozen=True)
class MotoS3:
    """A running ``moto_server`` on 127.0.0.1: its endpoint and the fake credentials it takes."""

    endpoint: str
    credentials: dict[str, str]
    log: Path

    def client(self):
        import boto3

        return boto3.session.Session(**{"aws_access_key_id": self.credentials["AWS_ACCESS_KEY_ID"],
                                        "aws_secret_access_key": self.credentials["AWS_SECRET_ACCESS_KEY"],
                                        "region_name": self.credentials["AWS_DEFAULT_REGION"]}).client(
            "s3", endpoint_url=self.endpoint)

    def logs(self, tail: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"----- moto_server log ({self.log}) -----\n{text[-tail:]}"

    def bucket(self, name: str) -> str:
        """Create bucket `name` (once) and return it."""
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A real S3 endpoint for the session (``moto_server``), stopped at the end; its log in failures."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    server = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.2)
        yield MotoS3(endpoint, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                "AWS_DEFAULT_REGION": "us-east-1"}, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


#: Debian's Chromium (installed by .ci/run); Playwright drives it, no browser download needed.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Playwright for the session (pages: ``browser.new_page()``)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-lock.txt")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: .ci/run installs Debian's chromium")
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
