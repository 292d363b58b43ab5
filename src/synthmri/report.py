"""``synthmri report``: the paper's tables and figures as Markdown and a self-contained HTML page.

Sections, in the paper's numbering:

* Figure 1: sample slices of each generator beside a real test slice.
* Table 1: generators ranked by FID, IS, in-domain Fréchet distance, Dice and Hausdorff
  distance of segmenters trained on their images alone (rank per metric and mean rank).
* Table 2: FID and IS per generator (with the in-domain FD, KID, precision and recall).
* Memorization per generator: histogram of the highest correlation with a training slice,
  synthetic vs held-out real test slices, and the nearest pairs.
* Figures 2-3: one test slice segmented by every training setting (U-Net, Swin).
* Tables 3, 4 (U-Net) and 6, 7 (Swin), without and with augmentation: 3D Dice and Hausdorff
  distance per label and region, mean ± sd over repeats; Table 5: relative Dice.
* Figure 4: mean Dice against the share of real training images.
* The promotion decisions.

Every number also goes to ``report.json`` at full precision. The sd is the sample standard
deviation over repeats (``ddof=1``); with one repeat it is undefined and shown as a dash.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from synthmri.config import Config
from synthmri.data.labels import EVAL_LABELS, STRUCTURES
from synthmri.data.store import SliceStore
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from synthmri.monitoring import monitored
from synthmri.report_figures import (
    ARCH_NAMES,
    Block,
    figure_blocks,
    fmt_number,
    fmt_stats,
    generator_key,
    overlay,
    ratio_blocks,
    ratio_series,
    samples_blocks,
    setting_name,
    source_name,
)

__all__ = ["aggregate", "generator_ranking", "generator_table", "load_evaluations", "overlay", "write_report"]

SCORES = ("dice", "hausdorff", "hausdorff95")
TRAIN_ORDER = {"real": 0, "synthetic": 1, "mixed": 2, "ratio": 3}
# The paper's numbering of the Dice and Hausdorff tables: (architecture, augmentation) -> table.
TABLE_NUMBERS = {("unet", False): 3, ("unet", True): 4, ("swin", False): 6, ("swin", True): 7}
# Table 1: (key, column, lower is better).
RANKED = (("fid", "FID", True), ("is", "IS", False), ("fd", "in-domain FD", True), ("dice", "Dice", False),
          ("hd", "HD", True))


# ---------------------------------------------------------------------------- data


def load_evaluations(path: Path) -> list[dict[str, Any]]:
    """The evaluate-segmenter summaries at `path` (directory or summary.json), one per repeat.

    An aggregate of several repeats, or a gathered grid, lists its summaries under ``runs``;
    those are read instead, so the report computes mean and sd itself. Each carries its
    path under ``_path``.

    Raises:
        FileNotFoundError: a summary is missing.
        ValueError: a file is not an evaluate-segmenter summary.
    """
    from synthmri.segmenters.evaluate import evaluation_runs

    runs = evaluation_runs(Path(path))
    for run in runs:
        missing = [key for key in SCORES if key not in run]
        if missing or "train" not in run["model"]:
            raise ValueError(f"{run['_path']}: not an evaluate-segmenter summary (missing {missing or 'model.train'})")
    return runs


def _stats(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    sd = float(np.std(array, ddof=1)) if len(array) > 1 else float("nan")
    return {"mean": float(np.mean(array)), "sd": sd, "values": [float(v) for v in array]}


def aggregate(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, train, real share, augment, synthetic stores): mean/sd over the repeats.

    Relative Dice divides a row's mean Dice by that of real-only training with augmentation
    of the same architecture (real-only without augmentation if no such run exists).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for ev in evaluations:
        model = ev["model"]
        key = (str(model.get("arch", "")), str(model["train"]), model.get("real_share"),
               bool(model.get("augment", False)), tuple(str(s) for s in model.get("synthetic") or []))
        groups.setdefault(key, []).append(ev)
    rows = []
    for (arch, train, share, augment, synthetic), members in groups.items():
        structures = [k for k in STRUCTURES if all(k in m["dice"] for m in members)]
        rows.append({
            "arch": arch, "train": train, "real_share": share, "augment": augment, "synthetic": list(synthetic),
            "n": len(members), "runs": [m["model"].get("name") or m["_path"] for m in members],
            "sources": [m["_path"] for m in members],
            **{score: {k: _stats([m[score][k] for m in members]) for k in structures} for score in SCORES},
            "mean_dice": _stats([m["mean_dice"] for m in members]),
        })
    rows.sort(key=lambda r: (r["arch"], TRAIN_ORDER.get(r["train"], 9), r["real_share"] or 0, r["synthetic"],
                             not r["augment"]))
    for row in rows:
        refs = [r for r in rows if r["arch"] == row["arch"] and r["train"] == "real"]
        ref = next((r for r in refs if r["augment"]), refs[0] if refs else None)
        if ref is None or ref["mean_dice"]["mean"] <= 0:
            row["relative_dice"], row["relative_to"] = None, None
        else:
            row["relative_dice"] = row["mean_dice"]["mean"] / ref["mean_dice"]["mean"]
            row["relative_to"] = f"real-{'aug' if ref['augment'] else 'orig'}"
    return rows


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


# ---------------------------------------------------------------------------- cells


def _quality(summary: dict[str, Any], section: str, key: str) -> str:
    return fmt_number(_computed(summary, section, key), ".4g")


def setting_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One architecture and setting: Dice (4 decimals) and maximum Hausdorff in mm (2), mean ± sd."""
    headers = ["training", "n", *(f"Dice {k}" for k in STRUCTURES), "mean Dice", *(f"HD {k}" for k in STRUCTURES)]
    cells = [[source_name(row), str(row["n"]), *(fmt_stats(row["dice"].get(k), 4) for k in STRUCTURES),
              fmt_stats(row["mean_dice"], 4), *(fmt_stats(row["hausdorff"].get(k), 2) for k in STRUCTURES)]
             for row in rows]
    return headers, cells


