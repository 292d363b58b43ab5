"""BraTS layouts: 2020, 2021 and 2023 names found automatically, overridable, labels per release."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from synthmri.config import BRATS_RELEASES, DATA_LAYOUTS
from synthmri.data.layouts import LAYOUT_NAMES, LAYOUTS, detect_layout, find_subjects
from synthmri.data.phantom import write_phantom_dataset
from synthmri.data.prepare import PrepareError, prepare
from synthmri.data.store import SliceStore, StoreError

from . import as_brats2023

NAMES = {
    "brats2020": ["BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001_t1ce.nii.gz", "BraTS20_Training_001_seg.nii"],
    "brats2021": ["BraTS2021_00000_flair.nii.gz", "BraTS2021_01666_t2.nii.gz"],
    "brats2023": ["BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00002-001-t2f.nii.gz", "BraTS-GLI-00002-001-seg.nii.gz"],
    "generic": ["S1_t1.nii.gz", "case-7_seg.nii.gz"],
}


def test_the_layouts_are_the_configs_allowed_values():
    assert LAYOUT_NAMES == DATA_LAYOUTS == ("auto", *LAYOUTS)
    assert set(BRATS_RELEASES) == set(LAYOUTS) - {"generic"}


@pytest.mark.parametrize("layout", sorted(NAMES))
def test_each_release_is_detected_from_its_names(layout):
    assert detect_layout(NAMES[layout]).name == layout


def test_names_match_their_subject_and_channel():
    assert LAYOUTS["brats2020"].match("BraTS20_Training_369_flair.nii.gz") == ("BraTS20_Training_369", "flair")
    assert LAYOUTS["brats2023"].match("BraTS-GLI-01666-000-t1c.nii.gz") == ("BraTS-GLI-01666-000", "t1ce")
    assert LAYOUTS["brats2021"].match("BraTS-GLI-01666-000-t1c.nii.gz") is None
    assert LAYOUTS["generic"].match("BraTS2021_00001_t1ce.nii.gz") == ("BraTS2021_00001", "t1ce")
    assert LAYOUTS["brats2021"].match("BraTS2021_00001_t1ce.json") is None


def test_two_releases_in_one_source_are_refused():
    with pytest.raises(StoreError, match="2 brats2021, 1 brats2023.*--layout"):
        detect_layout(NAMES["brats2021"] + NAMES["brats2023"][:1])




@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("layouts") / "brats"
    write_phantom_dataset(root, dataclasses.replace(tiny_config.phantom, subjects=4))
    return root


def test_brats2023_is_found_and_prepared_with_its_label_map(tmp_path, phantoms, tiny_config):
    src = tmp_path / "gli"
    shutil.copytree(phantoms, src)
    as_brats2023(src)
    layout, subjects, rejected, _ = find_subjects(src)
    assert layout.name == "brats2023" and len(subjects) == 4 and not rejected
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, test_subjects=1))
    prepare(src, tmp_path / "out", cfg)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["layout"] == "brats2023" and manifest["label_map"] == {"1": 51, "2": 102, "3": 204}
    # Same voxels, other names and ET number: the slices equal those of the 2021 original.
    prepare(phantoms, tmp_path / "orig", cfg)
    renamed, original = SliceStore(tmp_path / "out"), SliceStore(tmp_path / "orig")
    assert np.array_equal(renamed.read(np.arange(len(renamed))), original.read(np.arange(len(original))))


def test_layout_can_be_forced_and_a_wrong_one_finds_nothing(tmp_path, phantoms, tiny_config):
    src = tmp_path / "gli"
    shutil.copytree(phantoms, src)
    as_brats2023(src)
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, layout="brats2021"))
    with pytest.raises(PrepareError, match="no complete BraTS subject"):
        prepare(src, tmp_path / "out", cfg)
    # Forcing 2023 names with an explicit label map: the map in the config wins over the layout's.
    explicit = dataclasses.replace(tiny_config, data=dataclasses.replace(
        tiny_config.data, layout="brats2023", test_subjects=1, label_map={1: 51, 2: 102, 3: 204, 4: 204}))
    prepare(src, tmp_path / "explicit", explicit)
    assert json.loads((tmp_path / "explicit" / "manifest.json").read_text())["label_map"]["4"] == 204


def test_brats2020_names_prepare(tmp_path, phantoms, tiny_config):
    src = tmp_path / "b20"
    for n, folder in enumerate(sorted(p for p in phantoms.iterdir() if p.is_dir()), start=1):
        name = f"BraTS20_Training_{n:03d}"
        (src / name).mkdir(parents=True)
        for path in folder.glob("*.nii.gz"):
            shutil.copy(path, src / name / path.name.replace(folder.name, name))
    cfg = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, test_subjects=1))
    result = prepare(src, tmp_path / "out", cfg)
    assert result.manifest["layout"] == "brats2020" and sum(result.subjects.values()) == 4
