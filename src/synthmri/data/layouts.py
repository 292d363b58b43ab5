"""BraTS folder layouts: how subjects and their five files are named, and their labels.

=========  ==============================  =================================  ==========
layout     subject id                      files                              ET label
=========  ==============================  =================================  ==========
brats2020  ``BraTS20_Training_NNN``        ``<id>_{t1,t1ce,t2,flair,seg}``    4
brats2021  ``BraTS2021_NNNNN``             ``<id>_{t1,t1ce,t2,flair,seg}``    4
brats2023  ``BraTS-GLI-NNNNN-NNN``         ``<id>-{t1n,t1c,t2w,t2f,seg}``     3
generic    anything                        ``<id>[_-]<any suffix above>``     4
=========  ==============================  =================================  ==========

``data.layout: auto`` finds the layout from the file names: the one release that names most
of the NIfTI files (files with other names are ignored and logged), else ``generic`` (logged
as a warning with the reason); ``generic`` takes every ``<id>_<suffix>.nii[.gz]`` (phantoms,
hand-made test subjects). The label map comes from ``data.label_map`` when set, else from the
layout. BraTS 2020's subject 355 ships its segmentation as ``W39_1998.09.19_Segm.nii``, the one
known quirk of a real release; the ``brats2020`` layout accepts that name in that folder.

Discovery walks the source following symbolic links (a folder reached twice is read once) and
skips junk: ``__MACOSX`` folders, ``._*`` resource forks, ``.DS_Store`` and every other hidden
file or folder. A folder that cannot be listed, a broken link, or a NIfTI name that is not a
regular file (a FIFO, a device; never opened) rejects the subject it belongs to, by name.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from synthmri.config import BRATS_RELEASES, DATA_LAYOUTS, SLICE_CHANNELS
from synthmri.data.store import StoreError

log = logging.getLogger(__name__)

BRATS_LABELS = {1: 51, 2: 102, 4: 204}  # 1 NCR/NET, 2 ED, 4 ET (2017-2021)
BRATS_2023_LABELS = {1: 51, 2: 102, 3: 204}  # ET renumbered to 3

_CLASSIC = {channel: channel for channel in SLICE_CHANNELS}  # t1, t1ce, t2, flair, seg
_GLI = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
_NIFTI = re.compile(r"\.nii(\.gz)?$")
_SHOWN = 5  # file names quoted in a log line


@dataclass(frozen=True)
class Layout:
    """How one BraTS release names its files.

    Attributes:
        name: ``brats2020``, ``brats2021``, ``brats2023`` or ``generic``.
        subject: regular expression of a subject id.
        separator: characters allowed between the id and the channel suffix.
        suffixes: file-name suffix -> channel.
        label_map: BraTS label id -> annotation value.
        aliases: file name -> (subject id, channel) for the release's known misnamed files;
            such a file counts only in its subject's own folder.
    """

    name: str
    subject: str
    separator: str
    suffixes: dict[str, str]
    label_map: dict[int, int]
    aliases: dict[str, tuple[str, str]] = field(default_factory=dict)

    def match(self, filename: str, folder: str | None = None) -> tuple[str, str] | None:
        """(subject id, channel) of a NIfTI file name in this layout, else None.

        Args:
            filename: The file's name.
            folder: The name of the folder holding it; an alias matches only in its subject's
                folder (None: not checked).
        """
        alias = self.aliases.get(filename)
        if alias is not None and folder in (None, alias[0]):
            return alias
        found = re.fullmatch(rf"(?P<id>{self.subject})[{self.separator}](?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?",
                             filename)
        if found is None or found["suffix"].lower() not in self.suffixes:
            return None
        return found["id"], self.suffixes[found["suffix"].lower()]


LAYOUTS: dict[str, Layout] = {
    "brats2020": Layout("brats2020", r"BraTS20_(?:Training|Validation)_\d{3}", "_", _CLASSIC, BRATS_LABELS,
                        aliases={"W39_1998.09.19_Segm.nii": ("BraTS20_Training_355", "seg")}),
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


def is_junk(name: str) -> bool:
    """Whether a file or folder name is operating-system debris, never data.

    ``__MACOSX`` (macOS archive metadata), ``._*`` (AppleDouble resource forks), ``.DS_Store``,
    ``Thumbs.db`` and every other hidden name (a leading dot).
    """
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def detect_layout(names: list[str]) -> Layout:
    """The layout of a set of NIfTI file names: the one release that names most of them.

    Junk names (:func:`is_junk`) are left out first. Files of one release that name more
    than half of the rest choose it; the others are ignored (:func:`find_subjects` logs
    them). Fewer, or none, fall
    back to ``generic`` with a warning that says why. Files of several releases are an
    error, because their labels differ (ET is 4 before 2023, 3 after).

    Raises:
        StoreError: names of two or more releases (counts given; pass ``--layout``).
    """
    names = [name for name in names if not is_junk(name)]
    releases = Counter(name for name in BRATS_RELEASES for filename in names if LAYOUTS[name].match(filename))
    if len(releases) > 1:
        found = ", ".join(f"{count} {name}" for name, count in sorted(releases.items()))
        raise StoreError(f"files of several BraTS layouts ({found} files): prepare one release at a time, "
                         "or choose one with --layout")
    if not releases:
        log.warning("layout: using the generic layout: none of the %d NIfTI file(s) has a BraTS 2020, 2021 or "
                    "2023 name (e.g. %s); choose one with --layout if this is wrong", len(names), _shown(sorted(names)))
        return LAYOUTS["generic"]
    release, count = next(iter(releases.items()))
    others = sorted(filename for filename in names if not LAYOUTS[release].match(filename))
    if 2 * count <= len(names):
        log.warning("layout: using the generic layout: only %d of %d NIfTI files have %s names (others: %s); "
                    "pass --layout %s to prepare those alone", count, len(names), release, _shown(others), release)
        return LAYOUTS["generic"]
    if others:  # find_subjects names them as it ignores them
        log.info("layout: %s: %d of %d NIfTI files have its names", release, count, len(names))
    return LAYOUTS[release]


@dataclass
class _Walk:
    """What a walk of the source found: NIfTI-named entries, and what could not be read."""

    nifti: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # folder or link, why
    junk: list[str] = field(default_factory=list)


def _walk(source: Path) -> _Walk:
    """Every NIfTI-named entry under `source`, following links; junk skipped, failures kept.

    A folder reached a second time (a link to a folder already read, or a link loop) is not
    read again (logged).
    """
    found = _Walk()
    seen: dict[str, Path] = {}
    pending = [source]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            log.warning("layout: %s is %s again (a symbolic link); read once", folder, seen[real])
            continue
        seen[real] = folder
        try:
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            found.unreadable.append((folder, f"folder cannot be read ({exc.strerror or type(exc).__name__})"))
            continue
        below = []
        for entry in listed:
            path = folder / entry.name
            if is_junk(entry.name):
                found.junk.append(path.relative_to(source).as_posix())
            elif _NIFTI.search(entry.name):
                found.nifti.append(path)
            elif entry.is_dir():  # follows links
                below.append(path)
            elif entry.is_symlink() and not path.exists():
                found.unreadable.append((path, f"broken symbolic link to {os.readlink(path)}"))
        pending.extend(reversed(below))  # depth first, in name order
    return found


def _not_regular(path: Path) -> str | None:
    """Why `path` cannot be read as a file (stat only, never opened), else None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"broken symbolic link to {os.readlink(path)}" if path.is_symlink() else "file vanished"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISDIR: "a directory", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kind = next((word for test, word in kinds.items() if test(mode)), "special")
    return f"{path.name} is not a regular file ({kind})"


