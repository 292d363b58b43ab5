"""Every verb that reads a slice store refuses a corrupt one before using it, naming the store and the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from synthmri.cli import main

TINY = str(Path(__file__).resolve().parent / "profiles" / "tiny.yaml")


def _flip_a_byte(store: Path) -> Path:
    shard = sorted((store / "shards").glob("shard-*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # a pixel, not the header: the file still loads as a valid array
    shard.write_bytes(bytes(data))
    return shard


def _zero_the_labels(store: Path) -> Path:
    shard = sorted((store / "shards").glob("shard-*.npy"))[0]
    slices = np.load(shard)
    slices[:, 4] = 0
    np.save(shard, slices)  # a well-formed file with other content
    return shard


def _relabel_test_as_train(store: Path) -> Path:
    index = store / "index.csv"
    index.write_text(index.read_text().replace(",test,", ",train,"))
    return index


@pytest.fixture
def corrupt(phantom_store, tmp_path, request) -> tuple[Path, Path]:
    """A copy of the phantom store with one kind of damage, and the file damaged."""
    store = tmp_path / "slices"
    shutil.copytree(phantom_store, store)
    return store, request.param(store)


VERBS = {
    "train-generator": lambda s, t: ["--model", "ddpm", "--data", s, "--out", t / "g", "--no-register"],
    "evaluate-synthetic": lambda s, t: ["--real", s, "--synthetic", s, "--out", t / "m"],
    "share": lambda s, t: ["--synthetic", s, "--real", s, "--out", t / "sh"],
    "train-segmenter": lambda s, t: ["--train", "real", "--real", s, "--out", t / "seg"],
    "evaluate-segmenter": lambda s, t: ["--model", t / "model.pt", "--data", s, "--out", t / "e"],
    "reader-study": lambda s, t: ["--real", s, "--synthetic", s, "--per-source", "2", "--out", t / "study",
                                  "--finish"],
    "report": lambda s, t: ["--evaluation", t / "e", "--real", s, "--out", t / "r"],
}


@pytest.mark.parametrize("corrupt", [_flip_a_byte, _zero_the_labels, _relabel_test_as_train], indirect=True,
                         ids=["flipped-byte", "zeroed-labels", "test-relabelled-train"])
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_corrupt_store_stops_every_reader_naming_the_file(verb, corrupt, tmp_path, mlflow_uri, capfd):
    store, damaged = corrupt
    (tmp_path / "model.pt").write_bytes(b"never read: the store is checked first")
    args = [str(a) for a in VERBS[verb](store, tmp_path)]
    status = main([verb, "--profile", TINY, "--set", f"tracking.tracking_uri={mlflow_uri}", *args])
    err = capfd.readouterr().err
    assert status == 1, err
    assert f"{damaged}" in err and "Traceback" not in err
