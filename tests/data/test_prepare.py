"""prepare: the paper's slicing checked on hand-made volumes and tiny phantoms."""

from __future__ import annotations

import csv
import gzip
import dataclasses
import hashlib
import json
import logging
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import synthmri.data.prepare as prepare_module
from synthmri.config import Config, load_config
from synthmri.data.phantom import write_phantom_dataset
from synthmri.data.prepare import PrepareError, prepare, resample_slices, split_subjects
from synthmri.data.store import SliceStore

CHANNELS = ("t1", "t1ce", "t2", "flair", "seg")


def _config(base: Config | None = None, **data) -> Config:
    """`base` (default: paper settings with no held-out subjects, seeded split) with data.* replaced."""
    base = base or load_config(None, {"data.test_subjects": 0, "data.val_fraction": 0.0, "data.split": "seeded"})
    return dataclasses.replace(base, data=dataclasses.replace(base.data, **data))


def _write_subject(root: Path, name: str, volumes: dict[str, np.ndarray], spacing=(1.0, 1.0, 1.0),
                   affine: np.ndarray | None = None) -> Path:
    """Write one subject; by default with BraTS's own (canonical, LPS) voxel axes, so voxels are used as stored."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]) if affine is None else affine
    for channel, volume in volumes.items():
        nib.save(nib.Nifti1Image(volume, affine), folder / f"{name}_{channel}.nii.gz")
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("prepare") / "brats"
    write_phantom_dataset(root, dataclasses.replace(tiny_config.phantom, subjects=6))
    return root


def test_padding_scaling_and_labels_on_a_hand_made_volume(tmp_path):
    rng = np.random.default_rng(0)
    shape = (16, 12, 3)  # pad_to = 32: 8 px above/below, 10 px left/right
    t1 = (4 * rng.integers(52, 256, size=shape)).astype(np.int16)  # scaling by 255/1020 is exact
    t1[0, 0, :] = 1020
    t1ce = rng.uniform(0.0, 3.7, size=shape).astype(np.float32)
    t2 = rng.integers(0, 11, size=shape).astype(np.int16)
    flair = rng.integers(-5, 300, size=shape).astype(np.int16)  # negatives clip to 0
    seg = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=shape)
    _write_subject(tmp_path / "src", "BraTS2021_00042", dict(t1=t1, t1ce=t1ce, t2=t2, flair=flair, seg=seg))
    result = prepare(tmp_path / "src", tmp_path / "out", _config(pad_to=32, size=32))
    store = SliceStore(tmp_path / "out", verify=True)
    assert result.slices == {"train": 3, "val": 0, "test": 0} and result.rejected == []
    assert store.slice_id.tolist() == [f"BraTS2021_00042_z{z:03d}" for z in range(3)]
    slices = store.read(np.arange(3))  # [z, channel, 32, 32]
    inside = (slice(8, 24), slice(10, 22))
    border = np.ones((32, 32), bool)
    border[inside] = False
    assert not slices[:, :, border].any()  # zero padding on every side
    crop = slices[:, :, inside[0], inside[1]]
    expected = {
        "t1": t1 // 4,
        "t1ce": np.rint(t1ce.astype(np.float64) / t1ce.max() * 255),
        "t2": np.rint(t2 / t2.max() * 255),
        "flair": np.rint(np.clip(flair, 0, None) / flair.max() * 255),
        "seg": np.choose(np.searchsorted([0, 1, 2, 4], seg), [0, 51, 102, 204]),
    }
    for c, channel in enumerate(CHANNELS):
        want = np.moveaxis(expected[channel], -1, 0)
        diff = np.abs(crop[:, c].astype(int) - want)
        assert diff.max() <= (1 if channel == "t1ce" else 0), channel  # float32 vs float64 rounding
        assert crop[:, c].max() == (255 if channel != "seg" else 204)


def _filter_volume(counts: list[int], at_threshold: int = 0) -> dict[str, np.ndarray]:
    """16x16 slices whose T1 has `counts[z]` pixels at 255 (the max), the rest 0."""
    shape = (16, 16, len(counts) + 1)
    t1 = np.zeros(shape, np.int16)
    for z, n in enumerate(counts):
        t1[..., z].flat[:n] = 255
    t1[..., -1].flat[:at_threshold] = 50  # exactly at the threshold: not foreground
    bright = np.full(shape, 255, np.int16)  # T1Gd bright everywhere: the filter must test T1
    seg = np.zeros(shape, np.uint8)
    seg[4:12, 4:12] = 2
    return dict(t1=t1, t1ce=bright, t2=bright, flair=bright, seg=seg)


@pytest.mark.parametrize("size", [32, 16])
def test_foreground_filter_keeps_the_right_slices(tmp_path, size):
    # pad_to 32: 1024 pixels, more than 15 % is more than 153.6 pixels.
    counts = [0, 100, 153, 154, 200, 256]
    expected = [z for z, n in enumerate(counts) if n / 1024 > 0.15]
    assert expected == [3, 4, 5]
    _write_subject(tmp_path / "src", "S1", _filter_volume(counts, at_threshold=200))
    prepare(tmp_path / "src", tmp_path / "out", _config(pad_to=32, size=size))
    store = SliceStore(tmp_path / "out")
    assert store.z.tolist() == expected  # decided on the padded 32x32 slice, before resampling
    assert _rows(tmp_path / "out" / "subjects.csv") == [{"subject": "S1", "split": "train", "slices_kept": "3", "slices_total": "7",
                                                         "spacing_x": "1", "spacing_y": "1", "spacing_z": "1",
                                                         "orientation": "LPS"}]
    slices = store.read(np.arange(len(store)))
    assert slices.shape == (3, 5, size, size)
    assert set(np.unique(slices[:, 4]).tolist()) <= {0, 102}


def test_resampling_smooth_images_nearest_labels():
    rng = np.random.default_rng(1)
    slices = np.zeros((2, 5, 40, 40), np.uint8)
    slices[:, :4] = 200
    slices[:, 4] = rng.choice(np.array([0, 51, 102, 204], np.uint8), size=(2, 40, 40))
    out = resample_slices(slices, 16)
    assert out.shape == (2, 5, 16, 16) and out.dtype == np.uint8
    assert (out[:, :4] == 200).all()  # a constant image stays constant
    nearest = np.floor((np.arange(16) + 0.5) * 40 / 16).astype(int)
    np.testing.assert_array_equal(out[:, 4], slices[:, 4][:, nearest][:, :, nearest])
    ramp = np.zeros((1, 5, 40, 40), np.uint8)
    ramp[0, 0] = np.linspace(0, 255, 40).round().astype(np.uint8)[None, :]
    row = resample_slices(ramp, 16)[0, 0, 5].astype(int)
    assert (np.diff(row) > 0).all()  # a ramp stays monotonic (smooth interpolation)


def test_brats2023_label_map(tmp_path):
    volumes = _filter_volume([256, 256])
    volumes["seg"][2:4, 2:4] = 3  # BraTS 2023: 3 is enhancing tumour
    _write_subject(tmp_path / "src", "BraTS-GLI-00001-000", volumes)
    cfg = _config(pad_to=16, size=16, label_map={1: 51, 2: 102, 3: 204})
    prepare(tmp_path / "src", tmp_path / "out", cfg)
    store = SliceStore(tmp_path / "out")
    assert set(np.unique(store.read(np.arange(len(store)))[:, 4]).tolist()) == {0, 102, 204}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["label_map"] == {"1": 51, "2": 102, "3": 204}
    # The BraTS 2021 map does not know label 3: the only subject is rejected.
    with pytest.raises(PrepareError, match="could be prepared"):
        prepare(tmp_path / "src", tmp_path / "out2", _config(pad_to=16, size=16))
    (row,) = _rows(tmp_path / "out2" / "rejected.csv")
    assert row["subject"] == "BraTS-GLI-00001-000" and row["file"].endswith("_seg.nii.gz") and "3" in row["reason"]


def test_split_by_subject(tmp_path, phantoms, tiny_config):
    result = prepare(phantoms, tmp_path / "out", tiny_config)
    store = SliceStore(tmp_path / "out", verify=True)
    n, test = 6, tiny_config.data.test_subjects
    val = int(np.floor(tiny_config.data.val_fraction * (n - test) + 0.5))
    assert result.subjects == {"train": n - test - val, "val": val, "test": test}
    by_split = {s: set(store.subjects(s)) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in by_split.items()} == result.subjects
    assert set.union(*by_split.values()) == {f"BraTS2021_{i:05d}" for i in range(n)}
    for subject in store.subjects():  # one split per subject
        assert len(set(store.split[store.subject == subject].tolist())) == 1
        z = store.z[store.subject == subject]
        assert (np.diff(z) > 0).all()
    assert list(store.subject) == sorted(store.subject)  # sorted subjects, ascending z
    assert all(sid == f"{s}_z{z:03d}" for sid, s, z in zip(store.slice_id, store.subject, store.z))
    manifest = store.manifest
    assert manifest["subjects"] == result.subjects and manifest["split_seed"] == tiny_config.data.seed
    assert manifest["image_size"] == tiny_config.data.size and manifest["pad_to"] == tiny_config.data.pad_to
    table = _rows(tmp_path / "out" / "subjects.csv")
    assert {r["subject"]: r["split"] for r in table} == {s: store.split[store.subject == s][0] for s in store.subjects()}
    assert sum(int(r["slices_kept"]) for r in table) == len(store) == result.manifest["counts"]["slices"]
    assert load_config(tmp_path / "out" / "config.yaml") == tiny_config
    # The split depends only on the subjects and the seed.
    assert split_subjects(store.subjects(), tiny_config.data) == {s: store.split[store.subject == s][0] for s in store.subjects()}
    other = split_subjects(store.subjects(), dataclasses.replace(tiny_config.data, seed=1))
    assert other != split_subjects(store.subjects(), tiny_config.data)


def test_voxel_spacing_is_recorded_per_subject_and_in_the_manifest(tmp_path):
    rng = np.random.default_rng(0)
    volumes = {c: rng.integers(60, 200, size=(8, 8, 3)).astype(np.int16) for c in CHANNELS[:4]}
    volumes["seg"] = np.zeros((8, 8, 3), dtype=np.uint8)
    _write_subject(tmp_path / "one", "S1", volumes, spacing=(0.9, 0.8, 3.0))
    _write_subject(tmp_path / "one", "S2", volumes, spacing=(0.9, 0.8, 3.0))
    result = prepare(tmp_path / "one", tmp_path / "out1", _config(pad_to=8, size=8, min_foreground_fraction=0.0))
    table = _rows(tmp_path / "out1" / "subjects.csv")
    assert [(r["spacing_x"], r["spacing_y"], r["spacing_z"]) for r in table] == [("0.9", "0.8", "3")] * 2
    assert result.manifest["spacing"] == pytest.approx([0.9, 0.8, 3.0])
    # Subjects that disagree: the manifest records none, subjects.csv each one's own.
    _write_subject(tmp_path / "two", "S1", volumes, spacing=(1.0, 1.0, 1.0))
    _write_subject(tmp_path / "two", "S2", volumes, spacing=(1.0, 1.0, 2.5))
    result = prepare(tmp_path / "two", tmp_path / "out2", _config(pad_to=8, size=8, min_foreground_fraction=0.0))
    assert result.manifest["spacing"] is None
    assert [r["spacing_z"] for r in _rows(tmp_path / "out2" / "subjects.csv")] == ["1", "2.5"]


def test_split_needs_enough_subjects(tmp_path, phantoms, tiny_config):
    with pytest.raises(PrepareError, match=rf"{phantoms}.*test_subjects=6"):
        prepare(phantoms, tmp_path / "out", _config(tiny_config, test_subjects=6))
    splits = split_subjects(["a", "b", "c"], dataclasses.replace(tiny_config.data, test_subjects=0, val_fraction=0.1))
    assert sorted(splits.values()) == ["train", "train", "val"]  # at least one val subject


def test_same_input_same_store_and_source_hash(tmp_path, phantoms, tiny_config):
    first = prepare(phantoms, tmp_path / "a", tiny_config).manifest
    second = prepare(phantoms, tmp_path / "b", tiny_config, workers=2).manifest
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    assert first["content_hash"] == second["content_hash"]
    files = sorted(phantoms.rglob("*.nii.gz"))
    lines = "".join(f"{p.relative_to(phantoms).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    assert first["source"] == {"path": str(phantoms), "content_hash": hashlib.sha256(lines.encode()).hexdigest()}


def test_rejected_subjects_are_listed_and_the_rest_prepared(tmp_path, phantoms, tiny_config, caplog):
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    (src / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz").unlink()  # missing modality
    flair = src / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])  # truncated gzip
    t2 = src / "BraTS2021_00003" / "BraTS2021_00003_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 20), np.int16), np.eye(4)), t2)  # shape mismatch
    cfg = _config(tiny_config, test_subjects=0, val_fraction=0.0)  # train only: a rejected subject empties no split
    with caplog.at_level(logging.WARNING, logger="synthmri.data.prepare"):
        result = prepare(src, tmp_path / "out", cfg)
    rejected = {r["subject"]: r for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert sorted(rejected) == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    assert "t1ce" in rejected["BraTS2021_00001"]["reason"]
    assert rejected["BraTS2021_00002"]["file"] == "BraTS2021_00002/BraTS2021_00002_flair.nii.gz"
    assert rejected["BraTS2021_00003"]["file"].endswith("_t2.nii.gz") and "differs" in rejected["BraTS2021_00003"]["reason"]
    for subject, row in rejected.items():
        assert any(subject in m and row["file"] in m for m in caplog.messages)
    store = SliceStore(tmp_path / "out", verify=True)
    assert store.subjects() == ["BraTS2021_00000", "BraTS2021_00004", "BraTS2021_00005"]
    assert sum(result.subjects.values()) == 3 and len(result.rejected) == 3
    assert result.exit_code(strict=True) == 1 and result.exit_code(strict=False) == 0
    assert "rejected 3" in result.summary()


def test_nothing_prepared_names_the_source(tmp_path, phantoms):
    src = tmp_path / "corrupt"
    shutil.copytree(phantoms, src)
    for path in src.rglob("*_t1.nii.gz"):
        path.write_bytes(b"not a nifti file")
    with pytest.raises(PrepareError, match=f"{src}.*none of 6"):
        prepare(src, tmp_path / "out", _config())
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert len(_rows(tmp_path / "out" / "rejected.csv")) == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=f"{tmp_path / 'empty'}: no complete BraTS subject"):
        prepare(tmp_path / "empty", tmp_path / "out", _config())
    with pytest.raises(PrepareError, match="not found"):
        prepare(tmp_path / "missing", tmp_path / "out", _config())


def test_killed_prepare_resumes_to_identical_shards(tmp_path, phantoms, tiny_config, monkeypatch):
    cfg = _config(tiny_config, shard_size=16)
    clean = prepare(phantoms, tmp_path / "clean", cfg).manifest
    assert len(clean["shards"]) > 3

    class Killed(prepare_module.StoreWriter):
        def _flush(self):
            if len(self._done) == 2:
                raise KeyboardInterrupt
            super()._flush()

    monkeypatch.setattr(prepare_module, "StoreWriter", Killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(phantoms, tmp_path / "resumed", cfg)
    assert len(list((tmp_path / "resumed" / "shards").glob("shard-*.npy"))) == 2
    monkeypatch.undo()
    resumed = prepare(phantoms, tmp_path / "resumed", cfg).manifest
    assert resumed["shards"] == clean["shards"] and resumed["content_hash"] == clean["content_hash"]


def test_phantom_store_fixture(phantom_store, tiny_config):
    store = SliceStore(phantom_store, verify=True)
    manifest = store.manifest
    n = tiny_config.phantom.subjects
    test = tiny_config.data.test_subjects
    val = int(np.floor(tiny_config.data.val_fraction * (n - test) + 0.5))
    assert manifest["counts"]["subjects"] == n
    assert manifest["subjects"] == {"train": n - test - val, "val": val, "test": test}
    assert {s: len(store.subjects(s)) for s in ("train", "val", "test")} == manifest["subjects"]
    assert manifest["counts"]["splits"] == {s: int((store.split == s).sum()) for s in ("train", "val", "test")}
    assert manifest["image_size"] == tiny_config.data.size
    assert len(manifest["shards"]) == -(-len(store) // tiny_config.data.shard_size)
    slices = store.read(store.indices("test"))
    assert set(np.unique(slices[:, 4]).tolist()) == {0, 51, 102, 204}


def test_s3_source_through_a_real_endpoint_matches_the_local_source(tmp_path, phantoms, tiny_config, monkeypatch,
                                                                     moto_s3):
    bucket = moto_s3.bucket("brats-source")
    client = moto_s3.client()
    for path in sorted(p for p in phantoms.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, "release/" + path.relative_to(phantoms).as_posix())
    client.put_object(Bucket=bucket, Key="release/README.txt", Body=b"not a volume")
    for name, value in moto_s3.credentials.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    remote = prepare(f"s3://{bucket}/release", tmp_path / "remote", tiny_config, endpoint_url=moto_s3.endpoint)
    local = prepare(phantoms, tmp_path / "local", tiny_config)
    assert remote.manifest["source"]["path"] == f"s3://{bucket}/release"
    assert remote.manifest["source"]["content_hash"] == local.manifest["source"]["content_hash"]
    assert remote.manifest["shards"] == local.manifest["shards"]
    assert not (tmp_path / ".remote.download").exists()  # the download is removed after success
    # The endpoint may come from the environment; a kept download directory is reused as it is.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    kept = tmp_path / "kept"
    again = prepare(f"s3://{bucket}/release", tmp_path / "again", tiny_config, download_dir=kept)
    assert again.manifest["shards"] == local.manifest["shards"] and (kept / "BraTS2021_00000").is_dir()


# ---------------------------------------------------------------------------- bad input, one case at a time

VICTIM = "BraTS2021_00001"


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Replace the file at `path` with `data`, keeping its affine unless one is given."""
    nib.save(nib.Nifti1Image(data, nib.load(path).affine if affine is None else affine), path)


