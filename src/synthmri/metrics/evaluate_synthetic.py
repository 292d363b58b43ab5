"""``synthmri evaluate-synthetic``: memorization of a synthetic store against the training slices.

For every synthetic slice: the highest Pearson correlation against all slices of the real
store's ``train`` split (what the generator learned from) and which training slice that
was. The same statistic for the real ``test`` slices (patients the generator never saw)
is the baseline: a generator that copies shows synthetic correlations above what two
different real patients reach.

Outputs in ``out``::

    memorization.csv            slice_id,max_corr,train_slice_id   (every synthetic slice)
    memorization_baseline.csv   same columns, one row per real test slice
    summary.json                distributions, threshold, generator, store hashes, run id
    memorization_hist.png       both distributions and the threshold
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthmri.config import Config
from synthmri.data.store import SliceStore, StoreError
from synthmri.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_stage_summary
from synthmri.monitoring import StageMonitor

log = logging.getLogger(__name__)

STAGE = "evaluate-synthetic"
CSV_COLUMNS = ("slice_id", "max_corr", "train_slice_id")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_memorization_csv(path: Path, slice_ids: Sequence[str], max_corr: np.ndarray, train_ids: Sequence[str]) -> None:
    """Write one row per scored slice (``max_corr`` with 8 decimals), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for slice_id, value, train_id in zip(slice_ids, max_corr, train_ids):
        writer.writerow([slice_id, f"{float(value):.8f}", train_id])
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
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _nearest_pairs(slice_ids: np.ndarray, max_corr: np.ndarray, train_ids: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The k synthetic slices closest to a training slice, most similar first."""
    order = np.argsort(-max_corr, kind="stable")[:k]
    return [{"slice_id": str(slice_ids[i]), "train_slice_id": str(train_ids[i]), "max_corr": float(max_corr[i])} for i in order]


def evaluate_synthetic(real: Path, synthetic: Path, out: Path, cfg: Config) -> dict[str, float | int]:
    """Score every synthetic slice (and the real test slices) against the training slices.

    Args:
        real: real slice store; its ``train`` split is the reference, its ``test`` split the
            baseline.
        synthetic: synthetic slice store (all its slices are scored).
        out: output directory (see the module docstring).
        cfg: resolved config; uses ``memorization.chunk_size`` and ``memorization.threshold``.

    Returns:
        Flat summary: ``synthetic_<stat>`` and ``baseline_<stat>`` for stat in mean, median,
        p99, max, share_above_threshold, n; plus ``threshold``.

    Raises:
        StoreError: a store is missing or incomplete, the real store has no train or no test
            slices, the synthetic store is empty, or the image sizes differ.
    """
    import mlflow

    from synthmri.metrics.memorization import max_correlation, summarize
    from synthmri.tracking import stage_run

    real_store, syn_store = SliceStore(Path(real)), SliceStore(Path(synthetic))
    if real_store.image_size != syn_store.image_size:
        raise StoreError(f"{synthetic}: image size {syn_store.image_size} differs from the real store's {real_store.image_size} ({real})")
    train = real_store.indices("train")
    test = real_store.indices("test")
    if len(train) == 0:
        raise StoreError(f"{real}: no slices in the 'train' split to compare against")
    if len(test) == 0:
        raise StoreError(f"{real}: no slices in the 'test' split for the memorization baseline")
    if len(syn_store) == 0:
        raise StoreError(f"{synthetic}: the synthetic store holds no slices")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mem = cfg.memorization
    generator = syn_store.manifest.get("generator") or {}
    generator_name = str(generator.get("name") or "synthetic")
    device = _device()
    log.info("memorization of %d synthetic and %d test slices against %d training slices on %s",
             len(syn_store), len(test), len(train), device)

    total = len(syn_store) + len(test)
    with StageMonitor(STAGE, unit="images", total=total) as monitor:
        syn_corr, syn_arg = max_correlation(
            syn_store, (real_store, train), mem.chunk_size, device=device,
            progress=lambda done, _: monitor.progress(done))
        base_corr, base_arg = max_correlation(
            (real_store, test), (real_store, train), mem.chunk_size, device=device,
            progress=lambda done, _: monitor.progress(len(syn_store) + done))

    train_ids = real_store.slice_id[train]
    syn_train_ids = train_ids[syn_arg]
    write_memorization_csv(out / "memorization.csv", syn_store.slice_id, syn_corr, syn_train_ids)
    write_memorization_csv(out / "memorization_baseline.csv", real_store.slice_id[test], base_corr, train_ids[base_arg])
    png = plot_histogram(syn_corr, base_corr, mem.threshold, f"memorization: {generator_name}")
    atomic_write_bytes(out / "memorization_hist.png", png)

    syn_summary, base_summary = summarize(syn_corr, mem.threshold), summarize(base_corr, mem.threshold)
    summary: dict[str, Any] = {
        "synthetic": syn_summary,
        "baseline": base_summary,
        "threshold": mem.threshold,
        "generator": syn_store.manifest.get("generator"),
        "real_hash": real_store.content_hash,
        "synthetic_hash": syn_store.content_hash,
        "train_slices": int(len(train)),
        "nearest": _nearest_pairs(syn_store.slice_id, syn_corr, syn_train_ids, mem.top_k),
    }
    metrics = {
        "memorization_mean": syn_summary["mean"],
        "memorization_median": syn_summary["median"],
        "memorization_p99": syn_summary["p99"],
        "memorization_max": syn_summary["max"],
        "memorization_share_above": syn_summary["share_above_threshold"],
        "baseline_mean": base_summary["mean"],
        "baseline_median": base_summary["median"],
        "baseline_p99": base_summary["p99"],
        "baseline_max": base_summary["max"],
        "baseline_share_above": base_summary["share_above_threshold"],
        "memorization_excess_share": syn_summary["share_above_threshold"] - base_summary["share_above_threshold"],
    }
    with stage_run(cfg, stage=STAGE, experiment="evaluation", run_name=f"{generator_name}-memorization",
                   datasets={"real": real_store, "synthetic": syn_store},
                   tags={"synthmri.generator": generator_name}) as run:
        summary["mlflow_run_id"] = run.info.run_id
        atomic_write_json(out / "summary.json", summary)
        mlflow.log_metrics(metrics)
        for name in ("memorization.csv", "memorization_baseline.csv", "memorization_hist.png", "summary.json"):
            mlflow.log_artifact(str(out / name))

    flat: dict[str, float | int] = {}
    for prefix, stats in (("synthetic", syn_summary), ("baseline", base_summary)):
        flat.update({f"{prefix}_{key}": value for key, value in stats.items()})
    flat["threshold"] = float(mem.threshold)
    return flat


def load_summary(path: Path) -> dict[str, Any]:
    """The summary.json of an evaluate-synthetic output (directory or file).

    Raises:
        FileNotFoundError: no summary.json there.
        ValueError: not valid JSON or missing the 'synthetic'/'baseline' sections.
    """
    return read_stage_summary(path, stage="evaluate-synthetic", required=("synthetic", "baseline", "threshold"))
