"""Shared fixtures: a tiny config, an isolated MLflow store, a phantom slice store."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

from synthmri.config import Config, load_config

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
