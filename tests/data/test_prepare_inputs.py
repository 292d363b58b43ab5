"""prepare on awkward sources: links, unreadable folders, junk files, orientation, empty splits.

Each test here is a case in which ``prepare`` used to drop or misread subjects without saying
so: a symlinked or unreadable subject folder vanished, a split without slices still made a
complete store, one stray NIfTI or macOS junk turned a BraTS tree into the generic layout,
flipped voxels gave flipped slices, BraTS 2020's subject 355 lost its segmentation, and a FIFO
was reported as a missing file.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmri.config import Config, load_config
from synthmri.data.layouts import detect_layout, find_subjects
from synthmri.data.phantom import phantom_affine, write_phantom_dataset
from synthmri.data.prepare import PrepareError, prepare
from synthmri.data.splits import split_subjects
from synthmri.data.store import SliceStore

from . import as_brats2023

CHANNELS = ("t1", "t1ce", "t2", "flair", "seg")
TINY = str(Path(__file__).resolve().parents[1] / "profiles" / "tiny.yaml")


def _config(base: Config, **data) -> Config:
    return dataclasses.replace(base, data=dataclasses.replace(base.data, **data))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _slices_by_subject(store: SliceStore) -> dict[str, np.ndarray]:
    return {s: store.read(np.flatnonzero(store.subject == s)) for s in store.subjects()}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("inputs") / "brats"
    write_phantom_dataset(root, dataclasses.replace(tiny_config.phantom, subjects=5))
    return root


# ------------------------------------------------------------------------ 1. links, unreadable folders


def test_a_symlinked_subject_folder_is_followed(tmp_path, phantoms, tiny_config):
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    shutil.copytree(phantoms, src)
    elsewhere.mkdir()
    shutil.move(src / "BraTS2021_00003", elsewhere / "BraTS2021_00003")
    (src / "BraTS2021_00003").symlink_to(elsewhere / "BraTS2021_00003", target_is_directory=True)
    (src / "loop").symlink_to(src, target_is_directory=True)  # read once, never walked forever
    (src / "again").symlink_to(src / "BraTS2021_00001", target_is_directory=True)  # the same folder twice
    cfg = _config(tiny_config, test_subjects=1)
    result = prepare(src, tmp_path / "out", cfg)
    assert result.rejected == []
    assert SliceStore(tmp_path / "out").subjects() == [f"BraTS2021_{n:05d}" for n in range(5)]
    original = SliceStore(prepare(phantoms, tmp_path / "orig", cfg).out)
    assert result.manifest["shards"] == original.manifest["shards"]


def test_a_broken_symlinked_subject_folder_is_rejected_by_name(tmp_path, phantoms, tiny_config, caplog):
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    (src / "BraTS2021_00009").symlink_to(tmp_path / "gone", target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1))
    (row,) = _rows(tmp_path / "out" / "rejected.csv")
    assert row["subject"] == "BraTS2021_00009" and "broken symbolic link" in row["reason"]
    assert any("BraTS2021_00009" in m and "broken" in m for m in caplog.messages)
    assert result.exit_code(strict=True) == 1


def test_an_unreadable_subject_folder_is_rejected_by_name(tmp_path, phantoms, tiny_config, caplog, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    victim = src / "BraTS2021_00002"
    victim.chmod(0)
    try:
        try:
            os.listdir(victim)
        except PermissionError:
            pass
        else:  # root reads anything: deny the listing the way the kernel would for others
            real_scandir = os.scandir

            def scandir(path="."):
                if not isinstance(path, int) and os.path.realpath(path) == os.path.realpath(victim):
                    raise PermissionError(13, "Permission denied", str(path))
                return real_scandir(path)

            monkeypatch.setattr(os, "scandir", scandir)
        with caplog.at_level(logging.WARNING):
            result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1))
    finally:
        victim.chmod(0o755)
    (row,) = _rows(tmp_path / "out" / "rejected.csv")
    assert row["subject"] == "BraTS2021_00002" and row["file"] == "BraTS2021_00002"
    assert "cannot be read" in row["reason"] and "Permission denied" in row["reason"]
    assert any("BraTS2021_00002" in m and "cannot be read" in m for m in caplog.messages)
    assert sum(result.subjects.values()) == 4 and result.exit_code(strict=True) == 1


# ------------------------------------------------------------------------ 2. a split without slices


def test_a_store_whose_only_test_subject_was_rejected_fails_naming_the_split(tmp_path, phantoms, tiny_config):
    from synthmri.cli import main

    cfg = _config(tiny_config, test_subjects=1)
    names = sorted(p.name for p in phantoms.iterdir())
    (test_subject,) = [s for s, split in split_subjects(names, cfg.data).items() if split == "test"]
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    flair = src / test_subject / f"{test_subject}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:300])  # the test subject is rejected after the split
    with pytest.raises(PrepareError, match=r"no slices in the test split \(all 1 of its subject"):
        prepare(src, tmp_path / "lib", cfg)
    assert not (tmp_path / "lib" / "manifest.json").exists()
    assert [r["subject"] for r in _rows(tmp_path / "lib" / "rejected.csv")] == [test_subject]
    out = tmp_path / "cli"
    args = ["prepare", "--profile", TINY, "--source", str(src), "--out", str(out), "--workers", "1",
            "--set", "data.test_subjects=1"]
    assert main(args) == 1
    assert not (out / "manifest.json").exists()


def test_no_slice_kept_exits_1_and_leaves_no_manifest(tmp_path, phantoms, capsys):
    from synthmri.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an earlier store there must not survive as complete
    args = ["prepare", "--profile", TINY, "--source", str(phantoms), "--out", str(out), "--workers", "1",
            "--set", "data.test_subjects=1", "--set", "data.intensity_threshold=255"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "no slices in the train split" in error and "kept 0 of" in error
    assert not (out / "manifest.json").exists()


# ------------------------------------------------------------------------ 3. layout detection, junk




def test_junk_and_one_stray_nifti_keep_the_brats2023_layout(tmp_path, phantoms, tiny_config, caplog):
    src = tmp_path / "gli"
    shutil.copytree(phantoms, src)
    as_brats2023(src)
    junk = src / "__MACOSX" / "BraTS-GLI-00000-000"
    junk.mkdir(parents=True)
    (junk / "._BraTS-GLI-00000-000-t1n.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (src / "__MACOSX" / "._x.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (src / "BraTS-GLI-00001-000" / "._BraTS-GLI-00001-000-seg.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (src / ".DS_Store").write_bytes(b"Bud1")
    shutil.copy(src / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1n.nii.gz", src / "atlas_mni152.nii.gz")
    with caplog.at_level(logging.WARNING, logger="synthmri.data.layouts"):
        layout, subjects, rejected, _ = find_subjects(src)
    assert layout.name == "brats2023" and len(subjects) == 5 and rejected == []
    assert any("atlas_mni152.nii.gz" in m and "ignor" in m for m in caplog.messages)  # the stray file is named
    assert not any("._" in m for m in caplog.messages if "ignor" in m)  # junk is skipped, not a stray file
    result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1))
    assert result.rejected == [] and result.manifest["layout"] == "brats2023"


def test_apple_double_files_beside_the_volumes_are_not_duplicates(tmp_path, phantoms, tiny_config):
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    for path in sorted(src.rglob("*.nii.gz")):
        fork = path.with_name("._" + path.name)
        fork.write_bytes(b"\x00\x05\x16\x07")
        mirror = src / "__MACOSX" / path.parent.name / fork.name
        mirror.parent.mkdir(parents=True, exist_ok=True)
        mirror.write_bytes(b"\x00\x05\x16\x07")
    result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1))
    assert result.rejected == [] and result.manifest["layout"] == "brats2021"
    assert sum(result.subjects.values()) == 5


def test_falling_back_to_the_generic_layout_is_a_warning_with_the_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="synthmri.data.layouts"):
        assert detect_layout(["S1_t1.nii.gz", "S1_seg.nii.gz"]).name == "generic"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "generic" in record.message and "S1_t1.nii.gz" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthmri.data.layouts"):  # a minority of BraTS names
        assert detect_layout(["BraTS2021_00001_t1.nii.gz", "a_t1.nii.gz", "b_t1.nii.gz"]).name == "generic"
    assert "only 1 of 3" in caplog.text and "brats2021" in caplog.text


# ------------------------------------------------------------------------ 4. orientation


def test_flipped_and_permuted_voxels_with_their_affine_give_the_same_slices(tmp_path):
    rng = np.random.default_rng(3)
    shape, spacing = (16, 12, 5), (0.9, 0.8, 3.0)
    volumes = {c: rng.integers(60, 250, size=shape).astype(np.int16) for c in CHANNELS[:4]}
    volumes["seg"] = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape)
    base = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # BraTS's LPS voxel axes
    base[:3, 3] = [10.0, -4.0, 2.5]
    source = nib.orientations.io_orientation(base)
    for codes in ("LPS", "RAS", "RPI", "ASL"):
        name = f"S_{codes}"
        (tmp_path / "src" / name).mkdir(parents=True)
        transform = nib.orientations.ornt_transform(source, nib.orientations.axcodes2ornt(tuple(codes)))
        for channel, volume in volumes.items():
            image = nib.Nifti1Image(volume, base).as_reoriented(transform)  # same anatomy, other voxel order
            assert "".join(nib.aff2axcodes(image.affine)) == codes
            nib.save(image, tmp_path / "src" / name / f"{name}_{channel}.nii.gz")
    cfg = load_config(None, {"data.test_subjects": 0, "data.val_fraction": 0.0, "data.split": "seeded",
                             "data.pad_to": 32, "data.size": 32, "data.min_foreground_fraction": 0.0})
    result = prepare(tmp_path / "src", tmp_path / "out", cfg)
    store = SliceStore(tmp_path / "out")
    slices = _slices_by_subject(store)
    for codes in ("RAS", "RPI", "ASL"):
        assert np.array_equal(store.z[store.subject == f"S_{codes}"], store.z[store.subject == "S_LPS"])
        assert np.array_equal(slices[f"S_{codes}"], slices["S_LPS"]), codes
    table = {r["subject"]: r for r in _rows(tmp_path / "out" / "subjects.csv")}
    assert {s: r["orientation"] for s, r in table.items()} == {f"S_{c}": c for c in ("LPS", "RAS", "RPI", "ASL")}
    assert {(r["spacing_x"], r["spacing_y"], r["spacing_z"]) for r in table.values()} == {("0.9", "0.8", "3")}
    assert result.manifest["orientation"] == {"canonical": "LPS", "source": {"ASL": 1, "LPS": 1, "RAS": 1, "RPI": 1}}


def test_phantoms_are_canonical_so_their_voxels_are_used_as_stored(phantom_store, tiny_config):
    assert "".join(nib.aff2axcodes(phantom_affine(tuple(tiny_config.phantom.shape)))) == "LPS"
    manifest = json.loads((phantom_store / "manifest.json").read_text())
    assert manifest["orientation"] == {"canonical": "LPS", "source": {"LPS": tiny_config.phantom.subjects}}


# ------------------------------------------------------------------------ 5. BraTS 2020's subject 355


def _as_2020(phantoms: Path, src: Path, numbers: list[int]) -> None:
    for number, folder in zip(numbers, sorted(p for p in phantoms.iterdir() if p.is_dir())):
        name = f"BraTS20_Training_{number:03d}"
        (src / name).mkdir(parents=True)
        for path in folder.glob("*.nii.gz"):
            shutil.copy(path, src / name / path.name.replace(folder.name, name))


def test_brats2020_subject_355_segmentation_under_its_odd_name(tmp_path, phantoms, tiny_config):
    src = tmp_path / "b20"
    _as_2020(phantoms, src, [1, 2, 3, 355, 356])
    seg = src / "BraTS20_Training_355" / "BraTS20_Training_355_seg.nii.gz"
    (seg.parent / "W39_1998.09.19_Segm.nii").write_bytes(gzip.decompress(seg.read_bytes()))  # as released: not gzipped
    seg.unlink()
    result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1))
    assert result.manifest["layout"] == "brats2020" and result.rejected == []
    assert "BraTS20_Training_355" in SliceStore(tmp_path / "out").subjects()
    # Only in its own subject's folder: elsewhere the name is no segmentation.
    other = src / "BraTS20_Training_356" / "BraTS20_Training_356_seg.nii.gz"
    other.rename(other.with_name("W39_1998.09.19_Segm.nii"))
    layout, _, rejected, _ = find_subjects(src)
    assert layout.name == "brats2020"
    assert [(r.subject, r.reason) for r in rejected] == [("BraTS20_Training_356", "missing modality seg")]


# ------------------------------------------------------------------------ 6. a FIFO as a modality


def test_a_fifo_named_as_a_modality_is_not_a_regular_file(tmp_path, phantoms, tiny_config, caplog):
    src = tmp_path / "src"
    shutil.copytree(phantoms, src)
    fifo = src / "BraTS2021_00004" / "BraTS2021_00004_t2.nii.gz"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it would block until a writer comes: prepare must not
    with caplog.at_level(logging.WARNING, logger="synthmri.data.prepare"):
        result = prepare(src, tmp_path / "out", _config(tiny_config, test_subjects=1), workers=1)
    (row,) = _rows(tmp_path / "out" / "rejected.csv")
    assert row["subject"] == "BraTS2021_00004" and row["file"] == "BraTS2021_00004/BraTS2021_00004_t2.nii.gz"
    assert "not a regular file" in row["reason"] and "FIFO" in row["reason"] and "BraTS2021_00004_t2" in row["reason"]
    assert any("not a regular file" in m for m in caplog.messages)
    assert sum(result.subjects.values()) == 4


# ------------------------------------------------------------------------ 7. what --out already holds


def test_prepare_never_writes_over_a_synthetic_store_unless_told(tmp_path, phantoms, tiny_config):
    from synthmri.data.store import SliceRow, StoreWriter
    from synthmri.records import OutputError
    from synthmri.stages.prepare import run as prepare_stage

    size = tiny_config.data.size
    synthetic = tmp_path / "synthetic-ddpm"
    with StoreWriter(synthetic, image_size=size, source={"path": "g"}, generator={"name": "ddpm"}) as writer:
        writer.add(np.zeros((2, 5, size, size), np.uint8), [SliceRow(f"ddpm-{i}", "ddpm", -1, "train") for i in range(2)])
    cfg = _config(tiny_config, test_subjects=1)
    with pytest.raises(OutputError, match="synthetic-ddpm holds a synthetic slice store of generator 'ddpm'; "
                                          "prepare will not write over it"):
        prepare_stage(phantoms, synthetic, cfg)
    assert set(SliceStore(synthetic).subject) == {"ddpm"}
    prepare_stage(phantoms, synthetic, cfg, overwrite=True)
    assert "ddpm" not in set(SliceStore(synthetic).subject)
    prepare_stage(phantoms, synthetic, cfg)  # a real store again: its own kind