def find_subjects(source: Path, layout: str = "auto") -> tuple[Layout, list[Subject], list[Rejection], list[Path]]:
    """Subjects under `source`: folders of ``<id><sep><suffix>.nii[.gz]`` files.

    Args:
        source: the dataset's root directory.
        layout: a name of :data:`LAYOUTS`, or ``auto`` to detect it.

    Returns:
        The layout, complete subjects sorted by name, rejections (incomplete, duplicated or
        ambiguous subjects, unreadable folders, broken links, files that are not regular
        files), and the regular files of the rejected subjects (they still count towards the
        source's hash).

    Raises:
        StoreError: an unknown layout name, or mixed layouts under ``auto``.
    """
    if layout not in LAYOUT_NAMES:
        raise StoreError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")
    walk = _walk(source)
    if walk.junk:
        log.info("layout: skipped %d junk file(s) or folder(s) (__MACOSX, ._*, hidden): %s", len(walk.junk),
                 _shown(walk.junk))
    paths = sorted(walk.nifti)
    chosen = detect_layout([p.name for p in paths]) if layout == "auto" else LAYOUTS[layout]
    groups: dict[tuple[Path, str], dict[str, list[Path]]] = {}
    ignored = []
    for path in paths:
        found = chosen.match(path.name, path.parent.name)
        if found is None:
            ignored.append(path.relative_to(source).as_posix())
        else:
            groups.setdefault((path.parent, found[0]), {}).setdefault(found[1], []).append(path)
    if ignored:
        log.warning("layout: ignoring %d NIfTI file(s) that are not %s names: %s", len(ignored), chosen.name,
                    _shown(ignored))
    rejected = [Rejection(path.name if path != source else ".", path.relative_to(source).as_posix() or ".", why)
                for path, why in walk.unreadable]
    for rejection in rejected:
        log.warning("layout: %s: %s", rejection.file, rejection.reason)
    subjects, leftover = [], []
    folders = Counter(name for _, name in groups)
    for (folder, name), files in sorted(groups.items(), key=lambda item: (item[0][1], str(item[0][0]))):
        where = folder.relative_to(source).as_posix()
        broken = [(p, why) for group in files.values() for p in group if (why := _not_regular(p)) is not None]
        missing = [c for c in SLICE_CHANNELS if c not in files]
        doubled = [c for c in SLICE_CHANNELS if len(files.get(c, [])) > 1]
        if folders[name] > 1:
            rejected.append(Rejection(name, where, f"duplicate subject id {name}: it occurs in {folders[name]} folders"))
        elif broken:
            rejected.append(Rejection(name, broken[0][0].relative_to(source).as_posix(), broken[0][1]))
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
        bad = {p for p, _ in broken}
        leftover.extend(p for group in files.values() for p in group if p not in bad and _not_regular(p) is None)
    return chosen, subjects, rejected, leftover
