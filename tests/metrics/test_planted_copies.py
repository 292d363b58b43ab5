"""Planted copies: training slices hidden among novel ones, exact and disguised.

The synthetic set is the slices of phantom patients no store has seen (novel by
construction) plus training slices copied exactly, with noise, shifted by up to two pixels
and with scaled intensities. evaluate-synthetic must point every copy at its source and
`share` must remove every copy while keeping at least 95% of the novel slices.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from synthmri.data.phantom import write_phantom_dataset
from synthmri.data.prepare import prepare
from synthmri.data.store import SliceRow, SliceStore, StoreWriter
from synthmri.metrics.evaluate_synthetic import read_memorization_csv
from synthmri.stages.evaluate_synthetic import run as evaluate_synthetic
from synthmri.stages.share import run as share


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` [C, H, W] moved by (dy, dx) pixels, zeros coming in (no wrap-around)."""
    out = np.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _disguise(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "exact":
        return image.copy()
    if kind == "noised":  # the four MR channels get noise; the annotation stays a label map
        noisy = image.astype(np.float64)
        noisy[:4] += rng.normal(0, 4.0, noisy[:4].shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if kind == "scaled":
        scaled = image.astype(np.float64)
        scaled[:4] *= rng.choice([0.85, 1.15])
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    shifts = {"shifted-a": (2, -1), "shifted-b": (-1, 2), "shifted-c": (0, -2)}
    return _shift(image, *shifts[kind])


KINDS = ("exact", "noised", "scaled", "shifted-a", "shifted-b", "shifted-c")


@pytest.fixture(scope="module")
def planted(phantom_store, tiny_config, tmp_path_factory):
    """(synthetic store, {planted slice id: source training slice id}, novel slice ids)."""
    root = tmp_path_factory.mktemp("planted")
    # Novel patients: phantoms from another seed, prepared alike, every subject kept.
    novel_cfg = dataclasses.replace(
        tiny_config, phantom=dataclasses.replace(tiny_config.phantom, subjects=4, seed=99),
        data=dataclasses.replace(tiny_config.data, test_subjects=0, val_fraction=0.0))
    write_phantom_dataset(root / "novel-brats", novel_cfg.phantom)
    prepare(root / "novel-brats", root / "novel", novel_cfg)
    novel = SliceStore(root / "novel")
    real = SliceStore(phantom_store)
    train = real.indices("train")
    rng = np.random.default_rng(7)
    sources = rng.choice(train, size=2 * len(KINDS), replace=False)
    images, rows, planted_from = [], [], {}
    for number, (position, image) in enumerate(zip(sources, real.read(sources))):
        kind = KINDS[number % len(KINDS)]
        slice_id = f"gen-{kind}-{number:02d}"
        images.append(_disguise(image, kind, rng))
        rows.append(SliceRow(slice_id, "gen", -1, "train"))
        planted_from[slice_id] = str(real.slice_id[position])
    novel_ids = [f"gen-novel-{i:03d}" for i in range(len(novel))]
    images += list(novel.read(np.arange(len(novel))))
    rows += [SliceRow(i, "gen", -1, "train") for i in novel_ids]
    order = rng.permutation(len(rows))  # copies hidden among the novel slices
    with StoreWriter(root / "synthetic", image_size=real.image_size, source={"path": "planted"}, shard_size=32,
                     generator={"name": "planted", "version": "0"}) as writer:
        writer.add(np.stack(images)[order], [rows[i] for i in order])
    return root / "synthetic", planted_from, novel_ids


def test_evaluate_synthetic_points_every_copy_at_its_source(planted, phantom_store, tiny_config, mlflow_uri,
                                                            tmp_path):
    synthetic, planted_from, _ = planted
    assert tiny_config.memorization.max_shift == 2  # the shifted copies need the shift search
    evaluate_synthetic(phantom_store, synthetic, tmp_path / "mem", tiny_config)
    ids, corr, nearest = read_memorization_csv(tmp_path / "mem" / "memorization.csv")
    scores = dict(zip(ids, zip(corr, nearest)))
    for slice_id, source in planted_from.items():
        r, found = scores[slice_id]
        assert r > tiny_config.memorization.threshold and r > 0.99, f"{slice_id}: r = {r}"
        assert found == source, f"{slice_id} matched {found}, planted from {source}"
    summary = json.loads((tmp_path / "mem" / "summary.json").read_text())
    assert summary["max_shift"] == 2
    nearest = [p["slice_id"] for p in summary["nearest"]]  # the top_k closest: all of them copies
    assert len(nearest) == tiny_config.memorization.top_k and set(nearest) <= set(planted_from)
    assert (tmp_path / "mem" / "memorization_pairs.png").read_bytes()[:4] == b"\x89PNG"

    # The paper's pixel-aligned statistic misses the shifted copies: why the shift search exists.
    aligned = dataclasses.replace(tiny_config, memorization=dataclasses.replace(tiny_config.memorization, max_shift=0))
    evaluate_synthetic(phantom_store, synthetic, tmp_path / "aligned", aligned)
    ids, corr, _ = read_memorization_csv(tmp_path / "aligned" / "memorization.csv")
    aligned_scores = dict(zip(ids, corr))
    assert min(aligned_scores[i] for i in planted_from if "shifted" in i) < 0.95


def test_share_removes_every_copy_and_keeps_the_novel_slices(planted, phantom_store, tiny_config, mlflow_uri, tmp_path):
    synthetic, planted_from, novel_ids = planted
    result = share(synthetic, phantom_store, tmp_path / "shared", tiny_config)
    assert "baseline" in result.threshold_source  # no configured threshold: the baseline's maximum
    shared = SliceStore(tmp_path / "shared")
    kept = set(shared.slice_id.tolist())
    assert not kept & set(planted_from), f"copies left in the shareable store: {sorted(kept & set(planted_from))}"
    kept_novel = len(kept & set(novel_ids)) / len(novel_ids)
    assert kept_novel >= 0.95, f"only {kept_novel:.1%} of the novel slices kept"
    assert result.kept == len(shared) and result.kept + result.removed == len(planted_from) + len(novel_ids)

    # Kept slices are byte-identical to the originals; the manifest says what was done.
    original = SliceStore(synthetic)
    position = {sid: i for i, sid in enumerate(original.slice_id)}
    assert np.array_equal(shared.read(np.arange(len(shared))), original.read([position[s] for s in shared.slice_id]))
    assert shared.manifest["generator"] == original.manifest["generator"]
    assert shared.manifest["share"]["removed"] == result.removed and shared.manifest["share"]["threshold"] == result.threshold
    with open(tmp_path / "shared" / "removed.csv", newline="") as handle:
        removed = {row["slice_id"]: row for row in csv.DictReader(handle)}
    assert set(planted_from) <= set(removed)
    for slice_id, source in planted_from.items():
        assert removed[slice_id]["train_slice_id"] == source and "exceeds" in removed[slice_id]["reason"]

    # A fixed threshold from the config replaces the baseline's.
    strict = dataclasses.replace(tiny_config, memorization=dataclasses.replace(tiny_config.memorization,
                                                                             share_threshold=0.99))
    fixed = share(synthetic, phantom_store, tmp_path / "fixed", strict)
    assert fixed.threshold == 0.99 and fixed.threshold_source == "memorization.share_threshold"
    assert not set(SliceStore(tmp_path / "fixed").slice_id.tolist()) & set(planted_from)


def test_share_refuses_to_overwrite_its_input(planted, phantom_store, tiny_config):
    synthetic, _, _ = planted
    with pytest.raises(ValueError, match="is the synthetic store itself"):
        share(synthetic, phantom_store, synthetic, tiny_config)


def test_share_reuses_the_matching_search_and_searches_again_when_anything_differs(
        planted, phantom_store, tiny_config, mlflow_uri, tmp_path, monkeypatch):
    from synthmri.metrics import share as share_module

    synthetic, planted_from, _ = planted
    evaluate_synthetic(phantom_store, synthetic, tmp_path / "mem", tiny_config)
    searches = []
    real_search = share_module.search
    monkeypatch.setattr(share_module, "search", lambda *a, **k: searches.append(1) or real_search(*a, **k))

    fresh = share(synthetic, phantom_store, tmp_path / "fresh", tiny_config)
    assert len(searches) == 1 and fresh.search.startswith("searched (no evaluate-synthetic output")
    reused = share(synthetic, phantom_store, tmp_path / "reused", tiny_config, memorization=tmp_path / "mem")
    assert len(searches) == 1, "the matching search was run again"
    assert reused.search.startswith(f"reused the search evaluate-synthetic recorded in {tmp_path / 'mem'}")
    # The same decisions, byte for byte: the recorded values read back as the same float64s.
    assert (tmp_path / "reused" / "removed.csv").read_bytes() == (tmp_path / "fresh" / "removed.csv").read_bytes()
    assert SliceStore(tmp_path / "reused").content_hash == SliceStore(tmp_path / "fresh").content_hash
    report = json.loads((tmp_path / "reused" / "share_report.json").read_text())
    fresh_report = json.loads((tmp_path / "fresh" / "share_report.json").read_text())
    assert report.pop("search") == reused.search and fresh_report.pop("search") == fresh.search
    assert report == fresh_report
    assert json.loads((tmp_path / "reused" / "completion.json").read_text())["search"] == reused.search

    def again(out, cfg=tiny_config, store=synthetic, evaluation=tmp_path / "mem"):
        before = len(searches)
        result = share(store, phantom_store, tmp_path / out, cfg, memorization=evaluation)
        assert len(searches) == before + 1, f"{out}: reused a search that does not match"
        assert result.search.startswith("searched again: the recorded search cannot be reused")
        return result.search

    # Other settings: another shift search, another arithmetic.
    shift = dataclasses.replace(tiny_config, memorization=dataclasses.replace(tiny_config.memorization, max_shift=1))
    assert "searched with max_shift = 2, share uses 1" in again("shift", shift)
    f32 = dataclasses.replace(tiny_config, memorization=dataclasses.replace(tiny_config.memorization,
                                                                          arithmetic="float32"))
    assert "arithmetic = 'int8', share uses 'float32'" in again("float32", f32)
    # Another synthetic store (the shareable one made above: other content).
    assert "searched another synthetic store" in again("other", store=tmp_path / "fresh")
    # A recorded file changed afterwards.
    table = tmp_path / "mem" / "memorization.csv"
    original = table.read_text()
    first_value = original.splitlines()[1].split(",")[1]
    table.write_text(original.replace(first_value, "0.1", 1))
    assert "memorization.csv: changed since evaluate-synthetic recorded it" in again("tampered")
    # Rows that do not check out, even with the record's sha256 made to match: a training
    # slice that is not one, a correlation outside [-1, 1], rows out of the store's order.
    record_file = tmp_path / "mem" / "completion.json"
    record_text = record_file.read_text()
    header, first, second, *rest = original.splitlines(keepends=True)
    slice_id, value, train_id = first.rstrip("\n").split(",")
    for case, text, reason in (
            ("foreign", original.replace(first, f"{slice_id},{value},patient-x_z000\n", 1), "not a training slice"),
            ("range", original.replace(first, f"{slice_id},1.5,{train_id}\n", 1), "outside [-1, 1]"),
            ("order", header + second + first + "".join(rest), "not the store's slices in the store's order")):
        table.write_text(text)
        record = json.loads(record_text)
        record["memorization"]["files"]["memorization.csv"] = hashlib.sha256(text.encode()).hexdigest()
        record_file.write_text(json.dumps(record))
        assert reason in again(case)
    table.write_text(original)
    record_file.write_text(record_text)
    # No completion record: not a finished evaluate-synthetic output.
    (tmp_path / "mem" / "completion.json").unlink()
    assert "no completion.json from evaluate-synthetic" in again("unfinished")
    # Every recomputation with the full shift search removed every copy.
    assert all(not set(SliceStore(tmp_path / out).slice_id.tolist()) & set(planted_from)
               for out in ("float32", "tampered", "unfinished"))
