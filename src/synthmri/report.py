"""``synthmri report``: the paper's tables and figures as Markdown and a self-contained HTML page.

Sections, in the paper's numbering:

* Figure 1: sample slices of each generator beside a real test slice.
* Tables 1-2 and memorization per generator (:mod:`synthmri.report_generators`).
* Figures 2-3: one test slice segmented by every training setting (U-Net, Swin).
* Tables 3-7 as the paper numbers them (:mod:`synthmri.report_tables`): 3D Dice on BraTS
  2020 (Table 3) or 2021 (Table 4), relative Dice (Table 5), maximum Hausdorff distance on
  2020 (Table 6) or 2021 (Table 7), mean ± sd over repeats, with the paper's values beside
  the run's when it is a paper run; then the 95th-percentile Hausdorff distance.
* Figure 4: mean Dice against the share of real training images.
* The promotion decisions.

Every number also goes to ``report.json`` at full precision. The mean and sd over repeats
follow the evaluations' metric convention (:mod:`synthmri.segmenters.summaries`): under
``paper`` undefined values drop out and the sd is the population sd, under ``penalise`` it
is the sample sd; with fewer than two defined values the sd is undefined, shown as a dash.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from synthmri.config import TRAINING_SOURCES, Config
from synthmri.data.labels import EVAL_LABELS, STRUCTURES
from synthmri.data.store import SliceStore
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from synthmri.report_figures import (
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
from synthmri.report_generators import (
    competition_ranks,
    generator_blocks,
    generator_ranking,
    generator_table,
    load_memorization,
    memorization_blocks,
)
from synthmri.report_tables import RunDataset, run_convention, run_dataset, segmentation_tables

__all__ = ["aggregate", "competition_ranks", "generator_ranking", "generator_table", "load_evaluations", "overlay",
           "render_html", "render_markdown", "write_report"]

SCORES = ("dice", "hausdorff", "hausdorff95")
TRAIN_ORDER = {source: index for index, source in enumerate(TRAINING_SOURCES)}


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


def _stats(values: list[float | None], convention: str) -> dict[str, Any]:
    """Mean and sd over repeats under `convention`; ``n``: how many values they cover."""
    from synthmri.segmenters.summaries import mean_over, repeat_sd

    mean, n = mean_over(values, convention)
    sd = repeat_sd(values, convention)
    return {"mean": mean, "sd": float("nan") if sd is None else sd, "n": n,
            "values": [float("nan") if v is None else float(v) for v in values]}


def _mean_hausdorff(evaluation: dict[str, Any], convention: str) -> float:
    """One evaluation's maximum Hausdorff distance averaged over the labels ET, ED and NCR/NET."""
    from synthmri.segmenters.summaries import mean_over

    return mean_over([evaluation["hausdorff"][k] for k in EVAL_LABELS], convention)[0]


def aggregate(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, train, real share, augment, synthetic stores): mean/sd over the repeats.

    Relative Dice divides a row's mean Dice by that of real-only training with augmentation
    of the same architecture (real-only without augmentation if no such run exists). The
    statistics follow the convention the row's evaluations were scored under (``mixed`` when
    they differ, treated as ``penalise``).
    """
    from synthmri.segmenters.summaries import convention_of

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for ev in evaluations:
        model = ev["model"]
        key = (str(model.get("arch", "")), str(model["train"]), model.get("real_share"),
               bool(model.get("augment", False)), tuple(str(s) for s in model.get("synthetic") or []))
        groups.setdefault(key, []).append(ev)
    rows = []
    for (arch, train, share, augment, synthetic), members in groups.items():
        structures = [k for k in STRUCTURES if all(k in m["dice"] for m in members)]
        found = {convention_of(m) for m in members}
        convention = found.pop() if len(found) == 1 else "mixed"
        stats = "penalise" if convention == "mixed" else convention
        labelled = all(k in m["hausdorff"] for m in members for k in EVAL_LABELS)
        rows.append({
            "arch": arch, "train": train, "real_share": share, "augment": augment, "synthetic": list(synthetic),
            "n": len(members), "runs": [m["model"].get("name") or m["_path"] for m in members],
            "sources": [m["_path"] for m in members], "convention": convention,
            "subjects": max((m.get("subjects") or 0 for m in members), default=0) or None,
            **{score: {k: _stats([m[score][k] for m in members], stats) for k in structures} for score in SCORES},
            "mean_dice": _stats([m["mean_dice"] for m in members], stats),
            "mean_hausdorff": _stats([_mean_hausdorff(m, stats) for m in members], stats) if labelled else None,
            "subjects_scored": {score: {k: [((m.get("subjects_scored") or {}).get(score) or {}).get(k)
                                            for m in members] for k in structures} for score in SCORES}
            if all("subjects_scored" in m for m in members) else None,
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


# ---------------------------------------------------------------------------- cells


def hd95_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """95th-percentile Hausdorff distance in mm of every row."""
    headers = ["arch", "training", "setting", *(f"HD95 {k}" for k in STRUCTURES)]
    cells = [[row["arch"], source_name(row), setting_name(row["augment"]),
              *(fmt_stats(row["hausdorff95"].get(k), 2) for k in STRUCTURES)] for row in rows]
    return headers, cells


# ---------------------------------------------------------------------------- sections


def _segmentation_blocks(rows: list[dict[str, Any]], dataset: RunDataset,
                         convention: str) -> tuple[list[Block], dict[str, Any]]:
    tabled = [r for r in rows if r["train"] != "ratio"]
    blocks: list[Block] = [
        ("h", 2, "Segmentation of the test subjects"),
        ("p", "3D Dice per label (ET, ED, NCR/NET) and BraTS region (WT, TC; the ET region is the ET label) and the "
              "maximum symmetric Hausdorff distance (HD, mm, voxel spacing of the source volumes) on the real test "
              "subjects, mean ± sd over repeats; mean Dice is over the three labels."),
    ]
    tables, record = segmentation_tables(rows, dataset, convention)
    blocks += tables
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
    return blocks, record


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


def write_report(out: Path, evaluations: list[Path], memorization: Path | list[Path] | None, real: Path | None,
                 synthetic: list[Path] | None, promotion: Path | list[Path] | None, cfg: Config) -> Path:
    """Write report.md, report.html (self-contained) and report.json.

    The stage (:mod:`synthmri.stages.report`) logs them to MLflow.

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
    if not evaluations:
        raise ValueError("report: at least one --evaluation is required")
    out = Path(out)
    runs = [ev for p in evaluations for ev in load_evaluations(Path(p))]
    rows = aggregate(runs)
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
    dataset, convention = run_dataset(runs, real_store), run_convention(runs)
    blocks += samples_blocks(real_store, stores, cfg.seed)
    table_blocks, table1 = generator_blocks(rows, memorizations)
    blocks += table_blocks
    blocks.append(("h", 2, "Memorization"))
    if not memorizations:
        blocks.append(("p", "No evaluate-synthetic outputs given (--memorization)."))
    for summary in memorizations:
        blocks += memorization_blocks(summary)
    prediction_blocks, examples = figure_blocks(rows)
    segmentation, tables = _segmentation_blocks(rows, dataset, convention)
    blocks += prediction_blocks + segmentation + ratio_blocks(rows)
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
        "segmentation": rows, "tables": tables, "generators": table1, "quality": quality, "ratio": ratio_series(rows),
        "examples": examples, "generator_ranking": generator_ranking(rows)}))
    return html_path
