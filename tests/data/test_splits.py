"""The subject split: the authors' published test subjects, the seeded fallback, and what the
generator trains on (train + val) and is checked against for copies."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthmri.config import Config, load_config
from synthmri.data.phantom import nifti_gz_bytes
from synthmri.data.prepare import PrepareError, prepare
from synthmri.data.splits import (GENERATOR_TRAIN_SPLITS, SplitError, assign_splits, published_order,
                                  published_test_subjects, split_subjects)
from synthmri.data.store import SliceRow, SliceStore, StoreError, StoreWriter

#: The shipped lists, read as files (not through synthmri.data.splits).
SHIPPED = Path(__file__).resolve().parents[2] / "src" / "synthmri" / "data" / "paper_splits"
#: sha256 of the authors' lists as published (shared/paper-splits): the shipped copies must not drift.
PUBLISHED_SHA256 = {
    "brats2020_order.txt": "0c1f860353443db33ee5df2529901c2cecab09ff26b6f00417e5a712fbbba484",
    "brats2020_test_subjects.txt": "0d2a1263c0bb73e106c7e7630e2d2623af9c3efdcb2e36cc8e838c4515e01f71",
    "brats2021_order.txt": "ad4933a155d2ba619aa2546386d49328de43cb98fb8a8adcd47c175b541f7194",
    "brats2021_test_subjects.txt": "db8bb38a334b4538cd4fbea0affbe6f0bdd2abafd6cdd7cf6c7b751c18aa9bbc",
}
CHANNELS = ("t1", "t1ce", "t2", "flair", "seg")
SHAPE = (8, 8, 2)  # two axial slices, every pixel foreground: both kept


def _ids(name: str) -> list[str]:
    return (SHIPPED / name).read_text().split()


def _config(**data: object) -> Config:
    """Paper settings (56 test subjects, 20 % val, seed 0) on 8 x 8 slices."""
    base = load_config(None, {"data.pad_to": 8, "data.size": 8, "data.shard_size": 256})
    return dataclasses.replace(base, data=dataclasses.replace(base.data, **data))


def _todays_seeded_split(names: list[str], seed: int, n_test: int, val_fraction: float) -> dict[str, str]:
    """The seeded split as prepare made it before published splits existed (written out here)."""
    names = sorted(names)
    n_val = max(int(np.floor(val_fraction * (len(names) - n_test) + 0.5)), 1)
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i]: "test" if k < n_test else "val" if k < n_test + n_val else "train" for k, i in enumerate(order)}


def _assignment(store: SliceStore) -> dict[str, str]:
    return {s: str(store.split[store.subject == s][0]) for s in store.subjects()}


@pytest.fixture(scope="module")
def brats2020(tmp_path_factory) -> Path:
    """Every BraTS 2020 subject of the published order, as identical 8 x 8 x 2 volumes."""
    root = tmp_path_factory.mktemp("splits") / "brats2020"
    affine = np.eye(4)
    image = nifti_gz_bytes(np.full(SHAPE, 100, dtype=np.int16), affine)
    seg = nifti_gz_bytes(np.zeros(SHAPE, dtype=np.uint8), affine)
    for name in _ids("brats2020_order.txt"):
        folder = root / name
        folder.mkdir(parents=True)
        for channel in CHANNELS:
            (folder / f"{name}_{channel}.nii.gz").write_bytes(seg if channel == "seg" else image)
    return root


@pytest.fixture(scope="module")
def published_store(brats2020, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("published") / "slices"
    prepare(brats2020, out, _config(split="published"))
    return out


def test_shipped_lists_are_the_published_ones():
    for name, digest in PUBLISHED_SHA256.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    for release, total in (("brats2020", 369), ("brats2021", 1251)):
        order, test = published_order(release), published_test_subjects(release)
        assert order == _ids(f"{release}_order.txt") and len(order) == len(set(order)) == total
        assert test == _ids(f"{release}_test_subjects.txt") == order[-56:]  # the last 56 of the order
    assert published_test_subjects("brats2021")[:2] == ["BraTS2021_01566", "BraTS2021_01625"]
    with pytest.raises(SplitError, match="brats2020 and brats2021"):
        published_test_subjects("brats2023")


def test_published_split_tests_on_the_authors_56(published_store):
    store = SliceStore(published_store, verify=True)
    by_split = {s: set(store.subjects(s)) for s in ("train", "val", "test")}
    assert by_split["test"] == set(_ids("brats2020_test_subjects.txt"))
    rest = set(_ids("brats2020_order.txt")) - by_split["test"]
    assert len(rest) == 313 and by_split["val"] | by_split["train"] == rest
    assert len(by_split["val"]) == 63  # 20 % of 313, rounded
    assert store.manifest["split"] == {"kind": "published", "release": "brats2020", "test_subjects": 56, "seed": 0}
    assert store.manifest["layout"] == "brats2020" and store.manifest["subjects"] == {"train": 250, "val": 63, "test": 56}
    # The validation subjects are drawn with the seed: another seed, other ones; the test subjects stay.
    names = store.subjects()
    other = assign_splits(names, _config(split="published", seed=1).data, "brats2020").assignment
    assert {s for s, v in other.items() if v == "test"} == by_split["test"]
    assert {s for s, v in other.items() if v == "val"} != by_split["val"]
    assert assign_splits(names, _config(split="published").data, "brats2020").assignment == _assignment(store)


def test_missing_published_test_subjects_are_named(brats2020, tmp_path, caplog):
    src = tmp_path / "src"
    shutil.copytree(brats2020, src)
    gone = _ids("brats2020_test_subjects.txt")[10:13]
    for name in gone:
        shutil.rmtree(src / name)
    with pytest.raises(PrepareError) as error:
        prepare(src, tmp_path / "out", _config(split="published"))
    message = str(error.value)
    assert str(src) in message and "3 of them" in message and "data.split: seeded" in message
    assert all(name in message for name in gone)
    assert not (tmp_path / "out" / "manifest.json").exists()

    # One with a file missing is named too, and said to be incomplete.
    (src / gone[0]).mkdir()
    for channel in CHANNELS[1:]:
        shutil.copy(brats2020 / gone[0] / f"{gone[0]}_{channel}.nii.gz", src / gone[0])
    with pytest.raises(PrepareError, match=r"1 of them incomplete.*rejected\.csv"):
        prepare(src, tmp_path / "out", _config(split="published"))
    assert gone[0] in (tmp_path / "out" / "rejected.csv").read_text()

    # Many missing: the first few are named, and how many.
    names = [n for n in _ids("brats2020_order.txt") if n not in _ids("brats2020_test_subjects.txt")]
    with pytest.raises(SplitError, match=r"56 of them .*: BraTS20_Training_\d{3}, .* and 51 more"):
        assign_splits(names, _config(split="published").data, "brats2020")
    # Subjects outside the published order are allowed: they train or validate.
    with caplog.at_level(logging.WARNING, logger="synthmri.data.splits"):
        extra = assign_splits(_ids("brats2020_order.txt") + ["BraTS20_Training_999"],
                              _config(split="published").data, "brats2020").assignment
    assert extra["BraTS20_Training_999"] in ("train", "val") and "BraTS20_Training_999" in caplog.text


def test_seeded_split_is_todays_and_differs_from_published(brats2020, published_store, tmp_path):
    prepare(brats2020, tmp_path / "seeded", _config(split="seeded"))
    store = SliceStore(tmp_path / "seeded")
    names = _ids("brats2020_order.txt")
    assert _assignment(store) == _todays_seeded_split(names, seed=0, n_test=56, val_fraction=0.2)
    assert _assignment(store) == split_subjects(names, _config().data)
    assert store.manifest["split"] == {"kind": "seeded", "seed": 0, "test_subjects": 56}
    assert set(store.subjects("test")) != set(SliceStore(published_store).subjects("test"))


def test_published_on_other_layouts_falls_back_to_seeded(caplog):
    names = [f"S{i:02d}" for i in range(12)]
    data = _config(split="published", test_subjects=3).data
    with caplog.at_level(logging.INFO, logger="synthmri.data.splits"):
        split = assign_splits(names, data, "generic")
    assert split.assignment == _todays_seeded_split(names, seed=0, n_test=3, val_fraction=0.2)
    assert split.record == {"kind": "seeded", "seed": 0, "test_subjects": 3}
    assert "only for BraTS 2020/2021" in caplog.text
    gli = [f"BraTS-GLI-{i:05d}-000" for i in range(12)]
    assert assign_splits(gli, data, "brats2023").assignment == split_subjects(gli, data)


def test_generators_train_on_train_and_val(published_store):
    from synthmri.generators.train import training_positions

    store = SliceStore(published_store)
    assert GENERATOR_TRAIN_SPLITS == ("train", "val")
    positions = training_positions(store)
    counts = store.manifest["counts"]["splits"]
    assert len(positions) == counts["train"] + counts["val"] == 2 * 313
    assert set(store.split[positions]) == {"train", "val"} and not (store.split[positions] == "test").any()


def _write_store(path: Path, slices: np.ndarray, splits: list[str]) -> list[str]:
    ids = [f"real-{i:03d}" for i in range(len(slices))]
    with StoreWriter(path, image_size=slices.shape[-1], source={"path": "handmade"}, shard_size=16) as writer:
        writer.add(slices, [SliceRow(i, f"subj{n // 2}", n % 2, s) for n, (i, s) in enumerate(zip(ids, splits))])
    return ids


def test_a_store_with_only_val_and_test_slices_trains_a_generator(tmp_path, mlflow_uri):
    from synthmri.generators.train import train_generator

    rng = np.random.default_rng(0)
    _write_store(tmp_path / "real", rng.integers(0, 256, (8, 5, 16, 16), dtype=np.uint8), ["val"] * 6 + ["test"] * 2)
    cfg = load_config(None, {"data.size": 16, "data.pad_to": 16, "generator.ddpm.network": "monai",
                             "generator.ddpm.schedule": "linear",
                             "generator.ddpm.channels": [8, 8],
                             "generator.ddpm.attention_levels": [False, False], "generator.ddpm.num_res_blocks": 1,
                             "generator.ddpm.norm_num_groups": 8, "generator.ddpm.num_head_channels": 8,
                             "generator.ddpm.timesteps": 10, "generator.ddpm.sample_steps": 2,
                             "generator.ddpm.batch_size": 2, "generator.ddpm.iterations": 1,
                             "generator.ddpm.log_every": 1, "generator.ddpm.mixed_precision": False})
    result = train_generator(tmp_path / "real", tmp_path / "gen", cfg)
    assert result.step == 1
    _write_store(tmp_path / "test-only", rng.integers(0, 256, (2, 5, 16, 16), dtype=np.uint8), ["test"] * 2)
    with pytest.raises(StoreError, match="train or val"):
        train_generator(tmp_path / "test-only", tmp_path / "gen2", cfg)


def test_a_copy_of_a_val_slice_is_a_copy(tmp_path, tiny_config, mlflow_uri):
    from synthmri.metrics.evaluate_synthetic import evaluate_synthetic, read_memorization_csv
    from synthmri.metrics.share import share

    rng = np.random.default_rng(5)
    real = rng.integers(0, 256, (12, 5, 16, 16), dtype=np.uint8)
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    ids = _write_store(tmp_path / "real", real, splits)
    synthetic = rng.integers(0, 256, (6, 5, 16, 16), dtype=np.uint8)
    synthetic[1], synthetic[4] = real[7], real[2]  # a val slice and a train slice, copied
    with StoreWriter(tmp_path / "syn", image_size=16, source={"path": "planted"}, shard_size=8,
                     generator={"name": "planted", "version": "0"}) as writer:
        writer.add(synthetic, [SliceRow(f"syn-{i}", "gen", -1, "train") for i in range(6)])
    cfg = dataclasses.replace(tiny_config, memorization=dataclasses.replace(tiny_config.memorization, max_shift=0,
                                                                          share_threshold=0.9))
    evaluate_synthetic(tmp_path / "real", tmp_path / "syn", tmp_path / "mem", cfg)
    got, corr, nearest = read_memorization_csv(tmp_path / "mem" / "memorization.csv")
    scores = dict(zip(got, zip(corr, nearest)))
    assert scores["syn-1"][0] == pytest.approx(1.0, abs=1e-5) and scores["syn-1"][1] == ids[7]  # the val slice
    assert scores["syn-4"][0] == pytest.approx(1.0, abs=1e-5) and scores["syn-4"][1] == ids[2]
    assert max(c for i, (c, _) in scores.items() if i not in ("syn-1", "syn-4")) < 0.5
    _, _, baseline_nearest = read_memorization_csv(tmp_path / "mem" / "memorization_baseline.csv")
    assert set(baseline_nearest) <= set(ids[:9])  # test slices are compared with train and val, never test
    result = share(tmp_path / "syn", tmp_path / "real", tmp_path / "shared", cfg)
    assert set(SliceStore(tmp_path / "shared").slice_id) == {f"syn-{i}" for i in (0, 2, 3, 5)}
    assert result.removed == 2
