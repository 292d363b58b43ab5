"""The slice store: round trip, atomic completion, resume to identical bytes, verification."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from synthmri.data.store import CHANNELS, INDEX_COLUMNS, SliceRow, SliceStore, StoreError, StoreWriter
from synthmri.io import sha256_file

SIZE = 8
SHARD = 4


def _slices(n: int, seed: int = 0) -> tuple[np.ndarray, list[SliceRow]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, len(CHANNELS), SIZE, SIZE), dtype=np.uint8)
    rows = [SliceRow(f"s{i // 5}_z{i % 5:03d}", f"s{i // 5}", i % 5, ("train", "val", "test")[(i // 5) % 3]) for i in range(n)]
    return data, rows


def _write(out: Path, data: np.ndarray, rows: list[SliceRow], fail_after: int | None = None, chunk: int = 3) -> None:
    """Add in chunks of `chunk` slices; raise once `fail_after` slices were added."""
    with StoreWriter(out, image_size=SIZE, source={"path": "test"}, shard_size=SHARD, extra={"note": 1}) as writer:
        for start in range(0, len(data), chunk):
            writer.add(data[start : start + chunk], rows[start : start + chunk])
            if fail_after is not None and start + chunk >= fail_after:
                raise RuntimeError("killed")


def test_round_trip(tmp_path):
    data, rows = _slices(11)
    _write(tmp_path / "store", data, rows)
    store = SliceStore(tmp_path / "store", verify=True)
    assert len(store) == 11
    np.testing.assert_array_equal(store.read(np.arange(11)), data)
    order = np.array([10, 0, 7, 3, 3])
    np.testing.assert_array_equal(store.read(order), data[order])
    with open(tmp_path / "store" / "index.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == INDEX_COLUMNS
    assert [r[0] for r in table[1:]] == [r.slice_id for r in rows]
    assert [(int(r[4]), int(r[5])) for r in table[1:]] == [(i // SHARD, i % SHARD) for i in range(11)]
    np.testing.assert_array_equal(store.z, [r.z for r in rows])
    manifest = store.manifest
    assert manifest["counts"]["slices"] == 11 and manifest["note"] == 1
    assert manifest["counts"]["splits"] == {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 3]
    for shard in manifest["shards"]:
        assert sha256_file(tmp_path / "store" / "shards" / shard["name"]) == shard["sha256"]
    assert store.subjects("val") == sorted({r.subject for r in rows if r.split == "val"})
    np.testing.assert_array_equal(store.indices("test"), [i for i, r in enumerate(rows) if r.split == "test"])
    assert not (tmp_path / "store" / ".partial").exists()


def test_writer_rejects_wrong_slices(tmp_path):
    data, rows = _slices(2)
    writer = StoreWriter(tmp_path / "s", image_size=SIZE, source={}, shard_size=SHARD)
    with pytest.raises(StoreError, match="uint8"):
        writer.add(data.astype(np.int16), rows)
    with pytest.raises(StoreError, match="slices must be"):
        writer.add(data[:, :4], rows)
    with pytest.raises(StoreError, match="index rows"):
        writer.add(data, rows[:1])


def test_interrupted_writer_leaves_no_manifest(tmp_path):
    data, rows = _slices(11)
    with pytest.raises(RuntimeError, match="killed"):
        _write(tmp_path / "store", data, rows, fail_after=9)
    assert not (tmp_path / "store" / "manifest.json").exists()
    assert list((tmp_path / "store" / "shards").glob("*.tmp")) == []
    with pytest.raises(StoreError, match="interrupted"):
        SliceStore(tmp_path / "store")


def test_rewriting_a_store_drops_the_old_manifest_first(tmp_path):
    data, rows = _slices(6)
    _write(tmp_path / "store", data, rows)
    with pytest.raises(RuntimeError):
        _write(tmp_path / "store", data, rows, fail_after=1)
    with pytest.raises(StoreError):
        SliceStore(tmp_path / "store")


def test_resume_gives_identical_bytes(tmp_path):
    data, rows = _slices(19)
    _write(tmp_path / "clean", data, rows)
    with pytest.raises(RuntimeError):
        _write(tmp_path / "resumed", data, rows, fail_after=9)  # 2 complete shards (8 slices)
    shards = tmp_path / "resumed" / "shards"
    kept = {p.name: p.stat().st_ino for p in shards.glob("shard-*.npy")}
    assert sorted(kept) == ["shard-00000.npy", "shard-00001.npy"]
    writer = StoreWriter(tmp_path / "resumed", image_size=SIZE, source={"path": "test"}, shard_size=SHARD, extra={"note": 1})
    assert writer.resumed_slices == 8
    for start in range(0, len(data), 3):
        writer.add(data[start : start + 3], rows[start : start + 3])
    writer.close()
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    assert resumed["content_hash"] == clean["content_hash"]
    for shard in clean["shards"]:
        assert (shards / shard["name"]).read_bytes() == (tmp_path / "clean" / "shards" / shard["name"]).read_bytes()
    assert {name: (shards / name).stat().st_ino for name in kept} == kept  # not rewritten
    assert (tmp_path / "resumed" / "index.csv").read_text() == (tmp_path / "clean" / "index.csv").read_text()


def test_resume_with_a_different_stream_fails(tmp_path):
    data, rows = _slices(12)
    with pytest.raises(RuntimeError):
        _write(tmp_path / "store", data, rows, fail_after=6)
    other = [SliceRow("x" + r.slice_id, r.subject, r.z, r.split) for r in rows]
    with pytest.raises(StoreError, match="resumed shard 0"):
        _write(tmp_path / "store", data, other)


def test_verify_detects_a_corrupted_shard(tmp_path):
    data, rows = _slices(11)
    _write(tmp_path / "store", data, rows)
    SliceStore(tmp_path / "store", verify=True)
    shard = tmp_path / "store" / "shards" / "shard-00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    SliceStore(tmp_path / "store")  # opening without verification still works
    with pytest.raises(StoreError, match="shard-00001.npy: sha256 mismatch"):
        SliceStore(tmp_path / "store", verify=True)
    shard.unlink()
    with pytest.raises(StoreError, match="shard-00001.npy: shard missing"):
        SliceStore(tmp_path / "store").verify()