def _file(src: Path, channel: str) -> Path:
    return src / VICTIM / f"{VICTIM}_{channel}.nii.gz"


def _volume(src: Path, channel: str) -> np.ndarray:
    return np.asarray(nib.load(_file(src, channel)).dataobj)


def _corrupt(src: Path, case: str) -> None:
    """Damage VICTIM in one way."""
    t2, flair = _file(src, "t2"), _file(src, "flair")
    if case == "truncated gzip":
        flair.write_bytes(flair.read_bytes()[:300])
    elif case == "random bytes":
        flair.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif case == "gzip of a truncated nifti":
        import gzip

        flair.write_bytes(gzip.compress(gzip.decompress(flair.read_bytes())[:2000]))
    elif case == "missing modality":
        flair.unlink()
    elif case == "different shape":
        _nifti(t2, _volume(src, "t2")[:-2])
    elif case == "different affine":
        image = nib.load(t2)
        shifted = image.affine.copy()
        shifted[0, 3] += 2.0
        _nifti(t2, np.asarray(image.dataobj), shifted)
    elif case == "4D volume":
        volume = _volume(src, "t2")
        _nifti(t2, np.stack([volume, volume], axis=-1))
    elif case == "2D volume":
        _nifti(t2, _volume(src, "t2")[:, :, 0])
    elif case in ("NaN voxels", "Inf voxels"):
        volume = _volume(src, "t2").astype(np.float32)
        volume[3, 3, 3] = np.nan if case == "NaN voxels" else np.inf
        _nifti(t2, volume)
    elif case == "all-zero volume":
        _nifti(t2, np.zeros_like(_volume(src, "t2")))
    elif case == "label outside the map":
        seg = _volume(src, "seg").copy()
        seg[2, 2, 2] = 7
        _nifti(_file(src, "seg"), seg)
    elif case == "non-numeric dtype":
        _nifti(t2, _volume(src, "t2").astype(np.complex64))
    elif case == "duplicate subject id":
        shutil.copytree(src / VICTIM, src / "again" / VICTIM)
    else:
        raise AssertionError(case)


