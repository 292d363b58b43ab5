"""Which subjects are test, validation and training subjects (``data.split``).

Two kinds of split, both decided from the subject names alone, before any volume is read:

``published``
    The authors' split (Akbar et al. 2024; their ``Preparation/subjectPermutation_BRATS20xx.mat``):
    each release's subjects in one shuffled order, the last 56 of which are the test
    subjects. The orders and test lists ship in ``synthmri/data/paper_splits/``
    (``brats2020_order.txt``: 369 ids, ``brats2021_order.txt``: 1251 ids, and the 56 test ids
    of each in ``<release>_test_subjects.txt``). Only BraTS 2020 and 2021 have one; a source
    of another layout falls back to ``seeded`` (logged). Every published test subject must be
    in the source; subjects of the source outside the published order train (logged).
``seeded``
    A shuffle of the sorted names with ``data.seed``; the first ``data.test_subjects`` test.

Either way the validation subjects are ``data.val_fraction`` of the non-test subjects (at
least one when the fraction is positive and two or more remain, never all of them), drawn
with ``data.seed``; the rest train. The segmenter trains on ``train`` and selects its
checkpoint on ``val``; a generator trains on every non-test subject
(:data:`GENERATOR_TRAIN_SPLITS`), as the authors' generators did.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Collection

import numpy as np

from synthmri.config import SLICE_SPLITS, DataConfig
from synthmri.data.store import StoreError

log = logging.getLogger(__name__)

#: The store splits a generator trains on, and so the reference its samples must not copy:
#: every non-test subject. ``test`` stays held out (the memorization baseline).
GENERATOR_TRAIN_SPLITS: tuple[str, ...] = ("train", "val")

#: Layouts with a published split (``paper_splits/<release>_*.txt``).
PUBLISHED_RELEASES: tuple[str, ...] = ("brats2020", "brats2021")

_SHOWN = 5  # missing subjects named in an error message


class SplitError(StoreError):
    """The subjects cannot make the requested split (the message says why and what to do)."""


@dataclass(frozen=True)
class SubjectSplit:
    """A split of a source's subjects.

    Attributes:
        assignment: subject name -> ``train``, ``val`` or ``test``.
        record: what the store's manifest records under ``split``: ``{"kind": "published",
            "release": ..., "test_subjects": 56, "seed": ...}`` or ``{"kind": "seeded",
            "seed": ..., "test_subjects": ...}`` (``seed`` draws the validation subjects, and
            for ``seeded`` the test subjects too).
    """

    assignment: dict[str, str]
    record: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=None)
def _shipped(name: str) -> tuple[str, ...]:
    """The ids of ``paper_splits/<name>``, one a line, blank lines skipped."""
    text = resources.files("synthmri.data").joinpath("paper_splits", name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _check_release(release: str) -> None:
    if release not in PUBLISHED_RELEASES:
        raise SplitError(f"no published split for {release!r}: the authors published one for "
                         f"{' and '.join(PUBLISHED_RELEASES)} only")


def published_order(release: str) -> list[str]:
    """Every subject id of `release` in the authors' shuffled order.

    Args:
        release: ``brats2020`` or ``brats2021``.

    Raises:
        SplitError: a release without a published split.
    """
    _check_release(release)
    return list(_shipped(f"{release}_order.txt"))


def published_test_subjects(release: str) -> list[str]:
    """The authors' 56 test subject ids of `release` (the last 56 of its order), in that order.

    Args:
        release: ``brats2020`` or ``brats2021``.

    Raises:
        SplitError: a release without a published split.
    """
    _check_release(release)
    return list(_shipped(f"{release}_test_subjects.txt"))


def _val_count(rest: int, fraction: float) -> int:
    """Validation subjects among `rest` non-test ones: `fraction` of them rounded half up, at
    least one when `fraction` > 0 and two or more remain, and never all of them."""
    n_val = math.floor(fraction * rest + 0.5)
    if fraction > 0 and rest >= 2:
        n_val = max(n_val, 1)
    return min(n_val, rest - 1)


def split_subjects(names: list[str], data: DataConfig) -> dict[str, str]:
    """The seeded split: shuffle the sorted `names` with ``data.seed``; the first
    ``test_subjects`` go to test, the next ``val_fraction`` of the rest to val.

    Args:
        names: subject names (any order).
        data: ``seed``, ``test_subjects`` and ``val_fraction``.

    Returns:
        Subject name -> split.

    Raises:
        SplitError: fewer than ``test_subjects + 1`` subjects.
    """
    names = sorted(names)
    rest = len(names) - data.test_subjects
    if data.test_subjects < 0 or rest < 1:
        raise SplitError(f"{len(names)} complete subject(s): need more than data.test_subjects="
                         f"{data.test_subjects} to keep at least one training subject")
    n_val = _val_count(rest, data.val_fraction)
    order = np.random.default_rng(data.seed).permutation(len(names))
    splits = {}
    for position, index in enumerate(order):
        splits[names[index]] = ("test" if position < data.test_subjects
                                else "val" if position < data.test_subjects + n_val else "train")
    return splits


def published_split(names: list[str], data: DataConfig, release: str,
                    incomplete: Collection[str] = ()) -> dict[str, str]:
    """The authors' test subjects of `release`; ``val_fraction`` of the others to val (seeded).

    Args:
        names: the source's complete subjects (any order).
        data: ``seed`` and ``val_fraction`` (``test_subjects`` does not apply).
        release: ``brats2020`` or ``brats2021``.
        incomplete: subjects of the source left out as incomplete, so that the error can
            tell a test subject with a missing file from one not in the source at all.

    Returns:
        Subject name -> split.

    Raises:
        SplitError: a published test subject is not among `names` (the message names the
            first few and counts them), or no subject is left to train on.
    """
    test = published_test_subjects(release)
    present = set(names)
    missing = [name for name in test if name not in present]
    if missing:
        shown = ", ".join(sorted(missing)[:_SHOWN]) + (f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else "")
        broken = sorted(set(missing) & set(incomplete))
        why = f" ({len(broken)} of them incomplete in the source, see rejected.csv)" if broken else ""
        raise SplitError(f"data.split: published tests on the authors' {len(test)} {release} test subjects, "
                         f"but {len(missing)} of them are not among the source's complete subjects{why}: "
                         f"{shown}. Prepare the whole release, or set data.split: seeded for a seeded split")
    known = set(published_order(release))
    unknown = sorted(present - known)
    if unknown:
        log.warning("prepare: %d subject(s) not in the authors' %s order (e.g. %s): they go to train/val",
                    len(unknown), release, ", ".join(unknown[:_SHOWN]))
    if data.test_subjects != len(test):
        log.info("prepare: data.test_subjects=%d does not apply to the published split: its %d test subjects are "
                 "the authors'", data.test_subjects, len(test))
    rest = sorted(present - set(test))
    if not rest:
        raise SplitError(f"the source holds only the {len(test)} published {release} test subjects: "
                         "nothing is left to train on")
    n_val = _val_count(len(rest), data.val_fraction)
    order = np.random.default_rng(data.seed).permutation(len(rest))
    splits = dict.fromkeys(test, "test")
    for position, index in enumerate(order):
        splits[rest[index]] = "val" if position < n_val else "train"
    return splits


def assign_splits(names: list[str], data: DataConfig, layout: str,
                  incomplete: Collection[str] = ()) -> SubjectSplit:
    """The split ``data.split`` asks for, on a source of `layout`.

    Args:
        names: the source's complete subjects.
        data: ``split``, ``seed``, ``test_subjects`` and ``val_fraction``.
        layout: the source's layout name (``brats2020``, ``brats2021``, ``brats2023``,
            ``generic``); only BraTS 2020 and 2021 have a published split, others are seeded.
        incomplete: subjects left out as incomplete (named in a published-split error).

    Returns:
        The assignment and the manifest record.

    Raises:
        SplitError: the split cannot be made from these subjects; the message says why.
    """
    if data.split == "published" and layout in PUBLISHED_RELEASES:
        assignment = published_split(names, data, layout, incomplete)
        record = {"kind": "published", "release": layout, "test_subjects": sum(s == "test" for s in assignment.values()),
                  "seed": data.seed}
    else:
        if data.split == "published":
            log.info("prepare: data.split: published exists only for BraTS 2020/2021 (%s); a %s source gets the "
                     "seeded split (seed %d, %d test subjects)", ", ".join(PUBLISHED_RELEASES), layout, data.seed,
                     data.test_subjects)
        elif data.split != "seeded":
            raise SplitError(f"unknown data.split {data.split!r}: use published or seeded")
        assignment = split_subjects(names, data)
        record = {"kind": "seeded", "seed": data.seed, "test_subjects": data.test_subjects}
    counts = {s: sum(v == s for v in assignment.values()) for s in SLICE_SPLITS}
    log.info("prepare: %s split: %d train, %d val, %d test subjects", record["kind"], counts["train"], counts["val"],
             counts["test"])
    return SubjectSplit(assignment, record)
