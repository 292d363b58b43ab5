"""The paper's segmentation tables for ``synthmri report``: Tables 3-7, laid out and captioned as published.

The paper numbers its segmentation tables by metric and dataset: Dice on BraTS 2020 (Table
3) and 2021 (Table 4), relative Dice on both (Table 5), maximum Hausdorff distance on 2020
(Table 6) and 2021 (Table 7). Each has a row per architecture, training data and setting:
Model (the generator, "None" for real images only), Orig (the real training images are in
the training set), Aug (augmentation during training); columns ET, ED, NCR/NET and their
Mean. This report adds the regions WT and TC and the number of repeats (n).

Which table a run's numbers fill (:func:`synthmri.report_dataset.run_dataset`): a run has one real dataset, the
store its evaluations were scored on (each summary records it under ``dataset``; older
summaries are matched against the ``--real`` store by content hash). The report claims a
release only when the store has the BraTS 2020 or 2021 layout (what ``prepare`` detected)
*and* its test subjects are the authors' published test subjects of that release (at least
:data:`PAPER_TEST_SHARE` of the 56, none other). The layout alone is not enough: the phantom
data is written in the BraTS 2021 layout. Otherwise the tables are laid out like Tables 3/4
and 6/7 without claiming a dataset.

Reproduction columns (:func:`reproduction`): when a release is claimed and every evaluation
used the paper's metric convention (``evaluation.convention: paper``), the paper's published
value (``report_published.json``, transcribed from the paper) stands beside each of the
run's, with the difference (run - paper). The profile name is not consulted: any profile
that prepares the paper's test set and scores it the paper's way is a paper run.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Any

from synthmri.config import GRID_SOURCES, SEGMENTER_ARCHS
from synthmri.data.labels import EVAL_LABELS, STRUCTURES
from synthmri.report_dataset import (  # noqa: F401 (re-exported: the tables' public names)
    PAPER_TEST_SHARE,
    RELEASES,
    RunDataset,
    reproduction,
    run_convention,
    run_dataset,
)
from synthmri.report_figures import ARCH_NAMES, Block, fmt_stats, generator_key

#: Architecture order of the tables: the paper's two, then this product's.
ARCH_ORDER = SEGMENTER_ARCHS
#: The paper's generators in its row order, and their names in its tables.
MODEL_NAMES = {None: "None", "progan": "Progressive GAN", "stylegan1": "StyleGAN 1", "stylegan2": "StyleGAN 2",
               "stylegan3": "StyleGAN 3", "ddpm": "Diffusion"}
#: (Orig, Aug) groups in the paper's row order.
GROUPS = ((True, True), (True, False), (False, True), (False, False))
LABEL_HEADERS = {"ET": "ET", "ED": "ED", "NCR": "NCR/NET", "mean": "Mean"}
CONVENTIONS = {
    "paper": "the authors' (evaluation.convention: paper): a structure absent from both prediction and reference "
             "has no Dice, and no Hausdorff distance when either is empty; such subjects drop out of that mean; "
             "the sd over repeats is the population sd",
    "penalise": "penalise (evaluation.convention: penalise): a structure absent from both scores Dice 1 and distance "
                "0, one missing from exactly one scores Dice 0 and the volume's diagonal; the sd over repeats is "
                "the sample sd",
}
# metric -> (row key of the run's value, digits of the run's numbers, digits of the paper's)
METRICS = {"dice": ("mean_dice", 4, 3), "hausdorff": ("mean_hausdorff", 2, 1)}


@functools.cache
def published() -> dict[str, Any]:
    """The paper's Tables 3-7, captions, errata and test subjects (``report_published.json``)."""
    return json.loads(resources.files("synthmri").joinpath("report_published.json").read_text(encoding="utf-8"))


def table_number(metric: str, release: str | None) -> int | None:
    """The paper's table of `metric` (dice, hausdorff, relative_dice) on `release`, else None."""
    for number, table in published()["tables"].items():
        if table["metric"] == metric and table["dataset"] == (None if metric == "relative_dice" else release):
            return int(number)
    return None


