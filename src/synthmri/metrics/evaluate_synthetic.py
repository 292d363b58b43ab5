"""``synthmri evaluate-synthetic``: memorization of a synthetic store against the training slices.

For every synthetic slice: the highest Pearson correlation against every slice the
generator learned from (the real store's ``train`` and ``val`` splits,
:data:`synthmri.data.splits.GENERATOR_TRAIN_SPLITS`) and which training slice that was.
The same statistic for the real ``test`` slices (patients the generator never saw) is the
baseline: a generator that copies shows synthetic correlations above what two different
real patients reach.

Outputs in ``out``::

    memorization.csv            slice_id,max_corr,train_slice_id   (every synthetic slice)
    memorization_baseline.csv   same columns, one row per real test slice
    summary.json                distributions, threshold, generator, store hashes, run id
    memorization_hist.png       both distributions and the threshold
    memorization_pairs.png      the top-k synthetic slices beside their nearest training slices
    memorization_per_channel.csv  slice_id, max_corr_<channel>... (memorization.per_channel only)

Correlations use the shift search of ``memorization.max_shift`` (copies moved by a pixel or
two score as copies; 0 is the paper's pixel-aligned statistic).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from synthmri.config import Config
from synthmri.data.splits import GENERATOR_TRAIN_SPLITS
from synthmri.data.store import CHANNELS, SliceStore, StoreError
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable, read_stage_summary

if TYPE_CHECKING:
    from synthmri.metrics.features import InDomainFeatures

log = logging.getLogger(__name__)

STAGE = "evaluate-synthetic"
CSV_COLUMNS = ("slice_id", "max_corr", "train_slice_id")


def memorization_device() -> str:
    """Where the correlation products run: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_memorization_csv(path: Path, slice_ids: Sequence[str], max_corr: np.ndarray, train_ids: Sequence[str]) -> None:
    """Write one row per scored slice, atomically; ``max_corr`` as the shortest decimal that
    reads back as the same float64 (``share`` may reuse the values and must compare them exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for slice_id, value, train_id in zip(slice_ids, max_corr, train_ids):
        writer.writerow([slice_id, repr(float(value)), train_id])
    atomic_write_text(path, buffer.getvalue())


def read_memorization_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(slice_ids, max_corr, train_slice_ids)`` from a memorization CSV.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the header is not ``slice_id,max_corr,train_slice_id``.
    """
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if tuple(header or ()) != CSV_COLUMNS:
            raise ValueError(f"{path}: header {header}, expected {list(CSV_COLUMNS)}")
        rows = list(reader)
    return [r[0] for r in rows], np.asarray([float(r[1]) for r in rows], dtype=np.float64), [r[2] for r in rows]


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a matplotlib figure (laid out tightly); the caller closes it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_histogram(synthetic: np.ndarray, baseline: np.ndarray, threshold: float, title: str) -> bytes:
    """PNG bytes of both max-correlation distributions (density) with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")  # headless pods and CI have no display
    import matplotlib.pyplot as plt

    values = np.concatenate([synthetic, baseline])
    low = float(min(values.min(initial=1.0), threshold)) - 0.01
    bins = np.linspace(max(low, -1.0), 1.0, 60)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        if len(baseline):
            ax.hist(baseline, bins=bins, density=True, alpha=0.55, color="tab:blue", label=f"real test vs train (n={len(baseline)})")
        if len(synthetic):
            ax.hist(synthetic, bins=bins, density=True, alpha=0.55, color="tab:orange", label=f"synthetic vs train (n={len(synthetic)})")
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.set_xlabel("highest Pearson correlation with a training slice")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
        return figure_png(fig)
    finally:
        plt.close(fig)


def plot_pairs(pairs: list[tuple[str, np.ndarray, str, np.ndarray, float]]) -> bytes:
    """PNG bytes: per row a synthetic slice and its nearest training slice, side by side.

    Args:
        pairs: (synthetic id, synthetic slice uint8 [5, H, W], training id, training slice, r).
            Each side shows T1Gd, FLAIR and the annotation (the channels a reader compares first).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = (("T1Gd", 1), ("FLAIR", 3), ("labels", 4))
    fig, axes = plt.subplots(len(pairs), 6, figsize=(6 * 1.3, len(pairs) * 1.45), squeeze=False, dpi=100)
    try:
        for row, (syn_id, syn, train_id, train, r) in enumerate(pairs):
            for side, (image, name) in enumerate(((syn, syn_id), (train, train_id))):
                for column, (title, channel) in enumerate(shown):
                    ax = axes[row, 3 * side + column]
                    ax.imshow(image[channel], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                    ax.set_xticks([]), ax.set_yticks([])
                    if row == 0:
                        ax.set_title(f"{'synthetic' if side == 0 else 'nearest training'}\n{title}", fontsize=7)
                axes[row, 3 * side].set_ylabel(f"{name}" + (f"\nr = {r:.4f}" if side == 0 else ""), fontsize=6)
        return figure_png(fig)
    finally:
        plt.close(fig)


def _nearest_pairs(slice_ids: np.ndarray, max_corr: np.ndarray, train_ids: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The k synthetic slices closest to a training slice, most similar first."""
    order = np.argsort(-max_corr, kind="stable")[:k]
    return [{"slice_id": str(slice_ids[i]), "train_slice_id": str(train_ids[i]), "max_corr": float(max_corr[i])} for i in order]


@dataclass(frozen=True)
class SyntheticStores:
    """The stores of one evaluation and the positions it compares.

    Attributes:
        real: The real slice store.
        synthetic: The synthetic slice store.
        train: Positions of the real generator training slices (``train`` and ``val``): the reference.
        test: Positions of the real ``test`` slices: the baseline.
    """

    real: SliceStore
    synthetic: SliceStore
    train: np.ndarray
    test: np.ndarray

    @property
    def generator_name(self) -> str:
        """The generator named in the synthetic store's manifest, else ``synthetic``."""
        generator = self.synthetic.manifest.get("generator") or {}
        return str(generator.get("name") or "synthetic")


@dataclass
class SyntheticEvaluation:
    """What :func:`memorization` computed, before its summary is written.

    Attributes:
        out: The output directory.
        summary: What ``summary.json`` holds (:meth:`write_summary` adds the run id).
        metrics: The MLflow metrics.
        artifacts: The files written in `out`, summary.json excepted.
        flat: The flat scores returned to the command line.
    """

    out: Path
    summary: dict[str, Any]
    metrics: dict[str, float]
    artifacts: list[str]
    flat: dict[str, float | int]

    def write_summary(self, run_id: str | None) -> Path:
        """Write ``summary.json`` with ``mlflow_run_id`` = `run_id`; returns its path."""
        self.summary["mlflow_run_id"] = run_id
        path = self.out / "summary.json"
        atomic_write_json(path, self.summary)
        return path


def open_stores(real: Path, synthetic: Path) -> SyntheticStores:
    """Open and check both stores.

    Raises:
        StoreError: a store is missing or incomplete, the real store has no train/val or no
            test slices, the synthetic store is empty, or the image sizes differ.
    """
    real_store, syn_store = SliceStore(Path(real)), SliceStore(Path(synthetic))
    if real_store.image_size != syn_store.image_size:
        raise StoreError(f"{synthetic}: image size {syn_store.image_size} differs from the real store's "
                         f"{real_store.image_size} ({real})")
    train = real_store.indices(GENERATOR_TRAIN_SPLITS)  # what the generator learned from
    test = real_store.indices("test")
    if len(train) == 0:
        raise StoreError(f"{real}: no slices in the {' or '.join(GENERATOR_TRAIN_SPLITS)} split to compare against")
    if len(test) == 0:
        raise StoreError(f"{real}: no slices in the 'test' split for the memorization baseline")
    if len(syn_store) == 0:
        raise StoreError(f"{synthetic}: the synthetic store holds no slices")
    return SyntheticStores(real_store, syn_store, train, test)


def memorization(stores: SyntheticStores, out: Path, cfg: Config, quality: dict[str, Any], device: str,
                 progress: Callable[[int], None] | None = None) -> SyntheticEvaluation:
    """Score every synthetic slice (and the real test slices) against the training slices.

    Writes the CSVs and figures of the module docstring; :meth:`SyntheticEvaluation.write_summary`
    writes ``summary.json``.

    Args:
        stores: The checked stores (:func:`open_stores`).
        out: Output directory (see the module docstring).
        cfg: Resolved config: ``memorization`` (chunk_size, threshold, max_shift,
            per_channel, top_k).
        quality: The distribution metrics (:func:`synthmri.metrics.quality.quality_metrics`).
        device: Where the correlation products run.
        progress: Called with the number of slices scored so far (synthetic, then baseline).

    Returns:
        The SyntheticEvaluation; its ``flat`` has ``synthetic_<stat>`` and ``baseline_<stat>``
        for stat in mean, median, p99, max, share_above_threshold, n; ``threshold``; and the
        quality metrics.
    """
    from synthmri.metrics.memorization import max_correlation, summarize
    from synthmri.metrics.quality import mlflow_metrics

    real_store, syn_store, train, test = stores.real, stores.synthetic, stores.train, stores.test
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mem = cfg.memorization
    report = progress or (lambda done: None)
    log.info("memorization of %d synthetic and %d test slices against %d training slices on %s",
             len(syn_store), len(test), len(train), device)
    syn_corr, syn_arg = max_correlation(
        syn_store, (real_store, train), mem.chunk_size, max_shift=mem.max_shift, device=device,
        arithmetic=mem.arithmetic, progress=lambda done, _: report(done))
    base_corr, base_arg = max_correlation(
        (real_store, test), (real_store, train), mem.chunk_size, max_shift=mem.max_shift, device=device,
        arithmetic=mem.arithmetic, progress=lambda done, _: report(len(syn_store) + done))
    artifacts = _write_figures_and_tables(stores, out, cfg, syn_corr, syn_arg, base_corr, base_arg)
    if mem.per_channel:  # each channel on its own: which sequence (or the annotation) was copied
        channel_corr, _ = max_correlation(syn_store, (real_store, train), mem.chunk_size, per_channel=True,
                                          max_shift=mem.max_shift, device=device, arithmetic=mem.arithmetic)
        buffer = io.StringIO()
        table = csv.writer(buffer, lineterminator="\n")
        table.writerow(["slice_id", *(f"max_corr_{c}" for c in CHANNELS)])
        for slice_id, values in zip(syn_store.slice_id, channel_corr):
            table.writerow([slice_id, *(f"{v:.8f}" for v in values)])
        atomic_write_text(out / "memorization_per_channel.csv", buffer.getvalue())
        artifacts.append("memorization_per_channel.csv")

    syn_summary, base_summary = summarize(syn_corr, mem.threshold), summarize(base_corr, mem.threshold)
    summary: dict[str, Any] = {
        "synthetic": syn_summary,
        "baseline": base_summary,
        "threshold": mem.threshold,
        "max_shift": mem.max_shift,
        "generator": syn_store.manifest.get("generator"),
        "real_hash": real_store.content_hash,
        "synthetic_hash": syn_store.content_hash,
        "train_slices": int(len(train)),  # the reference: every slice of the generator's training splits
        "train_splits": list(GENERATOR_TRAIN_SPLITS),
        "nearest": _nearest_pairs(syn_store.slice_id, syn_corr, real_store.slice_id[train][syn_arg], mem.top_k),
        "mlflow_run_id": None,
        "quality": jsonable(quality),
    }
    metrics = {f"memorization_{key}": syn_summary[stat] for key, stat in _METRIC_STATS}
    metrics.update({f"baseline_{key}": base_summary[stat] for key, stat in _METRIC_STATS})
    metrics["memorization_excess_share"] = syn_summary["share_above_threshold"] - base_summary["share_above_threshold"]
    metrics.update(mlflow_metrics(quality))
    flat: dict[str, float | int] = {}
    for prefix, stats in (("synthetic", syn_summary), ("baseline", base_summary)):
        flat.update({f"{prefix}_{key}": value for key, value in stats.items()})
    flat["threshold"] = float(mem.threshold)
    flat.update(mlflow_metrics(quality))
    return SyntheticEvaluation(out=out, summary=summary, metrics=metrics, artifacts=artifacts, flat=flat)


def evaluate_synthetic(real: Path, synthetic: Path, out: Path, cfg: Config,
                       features: "InDomainFeatures | None" = None) -> dict[str, float | int]:
    """The whole evaluation, untracked: quality metrics, memorization and ``summary.json`` (no run id).

    The ``evaluate-synthetic`` stage (:func:`synthmri.stages.evaluate_synthetic.run`) does the
    same inside an MLflow run.

    Args:
        real: Real slice store (train+val: the reference; test: the baseline).
        synthetic: Synthetic slice store.
        out: Output directory (see the module docstring).
        cfg: Resolved config: ``memorization`` and ``quality``.
        features: The in-domain feature extractor; None skips those metrics.

    Returns:
        The flat scores (see :func:`memorization`).
    """
    from synthmri.metrics.quality import quality_metrics

    stores = open_stores(real, synthetic)
    device = memorization_device()
    quality = quality_metrics(stores.real, stores.synthetic, cfg, features, device)
    result = memorization(stores, out, cfg, quality, device)
    result.write_summary(None)
    return result.flat


#: (MLflow metric suffix, summary statistic) of the memorization and baseline metrics.
_METRIC_STATS = (("mean", "mean"), ("median", "median"), ("p99", "p99"), ("max", "max"),
                 ("share_above", "share_above_threshold"))


def quality_tags(quality: dict[str, Any]) -> dict[str, str]:
    """The run tags saying whether each quality section was computed, and why not."""
    tags = {}
    for section in ("inception", "in_domain"):
        tags[f"synthmri.{section}"] = quality[section]["status"]
        if quality[section]["status"] == "skipped":
            tags[f"synthmri.{section}.reason"] = quality[section]["reason"][:500]
    return tags


def _write_figures_and_tables(stores: SyntheticStores, out: Path, cfg: Config, syn_corr: np.ndarray,
                              syn_arg: np.ndarray, base_corr: np.ndarray, base_arg: np.ndarray) -> list[str]:
    """The memorization CSVs, the histogram and the nearest pairs in `out`; returns their names."""
    real_store, syn_store, train, test = stores.real, stores.synthetic, stores.train, stores.test
    mem = cfg.memorization
    train_ids = real_store.slice_id[train]
    write_memorization_csv(out / "memorization.csv", syn_store.slice_id, syn_corr, train_ids[syn_arg])
    write_memorization_csv(out / "memorization_baseline.csv", real_store.slice_id[test], base_corr, train_ids[base_arg])
    png = plot_histogram(syn_corr, base_corr, mem.threshold, f"memorization: {stores.generator_name}")
    atomic_write_bytes(out / "memorization_hist.png", png)
    top = np.argsort(-syn_corr, kind="stable")[: mem.top_k]
    nearest_train = train[syn_arg[top]]
    pairs = [(str(syn_store.slice_id[i]), s, str(real_store.slice_id[t]), r, float(syn_corr[i]))
             for i, s, t, r in zip(top, syn_store.read(top), nearest_train, real_store.read(nearest_train))]
    # SliceStore.read returns rows in the order asked for, so pairs line up.
    atomic_write_bytes(out / "memorization_pairs.png", plot_pairs(pairs))
    return ["memorization.csv", "memorization_baseline.csv", "memorization_hist.png", "memorization_pairs.png"]


def load_summary(path: Path) -> dict[str, Any]:
    """The summary.json of an evaluate-synthetic output (directory or file).

    Raises:
        FileNotFoundError: no summary.json there.
        ValueError: not valid JSON or missing the 'synthetic'/'baseline' sections.
    """
    return read_stage_summary(path, stage="evaluate-synthetic", required=("synthetic", "baseline", "threshold"))
