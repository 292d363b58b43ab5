"""The slice store: round trip, atomic completion, resume to identical bytes, verification.

Verification on open: a corrupt or replaced shard, an edited index.csv and a shard changed
after it was verified are refused by name; a cached verification is not hashed again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from synthmri.data.store import CHANNELS, INDEX_COLUMNS, SliceRow, SliceStore, StoreError, StoreWriter
from synthmri.io import sha256_file

try:
    from synthmri.data import verify as verify_module
except ImportError:  # before verification on open existed
    verify_module = None

SIZE = 8
SHARD = 4


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A verification cache of this test's own, and an empty in-process memo."""
    monkeypatch.setenv("SYNTHMRI_CACHE_DIR", str(tmp_path / "cache"))
    if verify_module is not None:
        monkeypatch.setattr(verify_module, "_MEMO", {})
    return tmp_path / "cache"


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


def test_a_failed_shard_write_stops_the_writer_and_names_the_error(tmp_path, monkeypatch):
    # Shards are written by a writer thread while the next fills: its failure (here a full
    # disk on the second shard) must reach the producer, not vanish with the thread.
    import errno

    from synthmri.data import store as store_module

    written = []
    real_save = store_module.atomic_save_npy_parts

    def save(path, parts):
        if path.name == "shard-00001.npy":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path.name)
        return real_save(path, parts)

    monkeypatch.setattr(store_module, "atomic_save_npy_parts", save)
    data, rows = _slices(19)
    with pytest.raises(OSError, match="No space left on device"):
        _write(tmp_path / "store", data, rows)
    assert written == ["shard-00000.npy"]
    assert not (tmp_path / "store" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "store" / ".partial").glob("*.json")) == ["shard-00000.json"]


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


def _flip_byte(path: Path, offset: int = -5) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _age(store: Path, seconds: float = 3600) -> None:
    """Date every file of `store` `seconds` back: shards no longer just written are cached."""
    past = time.time_ns() - int(seconds * 1e9)
    for path in store.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(past, past))


@pytest.fixture
def store(tmp_path) -> Path:
    data, rows = _slices(11)
    _write(tmp_path / "store", data, rows)
    return tmp_path / "store"


def _counting_hashes(monkeypatch) -> list[Path]:
    """Record every shard the verification hashes."""
    import synthmri.data.verify as verify

    hashed: list[Path] = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda path, *a, **k: hashed.append(Path(path)) or real(path, *a, **k))
    return hashed


def test_a_flipped_byte_in_a_shard_is_refused_on_open(store):
    SliceStore(store)
    _flip_byte(store / "shards" / "shard-00001.npy")
    with pytest.raises(StoreError, match="shard-00001.npy: sha256 mismatch") as caught:
        SliceStore(store)
    assert str(store) in str(caught.value)
    SliceStore(store, verify=False)  # the writer's own tests may still look inside


def test_a_zeroed_label_channel_is_refused_on_open(store):
    shard = store / "shards" / "shard-00000.npy"
    slices = np.load(shard)
    slices[:, 4] = 0
    np.save(shard, slices)  # a valid .npy of the right shape, other content
    np.testing.assert_array_equal(SliceStore(store, verify=False).read(np.arange(4))[:, 4], 0)
    with pytest.raises(StoreError, match=r"store/shards/shard-00000.npy: sha256 mismatch"):
        SliceStore(store)


def test_an_index_relabelled_to_train_is_refused_on_open(store):
    index = store / "index.csv"
    lines = index.read_text().splitlines()
    edited = [lines[0]] + [",".join(line.split(",")[:3] + ["train"] + line.split(",")[4:]) for line in lines[1:]]
    index.write_text("\n".join(edited) + "\n")
    with pytest.raises(StoreError, match=r"store/index.csv: does not match the store's manifest.json"):
        SliceStore(store)
    with pytest.raises(StoreError, match=r"index.csv: slices per split \{'train': 11\}"):
        SliceStore(store, verify=False)  # the counts catch this one even unhashed


def test_an_index_with_swapped_splits_is_refused_on_open(store):
    """Same counts per split, other patients held out: only the content hash sees it."""
    index = store / "index.csv"
    text = index.read_text()
    swapped = text.replace(",train,", ",@,").replace(",val,", ",train,").replace(",@,", ",val,")
    index.write_text(swapped)
    assert SliceStore(store, verify=False).subjects("val") == ["s0"]  # was the train subject
    with pytest.raises(StoreError, match="index.csv: does not match"):
        SliceStore(store)


