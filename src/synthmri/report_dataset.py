"""Which real data a report's evaluations were scored on, and whether it is the paper's.

A run has one real dataset, the store its evaluations were scored on (each summary records
it under ``dataset``; older summaries are matched against the ``--real`` store by content
hash). The report claims a release only when the store has the BraTS 2020 or 2021 layout
*and* its test subjects are the authors' published test subjects of that release (at least
:data:`PAPER_TEST_SHARE` of them, none other): the phantom data has the BraTS 2021 layout too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from synthmri.data.splits import published_test_subjects

RELEASES = {"brats2020": "BraTS 2020", "brats2021": "BraTS 2021"}
#: Share of the paper's test subjects a store must hold (and no others) to be the paper's test set.
PAPER_TEST_SHARE = 0.9



@dataclass(frozen=True)
class RunDataset:
    """The real data a report's evaluations were scored on, as far as the report can tell.

    Attributes:
        release: ``brats2020`` or ``brats2021`` when claimed (see the module docstring), else None.
        layout: the store's layout as ``prepare`` recorded it (None if unknown).
        test_subjects: how many test subjects (None if unknown).
        training_subjects: how many non-test subjects (None if unknown).
        note: a sentence saying how the release was decided.
    """

    release: str | None
    layout: str | None
    test_subjects: int | None
    training_subjects: int | None
    note: str

    @property
    def name(self) -> str | None:
        """``BraTS 2020`` / ``BraTS 2021`` when claimed."""
        return RELEASES.get(self.release or "")


def run_dataset(evaluations: list[dict[str, Any]], real: Any = None) -> RunDataset:
    """The dataset of a report's evaluations (see the module docstring).

    Args:
        evaluations: evaluate-segmenter summaries (one per run).
        real: the ``--real`` SliceStore or None; used for summaries that record no dataset,
            when its content hash is theirs.
    """
    from synthmri.segmenters.summaries import dataset_info

    hashes = {ev.get("data_hash") for ev in evaluations}
    if len(hashes) > 1:
        return RunDataset(None, None, None, None, f"The evaluations were scored on {len(hashes)} different stores: "
                                                  "no dataset is claimed.")
    infos = [ev.get("dataset") for ev in evaluations]
    if evaluations and all(isinstance(info, dict) for info in infos):
        info, where = infos[0], "the evaluations"
    elif real is not None and (not evaluations or hashes == {real.content_hash}):
        info, where = dataset_info(real), "the --real store"
    else:
        return RunDataset(None, None, None, None, "The evaluations record no dataset (and no --real store with "
                                                  "their content hash was given): no dataset is claimed.")
    layout, test = info.get("layout"), set(info.get("test_subjects") or [])
    found = RunDataset(None, layout, len(test) or None, info.get("training_subjects"), "")
    if layout not in RELEASES:
        return replace(found, note=f"The store's layout ({layout or 'none recorded'}, from {where}) is not "
                                   "BraTS 2020 or 2021: no dataset is claimed.")
    paper = set(published_test_subjects(layout))
    shared = len(test & paper)
    if test <= paper and shared >= math.ceil(PAPER_TEST_SHARE * len(paper)):
        return replace(found, release=layout, note=(
            f"{RELEASES[layout]}: the store's layout (from {where}), and its {len(test)} test subjects are the "
            f"paper's published test subjects ({shared} of {len(paper)})."))
    return replace(found, note=(
        f"The store has the {RELEASES[layout]} layout (from {where}), but only {shared} of its {len(test)} test "
        f"subjects are among the paper's {len(paper)}: not the paper's test set (phantom data has this layout "
        "too), so no dataset is claimed."))


def run_convention(evaluations: list[dict[str, Any]]) -> str:
    """The metric convention of the evaluations: ``paper``, ``penalise`` or ``mixed``."""
    from synthmri.segmenters.summaries import convention_of

    found = {convention_of(ev) for ev in evaluations}
    return found.pop() if len(found) == 1 else "mixed"


def reproduction(dataset: RunDataset, convention: str) -> tuple[bool, str]:
    """Whether the tables show the paper's values beside the run's, and a sentence saying why (not)."""
    if dataset.release is None:
        return False, "No comparison with the paper's values: those are of its BraTS 2020 and 2021 test subjects."
    if convention != "paper":
        return False, (f"No comparison with the paper's values: the evaluations use the {convention} metric "
                       "convention, the paper's numbers the authors' (evaluation.convention: paper).")
    return True, ("The evaluations use the paper's metric convention on the paper's test subjects, so each value "
                  "has the paper's published value beside it (paper) and the difference, run - paper (Δ).")
