"""The figures of ``synthmri report``: PNG drawings and the report sections that hold them.

* Fig. 1: sample slices of each generator beside a real reference slice (:func:`samples_figure`).
* Figs. 2-3: one test slice segmented by every training setting of an architecture
  (:func:`prediction_figure`), from the ``example.npz`` that ``evaluate-segmenter`` writes.
* Fig. 4: mean Dice against the share of real training images (:func:`ratio_figure`).

Annotations are drawn as in the paper: red ET, blue ED, green NCR/NET.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthmri.data.labels import values_to_classes
from synthmri.data.store import IMAGE_CHANNELS, SliceStore

# Overlay colours by class index (1 NCR/NET, 2 ED, 3 ET): green, blue, red as in the paper's figures.
OVERLAY = {1: (0.0, 0.8, 0.0), 2: (0.1, 0.3, 1.0), 3: (1.0, 0.0, 0.0)}
LEGEND = "red ET, blue ED, green NCR/NET"
CHANNEL_TITLES = ("T1", "T1Gd", "T2", "FLAIR")
FLAIR = 3
DPI = 90
SAMPLES_PER_STORE = 4
#: Display names: the paper's two architectures as its tables name them, then this product's own.
ARCH_NAMES = {"unet": "U-Net", "swin": "Swin", "nnunet": "nnU-Net (DynUNet)", "swinunetr": "Swin UNETR"}
FIGURE_NUMBERS = {"unet": 2, "swin": 3}  # the paper's prediction figures

Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", name, caption, png)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless pods and CI have no display
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a matplotlib figure (cropped to its content); the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", bbox_inches="tight", dpi=DPI)
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
    slices = store.read(candidates)  # SliceStore.read returns the rows in the order asked for
    tumour = (slices[:, IMAGE_CHANNELS] > 0).reshape(len(slices), -1).mean(axis=1)
    order = np.argsort(-(tumour > 0).astype(int), kind="stable")  # tumour slices first, random order kept
    return candidates[order[:k]]


def samples_figure(groups: Sequence[tuple[str, SliceStore, int]], seed: int) -> bytes:
    """PNG: per group (title, store, k) `k` rows of T1, T1Gd, T2, FLAIR and FLAIR + annotation.

    A store with a ``test`` split (the real one) is sampled from it: patients no generator saw.
    """
    plt = _pyplot()
    rows = []
    for title, store, k in groups:
        split = "test" if np.any(store.split == "test") else None
        picked = pick_samples(store, k, seed, split)
        rows += [(title, store.slice_id[p], s) for p, s in zip(picked, store.read(picked))]
    columns = [*CHANNEL_TITLES, f"FLAIR + labels\n({LEGEND})"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * 1.5, len(rows) * 1.5), squeeze=False)
    for r, (title, slice_id, image) in enumerate(rows):
        for c in range(5):
            ax = axes[r, c]
            if c < 4:
                ax.imshow(image[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(overlay(image[FLAIR], image[IMAGE_CHANNELS]), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=7)
        axes[r, 0].set_ylabel(f"{title}\n{slice_id}", fontsize=6)
    return figure_png(fig)


def prediction_figure(examples: Sequence[tuple[str, dict[str, Any]]], columns: int = 5) -> bytes:
    """PNG: FLAIR of one test slice, its ground truth, then each setting's prediction, overlaid on FLAIR.

    Args:
        examples: (panel title, example) pairs; an example has ``image`` (uint8 [4, H, W]),
            ``truth`` and ``prediction`` (annotation values, [H, W]) and ``slice_id``. The
            FLAIR and ground truth panels come from the first.
        columns: panels per row.
    """
    plt = _pyplot()
    first = examples[0][1]
    flair = first["image"][FLAIR]
    panels = [("FLAIR", flair, None), ("ground truth", flair, first["truth"])]
    panels += [(title, example["image"][FLAIR], example["prediction"]) for title, example in examples]
    ncols = min(columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.7, nrows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image, labels) in zip(axes.flat, panels):
        if labels is None:
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(overlay(image, labels), interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"test slice {first['slice_id']} ({LEGEND})", fontsize=8)
    return figure_png(fig)


def ratio_figure(series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float]]]) -> bytes:
    """PNG: mean Dice (error bars: sd over repeats, where there are several) against the real share.

    Args:
        series: (label, real shares in [0, 1], mean Dice, sd) per line; a NaN sd draws no bar.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for label, shares, means, sds in series:
        errors = np.nan_to_num(np.asarray(sds, dtype=np.float64), nan=0.0)
        ax.errorbar(100 * np.asarray(shares, dtype=np.float64), means, yerr=errors, marker="o", markersize=4,
                    capsize=3, linewidth=1.2, label=label)
    ax.set_xlabel("share of real training images (%)")
    ax.set_ylabel("mean Dice (ET, ED, NCR/NET)")
    ax.set_xlim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return figure_png(fig)