def hd95_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """95th-percentile Hausdorff distance in mm of every row."""
    headers = ["arch", "training", "setting", *(f"HD95 {k}" for k in STRUCTURES)]
    cells = [[row["arch"], source_name(row), setting_name(row["augment"]),
              *(fmt_stats(row["hausdorff95"].get(k), 2) for k in STRUCTURES)] for row in rows]
    return headers, cells


def relative_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Table 5: relative Dice, one row per training source, one column per architecture and setting."""
    columns = sorted({(r["arch"], r["augment"]) for r in rows},
                     key=lambda c: (c[0] not in ARCH_NAMES, c[0] != "unet", c))  # U-Net, Swin, the rest
    sources = list(dict.fromkeys(source_name(r) for r in rows))
    value = {(source_name(r), r["arch"], r["augment"]): r["relative_dice"] for r in rows}
    headers = ["training", *(f"{ARCH_NAMES.get(a, a)} {setting_name(aug)}" for a, aug in columns)]
    cells = [[source, *(fmt_number(value.get((source, a, aug)), ".4f") for a, aug in columns)] for source in sources]
    return headers, cells


# ---------------------------------------------------------------------------- sections


def _generator_blocks(rows: list[dict[str, Any]], memorization: list[dict[str, Any]]) -> tuple[list[Block], list]:
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


def _memorization_blocks(summary: dict[str, Any]) -> list[Block]:
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


def _segmentation_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    tabled = [r for r in rows if r["train"] != "ratio"]
    keys = sorted(set(TABLE_NUMBERS) | {(r["arch"], r["augment"]) for r in tabled},
                  key=lambda k: (TABLE_NUMBERS.get(k, 99), k))
    blocks: list[Block] = [
        ("h", 2, "Segmentation of the test subjects"),
        ("p", "3D Dice per label (ET, ED, NCR/NET) and BraTS region (WT, TC; the ET region is the ET label) and the "
              "maximum symmetric Hausdorff distance (HD, mm, voxel spacing of the source volumes) on the real test "
              "subjects, mean ± sd over repeats; mean Dice is over the three labels. A structure missing from "
              "exactly one of prediction and reference scores Dice 0 and the volume's diagonal."),
    ]
    for arch, augment in keys:
        number = TABLE_NUMBERS.get((arch, augment))
        if number == 6:
            blocks += _relative_blocks(tabled)
        title = f"Table {number}" if number else "Supplementary table"
        blocks.append(("h", 3, f"{title}: {ARCH_NAMES.get(arch, arch)}, "
                               f"{'with' if augment else 'without'} augmentation"))
        members = [r for r in tabled if r["arch"] == arch and r["augment"] == augment]
        blocks.append(("table", *setting_table(members)) if members else
                      ("p", f"No evaluations of {ARCH_NAMES.get(arch, arch)} {'with' if augment else 'without'} "
                            "augmentation were given."))
    if tabled:
        blocks += [("h", 3, "Supplementary: 95th-percentile Hausdorff distance"),
                   ("p", "The BraTS challenge's Hausdorff distance, mm, mean ± sd over repeats."),
                   ("table", *hd95_table(tabled))]
    ranking = generator_ranking(rows)
    if ranking:
        blocks += [("h", 3, "Supplementary: generators ranked by Dice per architecture and setting"),
                   ("table", ["arch", "setting", "rank", "generator", "mean Dice", "relative Dice"],
                    [[r["arch"], r["setting"], str(r["rank"]), r["generator"], fmt_stats(r["mean_dice"], 4),
                      fmt_number(r["relative_dice"], ".4f")] for r in ranking])]
    return blocks


def _relative_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    return [("h", 3, "Table 5: Relative Dice"),
            ("p", "Mean Dice divided by that of real-only training with augmentation of the same architecture "
                  "(without augmentation where that is all there is).")] + (
        [("table", *relative_table(rows))] if rows else [("p", "No evaluations.")])


def _promotion_blocks(path: Path) -> list[Block]:
    try:
        decision = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: promotion decision not found (run promote with --out)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    verdict = "PASSED: alias 'champion' set" if decision.get("passed") else "FAILED: alias 'champion' not set"
    cells = []
    for c in decision.get("criteria", []):
        value = "nan" if c.get("value") is None else f"{c['value']:.4f}"
        cells.append([c["name"], value, f"{c.get('comparison', '')} {c['threshold']:.4f}",
                      "pass" if c["passed"] else "FAIL", c.get("explanation", "")])
    blocks: list[Block] = [("h", 2, "Promotion"),
                           ("p", f"{decision.get('model')} version {decision.get('version')}: {verdict}."),
                           ("table", ["criterion", "value", "required", "result", "why"], cells)]
    blocks += [("p", f"Note: {note}") for note in decision.get("notes", [])]
    return blocks


# ---------------------------------------------------------------------------- rendering


def render_markdown(blocks: list[Block], figures: str = "figures") -> str:
    """Markdown with images referenced under `figures/`."""
    parts = []
    for block in blocks:
        if block[0] == "h":
            parts.append(f"{'#' * block[1]} {block[2]}")
        elif block[0] == "p":
            parts.append(block[1])
        elif block[0] == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
                      for row in rows]
            parts.append("\n".join(lines))
        elif block[0] == "img":
            parts.append(f"![{block[2]}]({figures}/{block[1]})")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    """One HTML file with every image embedded as a base64 PNG and the style inline."""
    esc = html.escape
    body = []
    for block in blocks:
        if block[0] == "h":
            body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            body.append(f"<p>{esc(block[1])}</p>")
        elif block[0] == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif block[0] == "img":
            data = base64.b64encode(block[3]).decode("ascii")
            body.append(f'<figure><img alt="{esc(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 5px;text-align:left;white-space:nowrap}th{background:#f2f2f2}"
             ".wide{overflow-x:auto}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#555}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _as_list(paths: Path | list[Path] | None) -> list[Path]:
    return [] if paths is None else [Path(p) for p in paths] if isinstance(paths, list) else [Path(paths)]


@monitored("report", unit="reports")
def write_report(out: Path, evaluations: list[Path], memorization: Path | list[Path] | None, real: Path | None,
                 synthetic: list[Path] | None, promotion: Path | list[Path] | None, cfg: Config) -> Path:
    """Write report.md, report.html (self-contained) and report.json; log them to MLflow.

    Args:
        out: report directory (created); figures for the Markdown go to ``out/figures``.
        evaluations: evaluate-segmenter outputs (directories or summary.json files).
        memorization: evaluate-synthetic output directory, several (one per generator), or None.
        real: real slice store for sample slices, or None.
        synthetic: synthetic slice stores for sample slices (one figure each), or None.
        promotion: the promotion decision JSON, several (one per generator), or None.
        cfg: resolved config (seed for sample choice, tracking).

    Returns:
        Path to ``out/report.html``.

    Raises:
        FileNotFoundError: an input file is missing.
        ValueError: no evaluations, or an input that is not what its flag says.
    """
    import mlflow

    from synthmri.tracking import stage_run

    if not evaluations:
        raise ValueError("report: at least one --evaluation is required")
    out = Path(out)
    rows = aggregate([ev for p in evaluations for ev in load_evaluations(Path(p))])
    memorizations = [load_memorization(p) for p in _as_list(memorization)]
    real_store = SliceStore(Path(real)) if real is not None else None
    stores = []
    for path in synthetic or []:
        store = SliceStore(Path(path))
        stores.append((generator_key((store.manifest.get("generator") or {}).get("name") or Path(path).name), store))

    blocks: list[Block] = [("h", 1, "synthmri report"),
                           ("p", f"Profile {cfg.profile}, seed {cfg.seed}; {sum(r['n'] for r in rows)} evaluations, "
                                 f"{len(memorizations)} generator evaluation(s). "
                                 "Figures and tables are numbered after Akbar et al. 2024.")]
    blocks += samples_blocks(real_store, stores, cfg.seed)
    generator_blocks, table1 = _generator_blocks(rows, memorizations)
    blocks += generator_blocks
    blocks.append(("h", 2, "Memorization"))
    if not memorizations:
        blocks.append(("p", "No evaluate-synthetic outputs given (--memorization)."))
    for summary in memorizations:
        blocks += _memorization_blocks(summary)
    prediction_blocks, examples = figure_blocks(rows)
    blocks += prediction_blocks + _segmentation_blocks(rows) + ratio_blocks(rows)
    for path in _as_list(promotion):
        blocks += _promotion_blocks(path)

    for block in blocks:
        if block[0] == "img":
            atomic_write_bytes(out / "figures" / block[1], block[3])
    atomic_write_text(out / "report.md", render_markdown(blocks))
    html_path = out / "report.html"
    atomic_write_text(html_path, render_html(blocks, "synthmri report"))
    quality = [{"generator": s["_name"], "version": (s.get("generator") or {}).get("version"),
                "mlflow_run_id": s.get("mlflow_run_id"), **(s.get("quality") or {}),
                "memorization": {part: s[part] for part in ("synthetic", "baseline")}, "threshold": s["threshold"]}
               for s in memorizations]
    atomic_write_json(out / "report.json", jsonable({
        "segmentation": rows, "generators": table1, "quality": quality, "ratio": ratio_series(rows),
        "examples": examples, "generator_ranking": generator_ranking(rows)}))

    datasets = {"real": real_store} if real_store is not None else {}
    datasets.update({f"synthetic_{i}": store for i, (_, store) in enumerate(stores)})
    with stage_run(cfg, stage="report", experiment="pipeline", run_name="report", datasets=datasets):
        for name in ("report.html", "report.md", "report.json"):
            mlflow.log_artifact(str(out / name))
    return html_path
