"""``synthmri report``: the paper's tables and figures as Markdown and a self-contained HTML page.

Sections: segmentation results (3D Dice, Hausdorff maximum and 95th percentile per label
and region, mean ± sd over repeats, per architecture × training source × augmentation ×
synthetic stores; relative Dice against real-only training with augmentation; the
ranking of generators by synthetic-only Dice; the real-share experiment), memorization (synthetic vs held-out real
baseline, histogram, nearest pairs), sample slices (real vs synthetic) and the promotion
decision. The numbers also go to ``report.json`` at full precision.

The sd is the sample standard deviation over repeats (``ddof=1``); with one repeat it is
undefined and shown as a dash.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from synthmri.config import Config
from synthmri.data.labels import STRUCTURES, values_to_classes
from synthmri.data.store import IMAGE_CHANNELS, SliceStore
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from synthmri.monitoring import monitored

SCORES = ("dice", "hausdorff", "hausdorff95")
TRAIN_ORDER = {"real": 0, "synthetic": 1, "mixed": 2, "ratio": 3}
# Overlay colours by class index (1 NCR/NET, 2 ED, 3 ET): green, blue, red as in the paper's figures.
OVERLAY = {1: (0.0, 0.8, 0.0), 2: (0.1, 0.3, 1.0), 3: (1.0, 0.0, 0.0)}
SAMPLES_PER_STORE = 4

Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", name, caption, png)


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
        missing = [key for key in ("dice", "hausdorff", "hausdorff95") if key not in run]
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


def generator_ranking(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic-only rows of one generator each, ranked by mean Dice within (arch, setting).

    Returns:
        Dicts with arch, setting, rank (1 = best), generator, mean_dice (stats) and relative_dice.
    """
    ranked = []
    single = [r for r in rows if r["train"] == "synthetic" and len(r["synthetic"]) == 1]
    for arch, augment in sorted({(r["arch"], r["augment"]) for r in single}, key=lambda k: (k[0], not k[1])):
        group = sorted((r for r in single if r["arch"] == arch and r["augment"] == augment),
                       key=lambda r: -r["mean_dice"]["mean"])
        for rank, row in enumerate(group, start=1):
            ranked.append({"arch": arch, "setting": "aug" if augment else "orig", "rank": rank,
                           "generator": Path(row["synthetic"][0]).name or row["synthetic"][0],
                           "mean_dice": row["mean_dice"], "relative_dice": row["relative_dice"]})
    return ranked


def _fmt(stats: dict[str, Any] | None, digits: int) -> str:
    if stats is None:
        return "–"
    mean, sd = stats["mean"], stats["sd"]
    if math.isnan(sd):
        return f"{mean:.{digits}f} ± –"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _source_name(row: dict[str, Any]) -> str:
    names = ", ".join(Path(s).name or s for s in row["synthetic"])
    train = row["train"]
    if train == "ratio":
        train = f"ratio ({100 * row['real_share']:.0f}% real)"
    if len(row["synthetic"]) > 1 and row["train"] != "real":
        names = f"ensemble: {names}"
    return f"{train} ({names})" if names and row["train"] != "real" else train


def _relative(row: dict[str, Any]) -> str:
    return "–" if row["relative_dice"] is None else f"{row['relative_dice']:.4f} (vs {row['relative_to']})"


def results_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the Dice table: per label and region, mean Dice and relative Dice (4 decimals)."""
    headers = ["arch", "training", "setting", "n", *(f"Dice {k}" for k in STRUCTURES), "mean Dice", "relative Dice"]
    cells = [[row["arch"], _source_name(row), "aug" if row["augment"] else "orig", str(row["n"]),
              *(_fmt(row["dice"].get(k), 4) for k in STRUCTURES), _fmt(row["mean_dice"], 4), _relative(row)]
             for row in rows]
    return headers, cells


def hausdorff_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the Hausdorff table: maximum and 95th percentile in mm (2 decimals)."""
    headers = ["arch", "training", "setting", *(f"HD {k}" for k in STRUCTURES), *(f"HD95 {k}" for k in STRUCTURES)]
    cells = [[row["arch"], _source_name(row), "aug" if row["augment"] else "orig",
              *(_fmt(row["hausdorff"].get(k), 2) for k in STRUCTURES),
              *(_fmt(row["hausdorff95"].get(k), 2) for k in STRUCTURES)]
             for row in rows]
    return headers, cells


# ---------------------------------------------------------------------------- figures