# ---------------------------------------------------------------------------- labels


def generator_key(name: str) -> str:
    """A generator's name as the report shows it: a store path's last part, ``synthetic-`` dropped."""
    name = Path(str(name)).name or str(name)
    return name.removeprefix("synthetic-") or name


def setting_name(augment: bool) -> str:
    """``aug`` or ``orig`` (the paper's augmented and original training)."""
    return "aug" if augment else "orig"


def source_name(row: dict[str, Any]) -> str:
    """The training data of a report row: ``real``, ``synthetic (ddpm)``, ``mixed (ensemble: a, b)``, ..."""
    names = ", ".join(generator_key(s) for s in row["synthetic"])
    train = row["train"]
    if train == "ratio":
        train = f"ratio ({100 * row['real_share']:.0f}% real)"
    if len(row["synthetic"]) > 1 and row["train"] != "real":
        names = f"ensemble: {names}"
    return f"{train} ({names})" if names and row["train"] != "real" else train


def fmt_stats(stats: dict[str, Any] | None, digits: int) -> str:
    """``mean ± sd`` with `digits` decimals; an undefined sd (one repeat) as a dash, an undefined mean as one dash."""
    if stats is None or stats["mean"] is None or math.isnan(stats["mean"]):
        return "–"
    mean, sd = stats["mean"], stats["sd"]
    if sd is None or math.isnan(sd):
        return f"{mean:.{digits}f} ± –"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def fmt_number(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, or a dash for None."""
    return "–" if value is None else format(value, spec)


# ---------------------------------------------------------------------------- sections


def ratio_series(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Figure 4's lines: the ``ratio`` rows per (arch, setting, generators), by increasing real share."""
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["train"] == "ratio":
            lines.setdefault((row["arch"], row["augment"], tuple(row["synthetic"])), []).append(row)
    series = []
    for (arch, augment, synthetic), members in sorted(lines.items(), key=lambda kv: (kv[0][0], not kv[0][1], kv[0][2])):
        members.sort(key=lambda r: r["real_share"])
        series.append({"label": f"{ARCH_NAMES.get(arch, arch)} {'aug' if augment else 'orig'}, "
                                f"{', '.join(generator_key(s) for s in synthetic) or 'real'}",
                       "real_share": [r["real_share"] for r in members],
                       "mean_dice": [r["mean_dice"]["mean"] for r in members],
                       "sd": [r["mean_dice"]["sd"] for r in members], "n": [r["n"] for r in members]})
    return series


def load_example(row: dict[str, Any]) -> dict[str, Any] | None:
    """The ``example.npz`` beside the first of a row's evaluations that has one, else None."""
    from synthmri.segmenters.summaries import EXAMPLE

    for source in row["sources"]:
        path = Path(source).parent / EXAMPLE
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files} | {"slice_id": str(data["slice_id"])}
    return None


