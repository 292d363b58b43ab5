"""Tables 1 and 2 of ``synthmri report`` and its memorization sections: how the generators compare.

* Table 1: generators ranked by FID, IS, in-domain Fréchet distance, Dice and Hausdorff
  distance of segmenters trained on their images alone (rank per metric and mean rank).
* Table 2: FID and IS per generator (with the in-domain FD, KID, precision and recall).
* Memorization per generator: histogram of the highest correlation with a training slice,
  synthetic vs held-out real test slices, and the nearest pairs.
* The ranking of generators by Dice per architecture and setting (a supplementary table).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from synthmri.data.labels import EVAL_LABELS
from synthmri.report_figures import ARCH_NAMES, Block, fmt_number, generator_key

# Table 1: (key, column, lower is better).
RANKED = (("fid", "FID", True), ("is", "IS", False), ("fd", "in-domain FD", True), ("dice", "Dice", False),
          ("hd", "HD", True))


def _single_generator_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["train"] == "synthetic" and len(r["synthetic"]) == 1]


def generator_ranking(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic-only rows of one generator each, ranked by mean Dice within (arch, setting).

    Returns:
        Dicts with arch, setting, rank (1 = best), generator, mean_dice (stats) and relative_dice.
    """
    ranked = []
    single = _single_generator_rows(rows)
    for arch, augment in sorted({(r["arch"], r["augment"]) for r in single}, key=lambda k: (k[0], not k[1])):
        group = sorted((r for r in single if r["arch"] == arch and r["augment"] == augment),
                       key=lambda r: -r["mean_dice"]["mean"])
        for rank, row in enumerate(group, start=1):
            ranked.append({"arch": arch, "setting": "aug" if augment else "orig", "rank": rank,
                           "generator": generator_key(row["synthetic"][0]),
                           "mean_dice": row["mean_dice"], "relative_dice": row["relative_dice"]})
    return ranked


def load_memorization(path: Path) -> dict[str, Any]:
    """An evaluate-synthetic summary with ``_dir`` (its output directory) and ``_name`` (the generator)."""
    from synthmri.metrics.evaluate_synthetic import load_summary

    summary = load_summary(path)
    directory = Path(path).parent if Path(path).suffix == ".json" else Path(path)
    generator = summary.get("generator") or {}
    return {**summary, "_dir": directory, "_name": generator_key(generator.get("name") or directory.name)}


def _computed(summary: dict[str, Any] | None, section: str, key: str) -> float | None:
    values = ((summary or {}).get("quality") or {}).get(section) or {}
    return float(values[key]) if values.get("status") == "computed" and values.get(key) is not None else None


def competition_ranks(values: dict[str, float | None], lower_is_better: bool) -> dict[str, int | None]:
    """Rank 1 = best; ties share the better rank ("1224"); missing values get None."""
    present = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    sign = 1.0 if lower_is_better else -1.0
    return {k: (1 + sum(sign * other < sign * present[k] for other in present.values()) if k in present else None)
            for k in values}