def _figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def overlay(image: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """RGB float [H, W, 3]: grayscale `image` (0-255) with annotation classes blended in colour."""
    gray = np.asarray(image, dtype=np.float32) / 255.0
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    classes = values_to_classes(annotation)
    for cls, colour in OVERLAY.items():
        mask = classes == cls
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(colour, dtype=np.float32)
    return rgb


def pick_samples(store: SliceStore, k: int, seed: int, split: str | None = None) -> np.ndarray:
    """Up to `k` slices of `split`, preferring slices with tumour, from a seeded random subset."""
    positions = store.indices(split)
    if len(positions) == 0:
        positions = store.indices()
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(positions)[: 8 * k]
    slices = store.read(candidates)  # SliceStore.read orders rows within each shard itself
    tumour = (slices[:, IMAGE_CHANNELS] > 0).reshape(len(slices), -1).mean(axis=1)
    order = np.argsort(-(tumour > 0).astype(int), kind="stable")  # tumour slices first, random order kept
    return candidates[order[:k]]


def sample_grid(stores: list[tuple[str, SliceStore]], k: int, seed: int) -> bytes:
    """PNG: per store `k` rows of T1, T1Gd, T2, FLAIR (grayscale) and FLAIR + annotation overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for title, store in stores:
        split = "test" if np.any(store.split == "test") else None  # real: patients no generator saw
        picked = pick_samples(store, k, seed, split)
        rows += [(title, store.slice_id[p], s) for p, s in zip(picked, store.read(picked))]
    columns = ["T1", "T1Gd", "T2", "FLAIR", "FLAIR + labels\n(red ET, blue ED, green NCR)"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * 1.6, len(rows) * 1.6), squeeze=False)
    for r, (title, slice_id, image) in enumerate(rows):
        for c in range(5):
            ax = axes[r, c]
            if c < 4:
                ax.imshow(image[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(overlay(image[3], image[4]), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(f"{title}\n{slice_id}", fontsize=6)
    return _figure_png(fig)


# ---------------------------------------------------------------------------- sections


def _results_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = [
        ("h", 2, "Segmentation of the test subjects"),
        ("p", "3D Dice per label (ET, ED, NCR/NET) and BraTS region (WT, TC; the ET region is the ET label) on the "
              "real test subjects, mean ± sd over repeats; mean Dice is over the three labels; relative Dice = "
              "mean Dice / mean Dice of real-only training with augmentation (paper, Table 3)."),
        ("table", *results_table(rows)),
        ("h", 3, "Hausdorff distance"),
        ("p", "Symmetric Hausdorff distance in mm (voxel spacing of the source volumes): maximum (the paper's) "
              "and 95th percentile (the BraTS challenge's); a structure missing from exactly one of prediction "
              "and reference scores the volume's diagonal."),
        ("table", *hausdorff_table(rows)),
    ]
    ranking = generator_ranking(rows)
    if ranking:
        blocks += [("h", 3, "Ranking of generators"),
                   ("p", "Generators ranked by the mean Dice of segmenters trained on their synthetic slices alone."),
                   ("table", ["arch", "setting", "rank", "generator", "mean Dice", "relative Dice"],
                    [[r["arch"], r["setting"], str(r["rank"]), r["generator"], _fmt(r["mean_dice"], 4),
                      "–" if r["relative_dice"] is None else f"{r['relative_dice']:.4f}"] for r in ranking])]
    ratio = [r for r in rows if r["train"] == "ratio"]
    if ratio:
        blocks += [("h", 3, "Share of real images (paper Fig. 4)"),
                   ("p", "A fixed pool of training slices with a growing share of real ones; the rest synthetic."),
                   ("table", ["arch", "setting", "real share", "synthetic", "n", "mean Dice", "relative Dice"],
                    [[r["arch"], "aug" if r["augment"] else "orig", f"{100 * r['real_share']:.0f}%",
                      ", ".join(Path(s).name or s for s in r["synthetic"]), str(r["n"]), _fmt(r["mean_dice"], 4),
                      _relative(r)] for r in ratio])]
    return blocks


def _memorization_blocks(path: Path) -> list[Block]:
    from synthmri.metrics.evaluate_synthetic import load_summary, plot_histogram, read_memorization_csv

    summary = load_summary(path)
    directory = Path(path).parent if Path(path).suffix == ".json" else Path(path)
    stats = ["mean", "median", "p99", "max", "share_above_threshold", "n"]
    cells = [[name, *(f"{summary[name][s]:.4f}" if s != "n" else str(summary[name][s]) for s in stats)]
             for name in ("synthetic", "baseline")]
    generator = summary.get("generator") or {}
    blocks: list[Block] = [
        ("h", 2, "Memorization"),
        ("p", f"Highest Pearson correlation of each synthetic slice (generator {generator.get('name', '?')} "
              f"version {generator.get('version', '?')}) with any training slice, against the same statistic for "
              f"held-out real test slices (baseline). Threshold r > {summary['threshold']:g}."),
        ("table", ["set", *stats], cells),
    ]
    hist = directory / "memorization_hist.png"
    if hist.is_file():
        png = hist.read_bytes()
    else:  # an older output without the figure: redraw it from the CSVs
        _, syn, _ = read_memorization_csv(directory / "memorization.csv")
        _, base, _ = read_memorization_csv(directory / "memorization_baseline.csv")
        png = plot_histogram(syn, base, float(summary["threshold"]), "memorization")
    blocks.append(("img", "memorization_hist.png", "Max-correlation distributions: synthetic vs real test", png))
    quality = summary.get("quality") or {}
    cells = []
    for section, title, keys in (("inception", "ImageNet Inception", ("fid", "is_mean", "is_real_mean")),
                                 ("in_domain", "in-domain (segmenter features)",
                                  ("frechet_distance", "kid", "precision", "recall"))):
        values = quality.get(section)
        if values:
            shown = ", ".join(f"{k} {values[k]:.4g}" for k in keys if values.get(k) is not None)
            cells.append([title, values["status"], shown or values.get("reason", "")])
    if cells:
        blocks.append(("table", ["features", "status", "metrics"], cells))
    pairs = directory / "memorization_pairs.png"
    if pairs.is_file():
        blocks.append(("img", "memorization_pairs.png", "Closest synthetic slices beside their nearest training slices",
                       pairs.read_bytes()))
    if summary.get("nearest"):
        blocks.append(("table", ["synthetic slice", "nearest training slice", "r"],
                       [[n["slice_id"], n["train_slice_id"], f"{n['max_corr']:.4f}"] for n in summary["nearest"]]))
    return blocks


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
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif block[0] == "img":
            parts.append(f"![{block[2]}]({figures}/{block[1]})")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    """One HTML file with every image embedded as a base64 PNG."""
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
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif block[0] == "img":
            data = base64.b64encode(block[3]).decode("ascii")
            body.append(f'<figure><img alt="{esc(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}"
             "img{max-width:100%}figcaption{font-size:12px;color:#555}")
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
        synthetic: synthetic slice stores for sample slices, or None.
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
    blocks: list[Block] = [("h", 1, "synthmri report"),
                           ("p", f"Profile {cfg.profile}, seed {cfg.seed}; {sum(r['n'] for r in rows)} evaluations.")]
    blocks += _results_blocks(rows)
    for path in _as_list(memorization):
        blocks += _memorization_blocks(path)
    stores: list[tuple[str, SliceStore]] = []
    if real is not None:
        stores.append(("real", SliceStore(Path(real))))
    for path in synthetic or []:
        store = SliceStore(Path(path))
        stores.append(((store.manifest.get("generator") or {}).get("name") or Path(path).name, store))
    if stores:
        blocks += [("h", 2, "Sample slices"),
                   ("img", "samples.png", "Real vs synthetic slices: T1, T1Gd, T2, FLAIR and annotation overlay",
                    sample_grid(stores, SAMPLES_PER_STORE, cfg.seed))]
    for path in _as_list(promotion):
        blocks += _promotion_blocks(path)

    for block in blocks:
        if block[0] == "img":
            atomic_write_bytes(out / "figures" / block[1], block[3])
    atomic_write_text(out / "report.md", render_markdown(blocks))
    html_path = out / "report.html"
    atomic_write_text(html_path, render_html(blocks, "synthmri report"))
    atomic_write_json(out / "report.json", jsonable({"segmentation": rows, "generator_ranking": generator_ranking(rows)}))

    datasets = {("real" if title == "real" else f"synthetic_{i}"): store for i, (title, store) in enumerate(stores)}
    with stage_run(cfg, stage="report", experiment="pipeline", run_name="report", datasets=datasets):
        for name in ("report.html", "report.md", "report.json"):
            mlflow.log_artifact(str(out / name))
    return html_path