def test_content_hash_is_the_hash_of_what_was_read(store):
    opened = SliceStore(store)
    content = hashlib.sha256((store / "index.csv").read_bytes())
    for name in sorted(p.name for p in (store / "shards").glob("shard-*.npy")):
        content.update(sha256_file(store / "shards" / name).encode())
    assert opened.content_hash == content.hexdigest()


def test_index_rows_must_point_inside_the_shards(store):
    index = store / "index.csv"
    lines = index.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:4] + ["7", "0"])
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match="index.csv: line 4 points at shard 7 row 0, outside the 3 shard"):
        SliceStore(store, verify=False)
    lines[3] = ",".join(lines[3].split(",")[:4] + ["0", "0"])  # the slot of line 2
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match="index.csv: two rows point at the same slice"):
        SliceStore(store, verify=False)


def test_a_manifest_naming_a_shard_outside_the_store_is_refused(store):
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../etc/passwd"
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="manifest.json: shard entry 0"):
        SliceStore(store, verify=False)


def test_a_cached_verification_is_not_hashed_again(store, private_cache, monkeypatch):
    hashed = _counting_hashes(monkeypatch)
    _age(store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    SliceStore(store)
    assert len(hashed) == 3
    SliceStore(store)  # this process remembers
    monkeypatch.setattr(verify_module, "_MEMO", {})
    again = SliceStore(store)  # a new process: the cache file remembers
    assert len(hashed) == 3
    np.testing.assert_array_equal(again.read(np.arange(11)), _slices(11)[0])
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # nothing added to the DVC output
    [cache] = private_cache.glob("verified/*.json")
    assert json.loads(cache.read_text())["store"] == os.path.realpath(store)


def test_a_shard_modified_after_a_cached_verification_is_hashed_again(store, monkeypatch):
    hashed = _counting_hashes(monkeypatch)
    _age(store)
    SliceStore(store)
    monkeypatch.setattr(verify_module, "_MEMO", {})
    shard = store / "shards" / "shard-00002.npy"
    slices = np.load(shard)
    slices[:, 4] = 0
    np.save(shard, slices)  # same size, new mtime
    with pytest.raises(StoreError, match="shard-00002.npy: sha256 mismatch"):
        SliceStore(store)
    assert hashed[3:] == [shard]


def test_a_just_written_shard_is_not_cached(store, monkeypatch):
    """A same-size rewrite within the file system's clock tick would keep the stat: hash again."""
    hashed = _counting_hashes(monkeypatch)
    SliceStore(store)
    SliceStore(store)
    assert len(hashed) == 6


def test_a_shard_replaced_after_opening_is_refused_on_read(store):
    opened = SliceStore(store)
    shard = store / "shards" / "shard-00001.npy"
    replacement = store / "replacement.npy"
    np.save(replacement, np.zeros_like(np.load(shard)))
    os.replace(replacement, shard)
    opened.read([0])  # shard 0 is untouched
    with pytest.raises(StoreError, match="shard-00001.npy: changed since"):
        opened.read([5])


def test_an_unwritable_cache_still_verifies(store, tmp_path, monkeypatch, caplog):
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("SYNTHMRI_CACHE_DIR", str(tmp_path / "not-a-directory" / "cache"))
    _age(store)
    with caplog.at_level(logging.DEBUG, logger="synthmri.data.verify"):
        assert len(SliceStore(store)) == 11
    assert "verification not cached" in caplog.text
    monkeypatch.setattr(verify_module, "_MEMO", {})
    _flip_byte(store / "shards" / "shard-00000.npy")
    with pytest.raises(StoreError, match="shard-00000.npy: sha256 mismatch"):
        SliceStore(store)


def test_verify_rehashes_and_names_a_missing_shard(store, monkeypatch):
    opened = SliceStore(store)
    hashed = _counting_hashes(monkeypatch)
    opened.verify()
    assert len(hashed) == 3
    (store / "shards" / "shard-00001.npy").unlink()
    with pytest.raises(StoreError, match="shard-00001.npy: shard missing"):
        SliceStore(store)
