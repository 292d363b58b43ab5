"""BraTS folder layouts: how subjects and their five files are named, and their labels.

=========  ==============================  =================================  ==========
layout     subject id                      files                              ET label
=========  ==============================  =================================  ==========
brats2020  ``BraTS20_Training_NNN``        ``<id>_{t1,t1ce,t2,flair,seg}``    4
brats2021  ``BraTS2021_NNNNN``             ``<id>_{t1,t1ce,t2,flair,seg}``    4
brats2023  ``BraTS-GLI-NNNNN-NNN``         ``<id>-{t1n,t1c,t2w,t2f,seg}``     3
generic    anything                        ``<id>[_-]<any suffix above>``     4
=========  ==============================  =================================  ==========

``data.layout: auto`` finds the layout from the file names; ``generic`` takes every
``<id>_<suffix>.nii[.gz]`` (phantoms, hand-made test subjects). The label map comes from
``data.label_map`` when set, else from the layout.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from synthmri.config import BRATS_RELEASES, DATA_LAYOUTS, SLICE_CHANNELS
from synthmri.data.store import StoreError

BRATS_LABELS = {1: 51, 2: 102, 4: 204}  # 1 NCR/NET, 2 ED, 4 ET (2017-2021)
BRATS_2023_LABELS = {1: 51, 2: 102, 3: 204}  # ET renumbered to 3

_CLASSIC = {channel: channel for channel in SLICE_CHANNELS}  # t1, t1ce, t2, flair, seg
_GLI = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}


@dataclass(frozen=True)
class Layout:
    """How one BraTS release names its files.

    Attributes:
        name: ``brats2020``, ``brats2021``, ``brats2023`` or ``generic``.
        subject: regular expression of a subject id.
        separator: characters allowed between the id and the channel suffix.
        suffixes: file-name suffix -> channel.
        label_map: BraTS label id -> annotation value.
    """

    name: str
    subject: str
    separator: str
    suffixes: dict[str, str]
    label_map: dict[int, int]

    def match(self, filename: str) -> tuple[str, str] | None:
        """(subject id, channel) of a NIfTI file name in this layout, else None."""
        found = re.fullmatch(rf"(?P<id>{self.subject})[{self.separator}](?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?",
                             filename)
        if found is None or found["suffix"].lower() not in self.suffixes:
            return None
        return found["id"], self.suffixes[found["suffix"].lower()]


LAYOUTS: dict[str, Layout] = {
    "brats2020": Layout("brats2020", r"BraTS20_(?:Training|Validation)_\d{3}", "_", _CLASSIC, BRATS_LABELS),
    "brats2021": Layout("brats2021", r"BraTS2021_\d{5}", "_", _CLASSIC, BRATS_LABELS),
    "brats2023": Layout("brats2023", r"BraTS-[A-Z]{2,4}-\d{5}-\d{3}", "-", _GLI, BRATS_2023_LABELS),
    "generic": Layout("generic", r".+?", "_-", {**_CLASSIC, **_GLI}, BRATS_LABELS),
}
#: ``data.layout`` values: ``auto`` and every layout above (:data:`synthmri.config.DATA_LAYOUTS`).
LAYOUT_NAMES = DATA_LAYOUTS


@dataclass(frozen=True)
class Subject:
    """One subject's five files (paths under the source)."""

    name: str
    folder: str  # relative to the source
    files: dict[str, Path]  # channel -> path


@dataclass(frozen=True)
class Rejection:
    """A subject left out, the file at fault (relative to the source) and why."""

    subject: str
    file: str
    reason: str


def detect_layout(names: list[str]) -> Layout:
    """The layout of a set of NIfTI file names: the one release that names them all.

    Files of no release fall back to ``generic``; files of several releases are an error,
    because their labels differ (ET is 4 before 2023, 3 after).

    Raises:
        StoreError: names of two or more releases (counts given; pass ``--layout``).
    """
    releases = Counter(name for name in BRATS_RELEASES
                       for filename in names if LAYOUTS[name].match(filename))
    if len(releases) > 1:
        found = ", ".join(f"{count} {name}" for name, count in sorted(releases.items()))
        raise StoreError(f"files of several BraTS layouts ({found} files): prepare one release at a time, "
                         "or choose one with --layout")
    if releases and sum(releases.values()) == len(names):
        return LAYOUTS[next(iter(releases))]
    return LAYOUTS["generic"]


def find_subjects(source: Path, layout: str = "auto") -> tuple[Layout, list[Subject], list[Rejection], list[Path]]:
    """Subjects under `source`: folders of ``<id><sep><suffix>.nii[.gz]`` files.

    Args:
        source: the dataset's root directory.
        layout: a name of :data:`LAYOUTS`, or ``auto`` to detect it.

    Returns:
        The layout, complete subjects sorted by name, rejections for incomplete, duplicated
        or ambiguous ones, and the files of the rejected subjects (they still count towards
        the source's hash).

    Raises:
        StoreError: an unknown layout name, or mixed layouts under ``auto``.
    """
    if layout not in LAYOUT_NAMES:
        raise StoreError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")
    paths = [p for p in sorted(source.rglob("*.nii*")) if p.is_file() and re.search(r"\.nii(\.gz)?$", p.name)]
    chosen = detect_layout([p.name for p in paths]) if layout == "auto" else LAYOUTS[layout]
    groups: dict[tuple[Path, str], dict[str, list[Path]]] = {}
    for path in paths:
        found = chosen.match(path.name)
        if found is not None:
            groups.setdefault((path.parent, found[0]), {}).setdefault(found[1], []).append(path)
    subjects, rejected, leftover = [], [], []
    folders = Counter(name for _, name in groups)
    for (folder, name), files in sorted(groups.items(), key=lambda item: (item[0][1], str(item[0][0]))):
        where = folder.relative_to(source).as_posix()
        missing = [c for c in SLICE_CHANNELS if c not in files]
        doubled = [c for c in SLICE_CHANNELS if len(files.get(c, [])) > 1]
        if folders[name] > 1:
            rejected.append(Rejection(name, where, f"duplicate subject id {name}: it occurs in {folders[name]} folders"))
        elif missing:
            suffix = {channel: suffix for suffix, channel in chosen.suffixes.items()}[missing[0]]
            rejected.append(Rejection(name, f"{where}/{name}{chosen.separator[0]}{suffix}.nii.gz",
                                      f"missing modality {', '.join(missing)}"))
        elif doubled:
            names = ", ".join(p.name for p in files[doubled[0]])
            rejected.append(Rejection(name, where, f"more than one {doubled[0]} file: {names}"))
        else:
            subjects.append(Subject(name, where, {c: files[c][0] for c in SLICE_CHANNELS}))
            continue
        leftover.extend(p for group in files.values() for p in group)
    return chosen, subjects, rejected, leftover
