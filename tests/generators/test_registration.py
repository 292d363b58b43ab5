"""Registry, `generate` from a path and from MLflow, and the pyfunc flavour."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from synthmri.data.labels import LABEL_VALUES
from synthmri.data.store import SliceStore
from synthmri.generators import sample as sample_module
from synthmri.generators.sample import generate
from synthmri.stages.train_generator import run as train_generator

from . import one_thread, private_mlflow, tiny_config

CANDIDATE = "models:/synthmri-ddpm@candidate"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, phantom_store):
    """A tiny DDPM trained on the phantom store and registered in a private MLflow.

    Yields (root, cfg, TrainResult, the real SliceStore).
    """
    root = tmp_path_factory.mktemp("registry")
    with one_thread(), private_mlflow(root):
        cfg = tiny_config()
        yield root, cfg, train_generator(phantom_store, root / "model", cfg), SliceStore(phantom_store)


@pytest.fixture(scope="module")
def from_path(registered):
    root, cfg, result, _ = registered
    manifest = generate(str(result.generator), root / "synthetic-path", cfg)
    return manifest, SliceStore(root / "synthetic-path", verify=True)


def test_registered_version_has_alias_candidate_and_data_tag(registered):
    _, _, result, real = registered
    client = MlflowClient()
    version = client.get_model_version_by_alias("synthmri-ddpm", "candidate")
    assert result.registered_name == "synthmri-ddpm" and str(version.version) == str(result.version)
    assert version.run_id == result.run_id
    assert version.tags["synthmri.data.real"] == real.content_hash
    record = json.loads((result.checkpoint.parent / "registration.json").read_text())
    checkpoint = hashlib.sha256(result.generator.read_bytes()).hexdigest()
    assert record == {"name": "synthmri-ddpm", "version": result.version, "run_id": result.run_id,
                      "model_uri": f"models:/synthmri-ddpm/{result.version}", "checkpoint_sha256": checkpoint}
    # What the promotion gate binds evidence to: the registered bytes' hash.
    assert version.tags["synthmri.checkpoint_sha256"] == checkpoint


def test_resume_after_completion_trains_and_registers_nothing(registered, phantom_store):
    root, cfg, result, _ = registered
    client = MlflowClient()
    before = {v.version for v in client.search_model_versions("name='synthmri-ddpm'")}
    runs = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    again = train_generator(phantom_store, root / "model", cfg, resume=True)
    assert again.version == result.version and again.run_id == result.run_id
    assert {v.version for v in client.search_model_versions("name='synthmri-ddpm'")} == before
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == runs


def test_generate_from_a_checkpoint_writes_a_valid_store(registered, from_path):
    _, cfg, result, real = registered
    manifest, synthetic = from_path
    n = cfg.generator.n_synthetic
    assert len(synthetic) == n == manifest["counts"]["slices"]
    assert manifest["counts"]["splits"] == {"train": n} and len(manifest["shards"]) == 3  # 4 + 4 + 2
    assert synthetic.slice_id[0] == "ddpm-000000" and set(synthetic.subject) == {"ddpm"} and set(synthetic.z) == {-1}
    assert manifest["generator"]["name"] == "ddpm" and manifest["generator"]["version"] == result.version
    assert manifest["generator"]["registered_name"] == "synthmri-ddpm"
    assert manifest["generator"]["checkpoint_sha256"] == hashlib.sha256(result.generator.read_bytes()).hexdigest()
    assert manifest["generator"]["uri"] == str(result.generator)
    assert len(manifest["generator"]["checkpoint_sha256"]) == 64
    assert manifest["source"] == {"path": str(result.generator), "content_hash": real.content_hash}
    images = synthetic.read(np.arange(n))
    assert set(np.unique(images[:, 4]).tolist()) <= set(LABEL_VALUES)


def test_generate_from_the_registry_gives_the_same_bytes(registered, from_path):
    root, cfg, result, _ = registered
    manifest = generate(CANDIDATE, root / "synthetic-registry", cfg)
    synthetic = SliceStore(root / "synthetic-registry", verify=True)
    assert manifest["generator"]["version"] == result.version and manifest["generator"]["uri"] == CANDIDATE
    assert manifest["generator"]["checkpoint_sha256"] == from_path[0]["generator"]["checkpoint_sha256"]
    n = len(synthetic)
    assert np.array_equal(synthetic.read(np.arange(n)), from_path[1].read(np.arange(n)))


def test_generate_is_seeded_and_resumes_from_complete_shards(registered, from_path, monkeypatch):
    root, cfg, result, _ = registered
    out = root / "synthetic-resumed"
    real_batch = sample_module.sample_batch
    calls: list[int] = []

    def failing_batch(generator, count, seed, batch, options=None):
        calls.append(batch)
        if batch == 2 and calls.count(2) == 1:  # the first run dies in its last batch
            raise RuntimeError("killed")
        return real_batch(generator, count, seed, batch, options)

    monkeypatch.setattr(sample_module, "sample_batch", failing_batch)
    with pytest.raises(RuntimeError, match="killed"):
        generate(str(result.generator), out, cfg)
    assert not (out / "manifest.json").exists()
    assert calls == [0, 1, 2]
    generate(str(result.generator), out, cfg)
    assert calls == [0, 1, 2, 2]  # batches 0 and 1 sit in complete shards and are not sampled again
    n = cfg.generator.n_synthetic
    assert np.array_equal(SliceStore(out, verify=True).read(np.arange(n)), from_path[1].read(np.arange(n)))

    monkeypatch.undo()
    other = generate(str(result.generator), root / "synthetic-seed1", tiny_config(seed=1))
    assert other["content_hash"] != from_path[0]["content_hash"]


def test_pyfunc_predicts_the_same_images_as_generate(registered, from_path):
    _, cfg, _, _ = registered
    model = mlflow.pyfunc.load_model(CANDIDATE)
    n = cfg.generator.n_synthetic
    images = model.predict(pd.DataFrame({"n": [n], "seed": [cfg.seed]}))
    assert images.dtype == np.uint8 and images.shape == (n, 5, 32, 32)
    assert np.array_equal(images, from_path[1].read(np.arange(n)))
    fewer_steps = model.predict({"n": 2, "seed": 3, "steps": 2})
    assert fewer_steps.shape == (2, 5, 32, 32)
    with pytest.raises(Exception, match="seed"):
        model.predict(pd.DataFrame({"n": [1]}))


def test_pyfunc_loads_in_a_fresh_process(registered):
    root, _, _, _ = registered
    code = textwrap.dedent(f"""
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model({CANDIDATE!r})
        images = model.predict(pd.DataFrame({{"n": [2], "seed": [0]}}))
        print("shape", images.shape, images.dtype)
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shape (2, 5, 32, 32) uint8" in done.stdout


def test_generate_never_writes_over_a_real_store_unless_told(registered, phantom_store, tmp_path):
    import shutil

    from synthmri.records import OutputError
    from synthmri.stages.generate import run as generate_stage

    _, cfg, result, _ = registered
    real = tmp_path / "slices"
    shutil.copytree(phantom_store, real)
    (real / "rejected.csv").write_text("subject,reason\n")
    before = SliceStore(real).content_hash
    with pytest.raises(OutputError, match="slices holds a real slice store; generate will not write over it"):
        generate_stage(str(result.generator), real, cfg)
    assert SliceStore(real).content_hash == before and (real / "subjects.csv").is_file()
    # Told to: nothing of the real store is left beside the synthetic one.
    generate_stage(str(result.generator), real, cfg, overwrite=True)
    assert not (real / "subjects.csv").exists() and not (real / "rejected.csv").exists()
    assert set(SliceStore(real).subject) == {"ddpm"}
    # Its own store again (resume or resample) needs no flag.
    generate_stage(str(result.generator), real, cfg)