def published_row(number: int, key: tuple[str, str | None, bool, bool]) -> dict[str, Any] | None:
    """Table `number`'s row for (arch, model, orig, aug), or None if the paper has none."""
    for row in published()["tables"][str(number)]["rows"]:
        if (row["arch"], row["model"], row["orig"], row["aug"]) == key:
            return row
    return None


# ---------------------------------------------------------------------------- rows


def paper_key(row: dict[str, Any]) -> tuple[str, str | None, bool, bool] | None:
    """(arch, model, orig, aug) of a report row as the paper's tables key it; None if it has no such row."""
    if row["train"] == "real":
        model = None
    elif row["train"] in ("synthetic", "mixed") and len(row["synthetic"]) == 1:
        model = generator_key(row["synthetic"][0])
    else:
        return None
    return row["arch"], model, row["train"] in ("real", "mixed"), bool(row["augment"])


def model_name(row: dict[str, Any]) -> str:
    """The Model column: the paper's generator names, "None" for real images only."""
    key = paper_key(row)
    if key is not None and key[1] in MODEL_NAMES:
        return MODEL_NAMES[key[1]]
    names = ", ".join(generator_key(s) for s in row["synthetic"])
    return f"ensemble: {names}" if len(row["synthetic"]) > 1 else names or row["train"]


def _order(row: dict[str, Any]) -> tuple:
    arch = row["arch"]
    orig = row["train"] in ("real", "mixed")
    key = paper_key(row)
    models = list(MODEL_NAMES)
    model = (0, models.index(key[1]), "") if key is not None and key[1] in MODEL_NAMES else (1, len(row["synthetic"]),
                                                                                             model_name(row))
    return (ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER), arch,
            GROUPS.index((orig, bool(row["augment"]))), model)


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of Tables 3-7 (not the real-share sweep) in the paper's order."""
    return sorted((r for r in rows if r["train"] in GRID_SOURCES), key=_order)


def _row_cells(row: dict[str, Any]) -> list[str]:
    orig = row["train"] in ("real", "mixed")
    return [ARCH_NAMES.get(row["arch"], row["arch"]), model_name(row), "✓" if orig else "", "✓" if row["augment"] else "",
            str(row["n"])]


def _difference(stats: dict[str, Any] | None, paper: float | None, digits: int) -> str:
    if stats is None or paper is None or stats["mean"] is None or math.isnan(stats["mean"]):
        return "–"
    return f"{stats['mean'] - paper:+.{digits}f}"


def metric_table(rows: list[dict[str, Any]], metric: str, number: int | None,
                 compare: bool) -> tuple[list[str], list[list[str]]]:
    """Dice (Tables 3/4) or Hausdorff (6/7) in the paper's layout, the paper's values beside if `compare`."""
    mean_key, digits, paper_digits = METRICS[metric]
    headers = ["Architecture", "Model", "Orig", "Aug", "n"]
    for label, header in LABEL_HEADERS.items():
        headers += [header] + ([f"{header} (paper)", f"{header} Δ"] if compare else [])
    headers += [k for k in STRUCTURES if k not in EVAL_LABELS]
    cells = []
    for row in rows:
        key = paper_key(row)
        paper = published_row(number, key) if compare and number is not None and key is not None else None
        line = _row_cells(row)
        for label in LABEL_HEADERS:
            stats = row[mean_key] if label == "mean" else row[metric].get(label)
            line.append(fmt_stats(stats, digits))
            if compare:
                value = paper[label] if paper else None
                line += [f"{value[0]:.{paper_digits}f} ± {value[1]:.{paper_digits}f}" if value else "–",
                         _difference(stats, value[0] if value else None, digits)]
        line += [fmt_stats(row[metric].get(k), digits) for k in STRUCTURES if k not in EVAL_LABELS]
        cells.append(line)
    return headers, cells


