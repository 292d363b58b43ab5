"""Phantom subjects: BraTS layout, headers, labels, MR contrasts and byte-exact determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmri.config import PhantomConfig
from synthmri.data.phantom import make_phantom_subject, write_phantom_dataset

SHAPE = (64, 64, 24)
CHANNELS = ("t1", "t1ce", "t2", "flair", "seg")


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "brats"
    paths = write_phantom_dataset(root, PhantomConfig(subjects=3, shape=SHAPE, seed=7))
    assert paths == [root / f"BraTS2021_{i:05d}" for i in range(3)]
    return root


@pytest.fixture(scope="module")
def subject() -> dict[str, np.ndarray]:
    """One subject at half BraTS resolution: enough voxels per tissue for contrast checks."""
    return make_phantom_subject((120, 120, 78), np.random.default_rng([3, 1]))


def test_brats_layout_shapes_dtype_and_spacing(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == [f"BraTS2021_{i:05d}" for i in range(3)]
    for folder in dataset.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{folder.name}_{c}.nii.gz" for c in CHANNELS)
        for channel in CHANNELS:
            image = nib.load(folder / f"{folder.name}_{channel}.nii.gz")
            assert image.shape == SHAPE
            assert image.get_data_dtype() == np.int16
            spacing = np.abs(np.diag(image.affine)[:3])
            np.testing.assert_allclose(spacing, [240 / 64, 240 / 64, 155 / 24])
            np.testing.assert_allclose(image.header.get_zooms(), spacing, rtol=1e-6)
            np.testing.assert_allclose(spacing * SHAPE, [240, 240, 155])  # the BraTS field of view
            assert image.header.get_xyzt_units()[0] == "mm"


def test_every_subject_has_all_tumour_labels_inside_the_brain(dataset):
    for folder in dataset.iterdir():
        seg = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj)
        t1 = np.asarray(nib.load(folder / f"{folder.name}_t1.nii.gz").dataobj)
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        assert (t1[seg > 0] > 0).all()  # tumour only where there is brain
        assert (t1 >= 0).all() and t1.max() > 0
        assert t1[0].max() == 0 and t1[:, :, -1].max() == 0  # skull-stripped: background is 0


def test_subjects_differ(dataset):
    segs = [np.asarray(nib.load(f / f"{f.name}_seg.nii.gz").dataobj) for f in sorted(dataset.iterdir())]
    brains = [np.asarray(nib.load(f / f"{f.name}_t1.nii.gz").dataobj) > 0 for f in sorted(dataset.iterdir())]
    assert len({int((s > 0).sum()) for s in segs}) == 3  # tumour sizes differ
    assert len({int(b.sum()) for b in brains}) == 3  # brain sizes differ
    centroids = [np.argwhere(s > 0).mean(axis=0) for s in segs]
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1 :]) > 1.0


def test_healthy_tissue_contrasts(subject):
    """CSF (brightest on T2) is dark on T1 and suppressed on FLAIR; white matter the reverse."""
    healthy = (subject["t1"] > 0) & (subject["seg"] == 0)
    t1, t2, flair = (subject[m][healthy].astype(float) for m in ("t1", "t2", "flair"))
    csf = t2 >= np.quantile(t2, 0.97)
    wm = t2 <= np.quantile(t2, 0.3)
    gm = (t2 > np.quantile(t2, 0.6)) & (t2 < np.quantile(t2, 0.85))
    assert t1[wm].mean() > t1[gm].mean() > t1[csf].mean()  # T1: WM > GM > CSF
    assert flair[csf].mean() < flair[wm].mean()  # FLAIR: CSF suppressed
    assert t2[csf].mean() > 1.5 * t2[wm].mean()


def test_tumour_contrasts(subject):
    seg = subject["seg"]
    healthy = (subject["t1"] > 0) & (seg == 0)
    mean = {m: {k: subject[m][seg == k].mean() for k in (1, 2, 4)} | {0: subject[m][healthy].mean()} for m in CHANNELS[:4]}
    assert mean["t1ce"][4] > 1.3 * mean["t1ce"][0]  # enhancing rim bright after gadolinium
    assert mean["t1ce"][4] > mean["t1"][4] * 1.3 * mean["t1ce"][0] / mean["t1"][0]
    assert mean["t1"][1] < 0.6 * mean["t1"][0] and mean["t1ce"][1] < 0.6 * mean["t1ce"][0]  # necrosis dark on T1
    assert mean["t2"][1] > mean["t2"][0] and mean["t2"][2] > mean["t2"][0]  # necrosis, oedema bright on T2
    assert mean["flair"][2] > 1.5 * mean["flair"][0]  # oedema bright on FLAIR
    assert mean["flair"][2] == max(mean["flair"].values())


def test_same_seed_same_bytes_and_independent_of_count(tmp_path, dataset):
    write_phantom_dataset(tmp_path / "again", PhantomConfig(subjects=2, shape=SHAPE, seed=7))
    again, first = _digests(tmp_path / "again"), _digests(dataset)
    assert again == {k: v for k, v in first.items() if not k.startswith("BraTS2021_00002")}
    raw = (dataset / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip without a timestamp


def test_different_seed_different_subjects(tmp_path, dataset):
    write_phantom_dataset(tmp_path / "other", PhantomConfig(subjects=1, shape=SHAPE, seed=8))
    other, first = _digests(tmp_path / "other"), _digests(dataset)
    assert all(other[k] != first[k] for k in other)


@pytest.mark.parametrize("cfg", [PhantomConfig(subjects=0, shape=SHAPE), PhantomConfig(subjects=1, shape=(64, 64, 2))])
def test_invalid_config(tmp_path, cfg):
    with pytest.raises(ValueError, match="phantom"):
        write_phantom_dataset(tmp_path, cfg)