BAD_INPUTS = {  # case -> (file the rejection names, words in the reason)
    "truncated gzip": ("_flair.nii.gz", ""),
    "random bytes": ("_flair.nii.gz", ""),
    "gzip of a truncated nifti": ("_flair.nii.gz", ""),
    "missing modality": ("_flair.nii.gz", "missing modality flair"),
    "different shape": ("_t2.nii.gz", "differs from t1"),
    "different affine": ("_t2.nii.gz", "affine differs from t1"),
    "4D volume": ("_t2.nii.gz", "not a 3D volume"),
    "2D volume": ("_t2.nii.gz", "not a 3D volume"),
    "NaN voxels": ("_t2.nii.gz", "NaN or Inf"),
    "Inf voxels": ("_t2.nii.gz", "NaN or Inf"),
    "all-zero volume": ("_t2.nii.gz", "all-zero"),
    "label outside the map": ("_seg.nii.gz", "labels [7] not in label map"),
    "non-numeric dtype": ("_t2.nii.gz", "non-numeric voxel type complex64"),
    "duplicate subject id": (VICTIM, "duplicate subject id"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_rejects_one_subject_names_it_and_prepares_the_rest(case, tmp_path, phantoms, tiny_config, caplog):
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    _corrupt(src, case)
    with caplog.at_level(logging.WARNING, logger="synthmri.data.prepare"):
        result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1))
    rows = _rows(tmp_path / "out" / "rejected.csv")
    assert rows and {row["subject"] for row in rows} == {VICTIM}, rows
    file_part, words = BAD_INPUTS[case]
    for row in rows:
        assert file_part in row["file"] and words in row["reason"] and row["reason"], row
        assert any(VICTIM in m and row["file"] in m for m in caplog.messages)
    store = SliceStore(tmp_path / "out", verify=True)
    assert VICTIM not in store.subjects() and len(store.subjects()) == 5
    assert result.exit_code(strict=False) == 0 and result.exit_code(strict=True) == 1