def relative_table(rows: list[dict[str, Any]], release: str | None,
                   compare: bool) -> tuple[list[str], list[list[str]]]:
    """Table 5: relative Dice in percent, the paper's value for `release` beside if `compare`."""
    headers = ["Architecture", "Model", "Orig", "Aug", "n", "Relative Dice"]
    headers += [f"Relative Dice {RELEASES[release]} (paper)", "Δ (points)"] if compare and release else []
    cells = []
    for row in rows:
        ours = row["relative_dice"]
        line = _row_cells(row) + ["–" if ours is None else f"{100 * ours:.2f}%"]
        if compare and release:
            key = paper_key(row)
            paper = published_row(5, key) if key is not None else None
            value = paper[release] if paper else None
            line += ["–" if value is None else f"{value:.2f}%",
                     "–" if value is None or ours is None else f"{100 * ours - value:+.2f}"]
        cells.append(line)
    return headers, cells


def published_values(row: dict[str, Any], release: str) -> dict[str, Any]:
    """The paper's values of one report row on `release` (for report.json): Dice, Hausdorff, relative Dice."""
    key = paper_key(row)
    found: dict[str, Any] = {}
    if key is None:
        return found
    for metric in METRICS:
        paper = published_row(table_number(metric, release), key)
        if paper:
            found[metric] = {label: {"mean": paper[label][0], "sd": paper[label][1]} for label in LABEL_HEADERS}
    relative = published_row(5, key)
    if relative:
        found["relative_dice"] = relative[release] / 100.0
    return found


# ---------------------------------------------------------------------------- captions


def caption(metric: str, dataset: RunDataset, rows: list[dict[str, Any]]) -> str:
    """The paper's caption of the table that holds `metric`, with this run's numbers in it.

    Dice and Hausdorff: the caption of the release's table (Table 3's or 6's without a
    release). With the paper's 56 test subjects, its training subjects and 10 repeats of
    every row it is the published caption word for word.
    """
    number = table_number(metric, dataset.release or "brats2020")
    text = published()["tables"][str(number)]["caption"].split(". ", 1)[1]
    counts = {r["subjects"] for r in rows if r.get("subjects")}
    subjects = dataset.test_subjects or (counts.pop() if len(counts) == 1 else None)
    tests = f"({subjects} subjects)" if subjects else "(the test subjects)"
    text = _replace(text, "(56 subjects)", tests)
    repeats = sorted({r["n"] for r in rows}) or [0]
    trainings = f"{repeats[0]} trainings" if len(repeats) == 1 else f"{repeats[0]}–{repeats[-1]} trainings (column n)"
    if metric == "relative_dice":
        text = _replace(text, "with BraTS 2020 and 2021", f"with {dataset.name or 'the real data of this run'}")
        return _replace(text, "Except for StyleGAN 1, the relative Dice scores are lower for BraTS 2021 when only "
                              "using synthetic images. ", "")
    training = f" ({dataset.training_subjects} training subjects)" if dataset.training_subjects else ""
    text = _replace(text, f"with {RELEASES[published()['tables'][str(number)]['dataset']]} "
                          f"({published()['training_subjects'][published()['tables'][str(number)]['dataset']]} "
                          "training subjects)", f"with {dataset.name or 'the real data of this run'}{training}")
    text = _replace(text, "of 10 trainings", f"of {trainings}")
    if metric == "hausdorff":
        synthetic = {sum(1 for r in rows if r["arch"] == arch and r["train"] == "synthetic")
                     for arch in {r["arch"] for r in rows}}
        bottom = (f"The bottom {synthetic.pop()} rows show" if len(synthetic) == 1 and max(synthetic) > 1
                  else "The rows without Orig show")
        text = _replace(text, "The bottom 10 rows show", bottom)
    return text


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise ValueError(f"report_published.json: caption lacks {old!r}")
    return text.replace(old, new)


# ---------------------------------------------------------------------------- sections