def samples_blocks(real: SliceStore | None, synthetic: list[tuple[str, SliceStore]], seed: int) -> list[Block]:
    """Figure 1: per synthetic store (name, store) its samples below one real test slice."""
    blocks: list[Block] = [("h", 2, "Figure 1: Real and synthetic slices")]
    if real is None and not synthetic:
        return blocks + [("p", "No slice stores given (--real, --synthetic): no samples.")]
    blocks.append(("p", f"T1, T1Gd, T2, FLAIR and FLAIR with the annotation ({LEGEND}); the top row of each "
                        "figure is the same real test slice, the rest are the generator's."))
    if not synthetic:
        return blocks + [("img", "samples-real.png", "Real test slices",
                          samples_figure([("real", real, SAMPLES_PER_STORE)], seed))]
    for name, store in synthetic:
        groups = ([("real", real, 1)] if real is not None else []) + [(name, store, SAMPLES_PER_STORE)]
        blocks.append(("img", f"samples-{name}.png", f"Figure 1: {name} beside a real slice",
                       samples_figure(groups, seed)))
    return blocks


def figure_blocks(rows: list[dict[str, Any]]) -> tuple[list[Block], dict[str, list[dict[str, Any]]]]:
    """Figures 2-3: per architecture the example slice and each training setting's prediction.

    Returns:
        The blocks and, per architecture, which setting showed which slice.
    """
    shown = [r for r in rows if r["train"] != "ratio"]
    archs = sorted({r["arch"] for r in shown} | set(FIGURE_NUMBERS), key=lambda a: (FIGURE_NUMBERS.get(a, 99), a))
    blocks: list[Block] = []
    used: dict[str, Any] = {}
    for arch in archs:
        title = f"Figure {FIGURE_NUMBERS[arch]}" if arch in FIGURE_NUMBERS else "Supplementary figure"
        blocks.append(("h", 2, f"{title}: Predictions of {ARCH_NAMES.get(arch, arch)} on a test slice"))
        examples = [(f"{source_name(r)}\n{setting_name(r['augment'])}", r, load_example(r))
                    for r in shown if r["arch"] == arch]
        examples = [(t, r, e) for t, r, e in examples if e is not None]
        if not examples:
            blocks.append(("p", f"No {ARCH_NAMES.get(arch, arch)} evaluations with a prediction example "
                                "(example.npz, written by evaluate-segmenter)."))
            continue
        ids = sorted({e["slice_id"] for _, _, e in examples})
        used[arch] = [{"training": source_name(r), "setting": setting_name(r["augment"]), "slice_id": e["slice_id"]}
                      for _, r, e in examples]
        blocks.append(("p", f"The slice with the largest tumour area of the first test subject, segmented by each "
                            f"training setting ({LEGEND})." + (f" Note: the evaluations show different slices "
                                                               f"({', '.join(ids)})." if len(ids) > 1 else "")))
        blocks.append(("img", f"predictions-{arch}.png", f"{ARCH_NAMES.get(arch, arch)}: ground truth and predictions",
                       prediction_figure([(t, e) for t, _, e in examples])))
    return blocks, used


def ratio_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    """Figure 4 and its table, or a note when no ``ratio`` evaluations were given."""
    blocks: list[Block] = [("h", 2, "Figure 4: Share of real images")]
    series = ratio_series(rows)
    if not series:
        return blocks + [("p", "No evaluations of the real-share experiment (train-segmenter --train ratio) were "
                               "given: nothing to plot.")]
    ratio = [r for r in rows if r["train"] == "ratio"]
    return blocks + [
        ("p", "A fixed pool of training slices with a growing share of real ones, the rest synthetic: mean Dice, "
              "error bars the sd over repeats."),
        ("img", "ratio.png", "Mean Dice against the share of real training images",
         ratio_figure([(s["label"], s["real_share"], s["mean_dice"], s["sd"]) for s in series])),
        ("table", ["arch", "setting", "real share", "synthetic", "n", "mean Dice", "relative Dice"],
         [[r["arch"], setting_name(r["augment"]), f"{100 * r['real_share']:.0f}%",
           ", ".join(generator_key(s) for s in r["synthetic"]), str(r["n"]), fmt_stats(r["mean_dice"], 4),
           fmt_number(r["relative_dice"], ".4f")] for r in ratio]),
    ]