def test_cli_exit_codes_strict_and_nothing_prepared(tmp_path, phantoms, tiny_config):
    from synthmri.cli import main

    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    _corrupt(src, "random bytes")
    tiny = str(Path(__file__).resolve().parents[1] / "profiles" / "tiny.yaml")
    common = ["prepare", "--profile", tiny, "--source", str(src), "--workers", "1", "--set", "data.test_subjects=1"]
    assert main([*common, "--out", str(tmp_path / "lenient")]) == 0
    assert main([*common, "--out", str(tmp_path / "strict"), "--strict"]) == 1
    assert SliceStore(tmp_path / "strict").subjects()  # strict still writes the good subjects
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "--profile", tiny, "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "none")]) == 1
    assert (tmp_path / "none" / "rejected.csv").read_text() == "subject,file,reason\n"
    assert main(["prepare", "--profile", tiny, "--source", str(src), "--out", str(tmp_path / "w"), "--workers", "0"]) == 2


def test_sigkilled_prepare_resumes_to_a_byte_identical_store(tmp_path, tiny_config):
    """A real SIGKILL mid-run (no clean-up runs), then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "brats"
    write_phantom_dataset(src, dataclasses.replace(tiny_config.phantom, subjects=12, shape=(64, 64, 40)))
    tiny = str(Path(__file__).resolve().parents[1] / "profiles" / "tiny.yaml")

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "synthmri", "prepare", "--profile", tiny, "--source", str(src), "--out", str(out),
                "--workers", "1", "--seed", "3", "--set", "data.shard_size=8"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "clean"), check=True, capture_output=True, env=env, timeout=300)
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list((killed / "shards").glob("shard-*.npy"))) < 2:
            assert process.poll() is None, "prepare finished before it could be killed"
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "manifest.json").exists(), "killed after the store was complete: nothing to resume"
    shards_before = {p.name: p.read_bytes() for p in (killed / "shards").glob("shard-*.npy")}

    subprocess.run(command(killed), check=True, capture_output=True, env=env, timeout=300)
    clean_manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    resumed_manifest = json.loads((killed / "manifest.json").read_text())
    assert resumed_manifest["shards"] == clean_manifest["shards"]  # names, rows and sha256 of every shard
    assert resumed_manifest["content_hash"] == clean_manifest["content_hash"]
    for name in ("index.csv", "subjects.csv", "rejected.csv", "manifest.json"):
        assert (killed / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    for shard in clean_manifest["shards"]:
        assert hashlib.sha256((killed / "shards" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    # The shards finished before the kill were kept, not rewritten.
    for name, data in shards_before.items():
        assert (killed / "shards" / name).read_bytes() == data
    SliceStore(killed, verify=True)


def test_worker_count_does_not_change_the_bytes(tmp_path, phantoms, tiny_config):
    one = prepare(phantoms, tmp_path / "one", tiny_config, workers=1).manifest
    two = prepare(phantoms, tmp_path / "two", tiny_config, workers=2).manifest
    assert one["shards"] == two["shards"] and one["content_hash"] == two["content_hash"]
    assert (tmp_path / "one" / "index.csv").read_bytes() == (tmp_path / "two" / "index.csv").read_bytes()


@pytest.mark.parametrize("threshold", [-1, 0, 49.5, 50, 51, 254, 255])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_foreground_in_voxel_units_equals_scaling_every_voxel(threshold, dtype):
    from synthmri.data.slicing import foreground, foreground_fraction, to_uint8

    rng = np.random.default_rng(int(threshold * 10) % 97)
    high = 250 if dtype == np.uint8 else 3001
    volume = rng.integers(0 if dtype == np.uint8 else -20, high, size=(20, 18, 30)).astype(dtype)
    peak = float(np.float32(volume.max()))
    data = dataclasses.replace(load_config(None).data, intensity_threshold=threshold, pad_to=32)
    expected = foreground_fraction(to_uint8(volume, peak), threshold, 32)
    assert np.array_equal(foreground(volume, peak, data), expected)


def test_isal_and_zlib_give_the_same_store_and_the_same_rejections(tmp_path, phantoms, tiny_config, monkeypatch):
    """prepare decompresses with ISA-L where installed: same shards, index and rejections as zlib."""
    from synthmri.data import slicing

    assert slicing.gzip_decompressor()[0] == "isal"  # pinned in the lock: the default here
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    flair = _file(src, "flair")
    damaged = bytearray(flair.read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = bytes(64)  # a corrupt deflate block mid-stream
    flair.write_bytes(bytes(damaged))
    cfg = _config(tiny_config, test_subjects=1)
    made = {}
    for name, decompressor in (("isal", slicing.gzip_decompressor()),
                               ("zlib", ("zlib", gzip.decompress, (zlib.error,)))):
        monkeypatch.setattr(slicing, "gzip_decompressor", lambda found=decompressor: found)
        made[name] = prepare(src, tmp_path / name, cfg, workers=1).manifest  # in-process: the patch applies
    assert made["isal"]["shards"] == made["zlib"]["shards"] and made["isal"]["content_hash"] == made["zlib"]["content_hash"]
    for file in ("index.csv", "subjects.csv"):
        assert (tmp_path / "isal" / file).read_bytes() == (tmp_path / "zlib" / file).read_bytes()
    rejected = {name: _rows(tmp_path / name / "rejected.csv") for name in made}
    assert [(r["subject"], r["file"]) for r in rejected["isal"]] == [(r["subject"], r["file"]) for r in rejected["zlib"]]
    assert rejected["isal"] and rejected["isal"][0]["subject"] == VICTIM