def _coverage(rows: list[dict[str, Any]], score: str) -> str | None:
    """A sentence naming the rows whose means cover fewer subjects than the test set (paper convention)."""
    short = []
    for row in rows:
        counts = (row.get("subjects_scored") or {}).get(score) or {}
        total = row.get("subjects")
        for name in STRUCTURES:
            values = [c for c in counts.get(name) or [] if c is not None]
            if values and total and min(values) < total:
                short.append(f"{ARCH_NAMES.get(row['arch'], row['arch'])} {model_name(row)} "
                             f"{'aug' if row['augment'] else 'orig'}{' orig' if row['train'] == 'mixed' else ''} "
                             f"{name} {min(values)}")
    if not short:
        return None
    return (f"Subjects each mean covers where fewer than all test subjects (the fewest over repeats): "
            f"{'; '.join(short)}.")


def _errata(number: int | None) -> list[Block]:
    if number is None:
        return []
    return [("p", f"Note on the paper's Table {number}: {LABEL_HEADERS[e['label']]} of "
                  f"{ARCH_NAMES.get(e['arch'], e['arch'])}, {MODEL_NAMES.get(e['model'])}, "
                  f"{'with' if e['orig'] else 'without'} Orig, {'with' if e['aug'] else 'without'} Aug, "
                  f"is printed as {e['printed']}"
                  + (f", likely {e['likely']}" if e.get("likely") is not None else "") + f" ({e['why']}); "
                  "compared as printed.")
            for e in published()["errata"] if int(e["table"]) == number]


def segmentation_tables(rows: list[dict[str, Any]], dataset: RunDataset, convention: str) -> tuple[list[Block],
                                                                                                    dict[str, Any]]:
    """Tables 3/4, 5 and 6/7 of a run, captioned; and what report.json records of them.

    Args:
        rows: the report's aggregated rows (:func:`synthmri.report.aggregate`).
        dataset: the run's dataset (:func:`run_dataset`).
        convention: the evaluations' metric convention (:func:`run_convention`).
    """
    tabled = table_rows(rows)
    compare, why = reproduction(dataset, convention)
    release = dataset.release
    blocks: list[Block] = [("p", f"Dataset: {dataset.note}"), ("p", why)]
    if convention in CONVENTIONS:
        blocks.append(("p", f"Metric convention: {CONVENTIONS[convention]}."))
    else:
        blocks.append(("p", "Metric convention: MIXED. The evaluations were scored under different conventions "
                            "(evaluation.convention); their numbers are not comparable with each other."))
    numbers: dict[str, int | None] = {}
    for metric, title, layout in (("dice", "Dice scores", "Table 3/4"),
                                  ("relative_dice", "Relative Dice", None),
                                  ("hausdorff", "Hausdorff distances (mm)", "Table 6/7")):
        number = table_number(metric, release)
        numbers[metric] = number
        if number is not None:
            heading = f"Table {number}: {title}" + (f", {dataset.name}" if metric != "relative_dice" else "")
        else:
            heading = f"{title} in the layout of {layout}"
        blocks += [("h", 3, heading), ("p", caption(metric, dataset, tabled))]
        if not tabled:
            blocks.append(("p", "No evaluations."))
            continue
        if metric == "relative_dice":
            blocks.append(("p", "This report: relative to real-only training with augmentation of the same "
                                "architecture (without augmentation where that is all there is); n is the number "
                                "of repeats; the None rows give real-only training itself."))
            blocks.append(("table", *relative_table(tabled, release, compare)))
            continue
        blocks.append(("p", "This report: mean ± sd over the n repeats of each row; Mean is the mean over ET, ED and "
                            "NCR/NET; WT and TC are the BraTS regions (the paper does not report them)."))
        blocks.append(("table", *metric_table(tabled, metric, number, compare)))
        coverage = _coverage(tabled, metric) if convention == "paper" else None
        blocks += [("p", coverage)] if coverage else []
        blocks += _errata(number) if compare else []
    if compare:
        blocks += [("p", note) for note in published()["notes"][:2]]
    record = {"dataset": {**dataset.__dict__, "name": dataset.name}, "convention": convention,
              "tables": numbers, "reproduction": {"shown": compare, "why": why}}
    if compare and release:
        record["published"] = [{"arch": r["arch"], "train": r["train"], "augment": r["augment"],
                                "synthetic": r["synthetic"], **published_values(r, release)} for r in tabled]
    return blocks, record