def generator_table(rows: list[dict[str, Any]], memorization: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Table 1: each generator's FID, IS, in-domain FD, Dice and HD, their ranks and the mean rank.

    Dice (mean over ET, ED and NCR/NET) and HD (maximum Hausdorff distance, mean over the
    same labels) are those of segmenters trained on the generator's images alone, in one
    setting: U-Net (else the first architecture) with augmentation (else without).

    Returns:
        One dict per generator, best mean rank first, and a sentence naming that setting.
    """
    summaries: dict[str, dict[str, Any]] = {}
    for summary in memorization:
        name = summary["_name"]
        summaries[name if name not in summaries else f"{name}#{len(summaries)}"] = summary
    single = _single_generator_rows(rows)
    archs = sorted({r["arch"] for r in single}, key=lambda a: (a != "unet", a))
    reference = [r for r in single if archs and r["arch"] == archs[0]]
    augment = any(r["augment"] for r in reference)
    reference = {generator_key(r["synthetic"][0]): r for r in reference if r["augment"] == augment}
    note = (f"Dice and HD: {ARCH_NAMES.get(archs[0], archs[0])} {'with' if augment else 'without'} augmentation, "
            "trained on the generator's images alone." if archs else "No synthetic-only evaluations: no Dice or HD.")
    table = []
    for name in [*summaries, *sorted(set(reference) - set(summaries))]:
        summary, row = summaries.get(name), reference.get(name)
        table.append({
            "generator": name, "fid": _computed(summary, "inception", "fid"),
            "is": _computed(summary, "inception", "is_mean"), "fd": _computed(summary, "in_domain", "frechet_distance"),
            "dice": row["mean_dice"]["mean"] if row else None,
            "hd": float(np.mean([row["hausdorff"][k]["mean"] for k in EVAL_LABELS])) if row else None,
            "mlflow_run_id": (summary or {}).get("mlflow_run_id"), "evaluations": row["sources"] if row else [],
        })
    for key, _, lower in RANKED:
        for entry, rank in zip(table, competition_ranks({e["generator"]: e[key] for e in table}, lower).values()):
            entry.setdefault("ranks", {})[key] = rank
    for entry in table:
        ranks = [r for r in entry["ranks"].values() if r is not None]
        entry["mean_rank"] = float(np.mean(ranks)) if ranks else None
    table.sort(key=lambda e: (e["mean_rank"] is None, e["mean_rank"] or 0.0))
    return table, note


def _quality(summary: dict[str, Any], section: str, key: str) -> str:
    return fmt_number(_computed(summary, section, key), ".4g")


def generator_blocks(rows: list[dict[str, Any]], memorization: list[dict[str, Any]]) -> tuple[list[Block], list]:
    table, note = generator_table(rows, memorization)
    blocks: list[Block] = [("h", 2, "Table 1: Ranking of generators")]
    if not table:
        blocks.append(("p", "No evaluate-synthetic outputs (--memorization) and no synthetic-only evaluations."))
    else:
        blocks += [("p", "Rank 1 is best: lower FID, in-domain FD and HD, higher IS and Dice. " + note),
                   ("table", ["generator", *(h for _, name, _ in RANKED for h in (name, "rank")), "mean rank"],
                    [[e["generator"], *(c for key, _, _ in RANKED for c in (
                        fmt_number(e[key], ".2f" if key == "hd" else ".4f" if key == "dice" else ".4g"),
                        fmt_number(e["ranks"][key], "d"))), fmt_number(e["mean_rank"], ".2f")] for e in table])]
    blocks.append(("h", 2, "Table 2: FID and IS"))
    if not memorization:
        return blocks + [("p", "No evaluate-synthetic outputs given (--memorization).")], table
    cells, reasons = [], []
    for summary in memorization:
        quality = summary.get("quality") or {}
        inception, in_domain = quality.get("inception") or {}, quality.get("in_domain") or {}
        reasons += [f"{section}: {values['reason']}" for section, values in (("FID/IS", inception),
                    ("in-domain", in_domain)) if values.get("status") == "skipped" and values.get("reason")]
        is_sd = _computed(summary, "inception", "is_sd")
        cells.append([summary["_name"], str((summary.get("generator") or {}).get("version", "–")),
                      _quality(summary, "inception", "fid"),
                      _quality(summary, "inception", "is_mean") + ("" if is_sd is None else f" ± {is_sd:.4g}"),
                      *(_quality(summary, section, key) for section, key in (
                          ("inception", "is_real_mean"), ("in_domain", "frechet_distance"), ("in_domain", "kid"),
                          ("in_domain", "precision"), ("in_domain", "recall")))])
    blocks += [("p", "FID and IS on ImageNet-Inception features; Fréchet distance (FD), KID and precision/recall on "
                     "the features of a segmenter trained on real slices (in-domain); both against the real "
                     "training slices. IS (real) is the real slices' own score, for reference."),
               ("table", ["generator", "version", "FID", "IS", "IS (real)", "in-domain FD", "KID", "precision",
                          "recall"], cells)]
    blocks += [("p", f"Skipped, {reason}") for reason in dict.fromkeys(reasons)]
    return blocks, table


def memorization_blocks(summary: dict[str, Any]) -> list[Block]:
    from synthmri.metrics.evaluate_synthetic import plot_histogram, read_memorization_csv

    directory, name = summary["_dir"], summary["_name"]
    stats = ["mean", "median", "p99", "max", "share_above_threshold", "n"]
    cells = [[part, *(f"{summary[part][s]:.4f}" if s != "n" else str(summary[part][s]) for s in stats)]
             for part in ("synthetic", "baseline")]
    blocks: list[Block] = [
        ("h", 3, f"Memorization: {name}"),
        ("p", f"Highest Pearson correlation of each synthetic slice (generator {name}, version "
              f"{(summary.get('generator') or {}).get('version', '?')}) with any training slice, against the same "
              f"statistic for held-out real test slices (baseline). Threshold r > {summary['threshold']:g}."),
        ("table", ["set", *stats], cells),
    ]
    hist = directory / "memorization_hist.png"
    if hist.is_file():
        png = hist.read_bytes()
    else:  # an older output without the figure: redraw it from the CSVs
        _, syn, _ = read_memorization_csv(directory / "memorization.csv")
        _, base, _ = read_memorization_csv(directory / "memorization_baseline.csv")
        png = plot_histogram(syn, base, float(summary["threshold"]), f"memorization: {name}")
    blocks.append(("img", f"memorization-{name}.png", f"{name}: max-correlation distributions, synthetic vs real test",
                   png))
    pairs = directory / "memorization_pairs.png"
    if pairs.is_file():
        blocks.append(("img", f"pairs-{name}.png", f"{name}: closest synthetic slices beside their nearest training "
                       "slices", pairs.read_bytes()))
    if summary.get("nearest"):
        blocks.append(("table", ["synthetic slice", "nearest training slice", "r"],
                       [[n["slice_id"], n["train_slice_id"], f"{n['max_corr']:.4f}"] for n in summary["nearest"]]))
    return blocks
