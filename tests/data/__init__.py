"""Helpers shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: BraTS 2023 (GLI) file suffix of each BraTS 2021 channel name.
GLI_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


def as_brats2023(src: Path) -> None:
    """Rename a BraTS-2021-layout phantom tree to BraTS 2023 names, ET relabelled 4 -> 3."""
    for n, folder in enumerate(sorted(p for p in src.iterdir() if p.is_dir())):
        name = f"BraTS-GLI-{n:05d}-000"
        for path in sorted(folder.glob("*.nii.gz")):
            channel = path.name[len(folder.name) + 1:-len(".nii.gz")]
            target = folder / f"{name}-{GLI_SUFFIX[channel]}.nii.gz"
            if channel == "seg":
                image = nib.load(path)
                seg = np.asarray(image.dataobj).copy()
                seg[seg == 4] = 3
                nib.save(nib.Nifti1Image(seg, image.affine), target)
                path.unlink()
            else:
                path.rename(target)
        folder.rename(src / name)
