"""``synthmri share``: a synthetic slice store with every near-copy of a training slice removed.

The store a team may hand to others: each synthetic slice's highest Pearson correlation
against the training slices (every slice of the real store's ``train`` and ``val`` splits,
which the generator learned from: :data:`synthmri.data.splits.GENERATOR_TRAIN_SPLITS`;
:func:`synthmri.metrics.memorization.max_correlation`, with the configured shift search)
is compared with a threshold, and slices above it are left out. The threshold is
``memorization.share_threshold`` (or ``--threshold``) when set, else the baseline's
maximum: the closest any held-out real test slice (a patient the generator never saw)
came to a training slice. A synthetic slice closer than that resembles one
training patient more than two different patients ever resemble each other.

Outputs in ``out``: the shareable slice store (same generator provenance, plus a ``share``
section in the manifest), ``removed.csv`` (slice_id, max_corr, train_slice_id, reason) and
``share_report.json`` with the counts, the threshold and where it came from.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synthmri.config import Config
from synthmri.data.splits import GENERATOR_TRAIN_SPLITS
from synthmri.data.store import SliceRow, SliceStore, StoreError, StoreWriter
from synthmri.io import atomic_write_json, atomic_write_text
from synthmri.metrics.evaluate_synthetic import SyntheticStores
from synthmri.metrics.memorization_record import NotReusable, SearchResult, reuse_search, search_settings

log = logging.getLogger(__name__)

STAGE = "share"
REMOVED_COLUMNS = ("slice_id", "max_corr", "train_slice_id", "reason")


@dataclass(frozen=True)
class ShareResult:
    """What `share` kept and removed.

    Attributes:
        out: The shareable store.
        kept: Slices kept.
        removed: Slices removed.
        threshold: The correlation above which slices were removed.
        threshold_source: Where the threshold came from.
        removed_fraction: ``removed / (kept + removed)``.
        search: Whether the memorization search was reused from evaluate-synthetic or run, and why.
    """

    out: Path
    kept: int
    removed: int
    threshold: float
    threshold_source: str
    removed_fraction: float = float("nan")
    search: str = ""

    def summary(self) -> str:
        """One line for the command line."""
        total = self.kept + self.removed
        return (f"share: kept {self.kept} of {total} synthetic slices, removed {self.removed} with r > "
                f"{self.threshold:.4f} ({self.threshold_source}); store {self.out}, reasons in {self.out / 'removed.csv'}"
                + (f"; {self.search}" if self.search else ""))


def share_threshold(cfg: Config, baseline: np.ndarray, override: float | None = None) -> tuple[float, str]:
    """The removal threshold and where it came from: `override`, the config, or the baseline's maximum.

    Raises:
        ValueError: the threshold must come from the baseline but it is empty.
    """
    if override is not None:
        return float(override), "--threshold"
    if cfg.memorization.share_threshold is not None:
        return float(cfg.memorization.share_threshold), "memorization.share_threshold"
    if len(baseline) == 0:
        raise ValueError("no held-out real test slices to set the threshold from; set memorization.share_threshold")
    return float(np.max(baseline)), f"baseline: maximum over {len(baseline)} held-out real test slices"


def open_share_stores(synthetic: Path, real: Path, out: Path) -> SyntheticStores:
    """Open and check both stores for :func:`share_stores`.

    Raises:
        StoreError: A store is missing or incomplete, sizes differ, or the real store has no
            generator training slices.
        ValueError: `out` is the synthetic store itself.
    """
    synthetic, real, out = Path(synthetic), Path(real), Path(out)
    if out.resolve() == synthetic.resolve():
        raise ValueError(f"--out {out} is the synthetic store itself; write the shareable store elsewhere")
    syn_store, real_store = SliceStore(synthetic), SliceStore(real)
    if syn_store.image_size != real_store.image_size:
        raise StoreError(f"{synthetic}: image size {syn_store.image_size} differs from {real}'s {real_store.image_size}")
    train, test = real_store.indices(GENERATOR_TRAIN_SPLITS), real_store.indices("test")
    if len(train) == 0:
        raise StoreError(f"{real}: no {' or '.join(GENERATOR_TRAIN_SPLITS)} slices to compare against")
    return SyntheticStores(real_store, syn_store, train, test)


def share(synthetic: Path, real: Path, out: Path, cfg: Config, threshold: float | None = None,
          progress: Callable[[int], None] | None = None, memorization: Path | None = None) -> ShareResult:
    """Write a copy of `synthetic` without the slices that are too close to a training slice (untracked).

    Args:
        synthetic: The synthetic slice store.
        real: The real slice store: its generator training splits (``train`` and ``val``)
            are what must not leak, its ``test`` split the baseline.
        out: Directory of the shareable store and its report; must differ from `synthetic`.
        cfg: ``memorization`` (chunk_size, max_shift, share_threshold) and ``data.shard_size``.
        threshold: Overrides ``memorization.share_threshold``.
        progress: Called with the number of slices scored so far.
        memorization: An evaluate-synthetic output of the same stores: its search is reused
            when stores and settings match (:mod:`synthmri.metrics.memorization_record`),
            else searched again, and the log and ``share_report.json`` say which.

    Returns:
        The ShareResult.

    Raises:
        StoreError: A store is missing or incomplete, sizes differ, or a split is empty.
        ValueError: `out` is the synthetic store itself.
    """
    return share_stores(open_share_stores(synthetic, real, out), out, cfg, threshold, progress, memorization)


def search(stores: SyntheticStores, cfg: Config, device: Any, progress: Callable[[int], None]) -> SearchResult:
    """The memorization search of every synthetic and held-out test slice against the training slices."""
    from synthmri.metrics.memorization import max_correlation

    syn_store, real_store, train, test = stores.synthetic, stores.real, stores.train, stores.test
    mem = cfg.memorization
    train_ids = real_store.slice_id[train]
    corr, nearest = max_correlation(syn_store, (real_store, train), mem.chunk_size, max_shift=mem.max_shift,
                                    device=device, arithmetic=mem.arithmetic, progress=lambda done, _: progress(done))
    baseline, baseline_nearest = np.empty(0), np.empty(0, dtype=np.int64)
    if len(test):
        baseline, baseline_nearest = max_correlation(
            (real_store, test), (real_store, train), mem.chunk_size, max_shift=mem.max_shift, device=device,
            arithmetic=mem.arithmetic, progress=lambda done, _: progress(len(syn_store) + done))
    return SearchResult(corr, train_ids[nearest], baseline, train_ids[baseline_nearest])


def reused_or_new_search(stores: SyntheticStores, cfg: Config, recorded: Path | None,
                         progress: Callable[[int], None]) -> tuple[SearchResult, str]:
    """The search recorded by evaluate-synthetic in `recorded` when it matches, else a new one; and which.

    Returns:
        The result, and a sentence for the log and the report: reused from where, or
        searched, and why the recorded one could not be used.
    """
    from synthmri.metrics.evaluate_synthetic import memorization_device

    device = memorization_device()
    if recorded is not None:
        try:
            result = reuse_search(recorded, stores, search_settings(cfg, device))
        except NotReusable as exc:
            why = f"searched again: the recorded search cannot be reused ({exc})"
            log.warning("share: %s", why)
        else:
            progress(len(stores.synthetic) + len(stores.test))
            return result, f"reused the search evaluate-synthetic recorded in {recorded} (same stores and settings)"
    else:
        why = "searched (no evaluate-synthetic output given with --memorization)"
    return search(stores, cfg, device, progress), why


def share_stores(stores: SyntheticStores, out: Path, cfg: Config, threshold: float | None = None,
                 progress: Callable[[int], None] | None = None, memorization: Path | None = None) -> ShareResult:
    """:func:`share` on stores already opened by :func:`open_share_stores`."""
    from synthmri.metrics.memorization import summarize

    syn_store, real_store = stores.synthetic, stores.real
    synthetic, real, out = syn_store.path, real_store.path, Path(out)
    mem = cfg.memorization
    found, how = reused_or_new_search(stores, cfg, memorization, progress or (lambda done: None))
    log.info("share: %s", how)
    corr, baseline, train_ids = found.synthetic_corr, found.baseline_corr, found.synthetic_train_ids
    limit, source = share_threshold(cfg, baseline, threshold)
    removed = corr > limit
    log.info("share: %d of %d synthetic slices above r = %.4f (%s)", removed.sum(), len(syn_store), limit, source)

    # The shareable store: the kept slices in their original order, read shard by shard.
    keep = np.flatnonzero(~removed)
    generator = syn_store.manifest.get("generator")
    extra = {"share": {"source": {"path": str(synthetic), "content_hash": syn_store.content_hash},
                       "real_hash": real_store.content_hash, "threshold": limit, "threshold_source": source,
                       "max_shift": mem.max_shift, "removed": int(removed.sum()), "kept": int(len(keep))}}
    with StoreWriter(out, image_size=syn_store.image_size, source={"path": str(synthetic),
                     "content_hash": syn_store.content_hash}, shard_size=cfg.data.shard_size,
                     generator=generator, extra=extra, resume=False) as writer:
        for start in range(0, len(keep), cfg.data.shard_size):
            positions = keep[start:start + cfg.data.shard_size]
            rows = [SliceRow(str(syn_store.slice_id[p]), str(syn_store.subject[p]), int(syn_store.z[p]),
                             str(syn_store.split[p])) for p in positions]
            writer.add(syn_store.read(positions), rows)

    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(REMOVED_COLUMNS)
    for i in np.flatnonzero(removed):
        table.writerow([syn_store.slice_id[i], f"{corr[i]:.6f}", train_ids[i],
                        f"r = {corr[i]:.4f} with {train_ids[i]} exceeds {limit:.4f} ({source})"])
    atomic_write_text(out / "removed.csv", buffer.getvalue())
    report_json: dict[str, Any] = {
        "synthetic": str(synthetic), "real": str(real), "threshold": limit, "threshold_source": source,
        "max_shift": mem.max_shift, "kept": int(len(keep)), "removed": int(removed.sum()), "search": how,
        "synthetic_stats": summarize(corr, limit), "baseline_stats": summarize(baseline, limit),
    }
    atomic_write_json(out / "share_report.json", report_json)
    return ShareResult(out=out, kept=int(len(keep)), removed=int(removed.sum()), threshold=limit,
                       threshold_source=source, removed_fraction=float(removed.mean()), search=how)


def share_name(stores: SyntheticStores) -> str:
    """The generator named in the synthetic store's manifest, else the store's folder name (the run's name)."""
    return str((stores.synthetic.manifest.get("generator") or {}).get("name") or stores.synthetic.path.name)
