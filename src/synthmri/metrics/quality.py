"""Distribution metrics of a synthetic store against the real training slices.

Two feature spaces, each optional on its own:

* **Inception** (FID and IS): the FID-Inception network of :mod:`synthmri.metrics.inception`
  with weights from ``quality.inception_weights`` (a file, ``s3://`` URI or MLflow artifact
  URI). Nothing can be downloaded, so without that setting FID and IS are skipped, the
  reason is recorded, and every other metric is still computed. The paper found that these
  ImageNet features did not rank generators the way segmentation Dice did.
  ``quality.inception_input`` says what the network sees as RGB: ``t1ce_gray`` (default, paper
  Table 2: "synthetic T1wGd images") the T1Gd channel replicated to R, G and B; ``channels``
  the three ``quality.inception_channels``. Seeded subsets of at most
  ``quality.inception_images`` slices per set (Table 2: 100,000 synthetic).
* **In-domain** (Fréchet distance, KID, precision and recall): features of a segmentation
  network trained on real slices (``--segmenter``), which has seen MR contrasts and tumours
  rather than ImageNet photographs (:mod:`synthmri.metrics.features`). Seeded subsets of at
  most ``quality.max_images`` slices per set.

Both compare the synthetic slices with the real training slices (the ``train`` and ``val``
splits, what the generators learned from; Table 2: "the real training images"). Each section
records the input and how many slices of each set it used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from synthmri.config import Config, QualityConfig
from synthmri.data.splits import GENERATOR_TRAIN_SPLITS
from synthmri.data.store import CHANNELS, SliceStore

if TYPE_CHECKING:
    from synthmri.metrics.features import InDomainFeatures

log = logging.getLogger(__name__)

SKIPPED = "skipped"
COMPUTED = "computed"


def subset(positions: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `positions`, a seeded random choice kept in store order."""
    if len(positions) <= limit:
        return positions
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(positions, size=limit, replace=False))


def batched_features(store: SliceStore, positions: np.ndarray, extract: Callable[[np.ndarray], Any],
                     batch_size: int) -> list[Any]:
    """`extract` applied to the slices at `positions`, read from the store one batch at a time."""
    return [extract(store.read(positions[start:start + batch_size])) for start in range(0, len(positions), batch_size)]


def inception_input_channels(quality: QualityConfig) -> tuple[str, str, str]:
    """The slice channels Inception sees as R, G and B under ``quality.inception_input``.

    ``t1ce_gray``: the T1Gd channel three times (paper Table 2: single-channel T1wGd images
    replicated to RGB); ``channels``: ``quality.inception_channels`` in order.

    Raises:
        ValueError: an unknown mode (the config validation names it first).
    """
    if quality.inception_input == "t1ce_gray":
        return ("t1ce", "t1ce", "t1ce")
    if quality.inception_input == "channels":
        return tuple(quality.inception_channels)  # type: ignore[return-value]
    raise ValueError(f"quality.inception_input must be t1ce_gray or channels, got {quality.inception_input!r}")


def inception_metrics(real: SliceStore, real_positions: np.ndarray, synthetic: SliceStore,
                      syn_positions: np.ndarray, cfg: Config, device: str) -> dict[str, Any]:
    """FID (synthetic vs real training slices) and IS (synthetic, and real for reference), or why they were skipped.

    The section records ``input`` (``quality.inception_input``) and, when computed, the
    ``channels`` fed as R, G, B and the ``real_images`` and ``synthetic_images`` it used
    (``images_limit``: ``quality.inception_images``).
    """
    quality = cfg.quality
    if not quality.inception_weights:
        reason = ("no quality.inception_weights configured (the FID-Inception weights, "
                  "pt_inception-2015-12-05, cannot be downloaded here: give a file, s3:// or MLflow artifact URI)")
        log.warning("FID and IS skipped: %s", reason)
        return {"status": SKIPPED, "reason": reason, "input": quality.inception_input}
    from synthmri.metrics.distribution import frechet_distance
    from synthmri.metrics.inception import inception_features, inception_score, load_inception

    names = inception_input_channels(quality)
    if len(syn_positions) < quality.inception_images:
        log.warning("FID and IS on %d synthetic slices, fewer than quality.inception_images = %d "
                    "(paper Table 2: 100,000)", len(syn_positions), quality.inception_images)
    log.info("FID and IS: %s as RGB, %d synthetic against %d real training slices", "/".join(names),
             len(syn_positions), len(real_positions))
    model = load_inception(quality.inception_weights, device=device)
    channels = tuple(CHANNELS.index(c) for c in names)

    def extract(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return inception_features(model, slices, batch_size=quality.batch_size, device=device, channels=channels)

    real_parts = batched_features(real, real_positions, extract, 4 * quality.batch_size)
    syn_parts = batched_features(synthetic, syn_positions, extract, 4 * quality.batch_size)
    real_pool, real_logits = (np.concatenate([p[i] for p in real_parts]) for i in (0, 1))
    syn_pool, syn_logits = (np.concatenate([p[i] for p in syn_parts]) for i in (0, 1))
    splits = min(quality.is_splits, len(syn_logits), len(real_logits))
    is_mean, is_sd = inception_score(syn_logits, splits=splits)
    real_is_mean, real_is_sd = inception_score(real_logits, splits=splits)
    return {"status": COMPUTED, "weights": quality.inception_weights, "input": quality.inception_input,
            "channels": list(names), "real_images": int(len(real_positions)),
            "synthetic_images": int(len(syn_positions)), "images_limit": int(quality.inception_images),
            "fid": frechet_distance(real_pool, syn_pool), "is_mean": is_mean, "is_sd": is_sd,
            "is_real_mean": real_is_mean, "is_real_sd": real_is_sd, "is_splits": splits}


def in_domain_metrics(real: SliceStore, real_positions: np.ndarray, synthetic: SliceStore,
                      syn_positions: np.ndarray, cfg: Config, features: InDomainFeatures | None) -> dict[str, Any]:
    """Fréchet distance, KID and precision/recall on segmentation features, or why they were skipped.

    Args:
        real: The real store.
        real_positions: Its slices to use.
        synthetic: The synthetic store.
        syn_positions: Its slices to use.
        cfg: ``quality`` (batch_size, kid_subsets, kid_subset_size, pr_k) and ``seed``.
        features: The segmenter's feature extractor; None skips the section.
    """
    if features is None:
        reason = "no --segmenter given (a segmentation network trained on real slices provides the features)"
        log.warning("in-domain metrics skipped: %s", reason)
        return {"status": SKIPPED, "reason": reason}
    from synthmri.metrics.distribution import frechet_distance, kernel_inception_distance, precision_recall

    quality = cfg.quality
    real_features = np.concatenate(batched_features(real, real_positions, features.extract, 4 * quality.batch_size))
    syn_features = np.concatenate(batched_features(synthetic, syn_positions, features.extract, 4 * quality.batch_size))
    kid, kid_sd = kernel_inception_distance(real_features, syn_features, subsets=quality.kid_subsets,
                                            subset_size=quality.kid_subset_size, seed=cfg.seed)
    k = min(quality.pr_k, len(real_features) - 1, len(syn_features) - 1)
    pr = precision_recall(real_features, syn_features, k=k)
    return {"status": COMPUTED, "segmenter": features.source, "arch": features.arch,
            "feature_dim": int(real_features.shape[1]),
            "real_images": int(len(real_positions)), "synthetic_images": int(len(syn_positions)),
            "frechet_distance": frechet_distance(real_features, syn_features), "kid": kid, "kid_sd": kid_sd,
            "precision": float(pr["precision"]), "recall": float(pr["recall"]), "k": int(k)}


def quality_metrics(real: SliceStore, synthetic: SliceStore, cfg: Config, features: InDomainFeatures | None,
                    device: str) -> dict[str, Any]:
    """Both sections, on seeded subsets of the real training slices (train + val) and of the synthetic store.

    FID and IS use at most ``quality.inception_images`` slices per set, the in-domain metrics at
    most ``quality.max_images``. `features` extracts the in-domain features (None skips them).

    Returns:
        ``{"real_images", "synthetic_images", "inception": {...}, "in_domain": {...}}``: the
        top-level counts are the in-domain subsets; each section has ``status`` (computed or
        skipped) and either its metrics (with the counts it used) or a ``reason``.
    """
    quality = cfg.quality
    # The real reference is the generators' training set (paper Table 2: against the real training images).
    train, generated = real.indices(GENERATOR_TRAIN_SPLITS), synthetic.indices()
    real_positions = subset(train, quality.max_images, cfg.seed)
    syn_positions = subset(generated, quality.max_images, cfg.seed + 1)
    inception_real = subset(train, quality.inception_images, cfg.seed)
    inception_syn = subset(generated, quality.inception_images, cfg.seed + 1)
    return {
        "real_images": int(len(real_positions)), "synthetic_images": int(len(syn_positions)),
        "inception": inception_metrics(real, inception_real, synthetic, inception_syn, cfg, device),
        "in_domain": in_domain_metrics(real, real_positions, synthetic, syn_positions, cfg, features),
    }


def mlflow_metrics(quality: dict[str, Any]) -> dict[str, float]:
    """The computed numbers as flat MLflow metrics (skipped sections contribute none).

    Besides the metrics, the slice counts FID/IS were computed on (``inception_real_images``,
    ``inception_synthetic_images``); the input mode is the run's ``quality.inception_input`` param.
    """
    names = {"inception": {"fid": "fid", "is_mean": "inception_score", "is_sd": "inception_score_sd",
                           "is_real_mean": "inception_score_real"},
             "in_domain": {"frechet_distance": "in_domain_fd", "kid": "in_domain_kid", "kid_sd": "in_domain_kid_sd",
                           "precision": "in_domain_precision", "recall": "in_domain_recall"}}
    counts = {"inception": {"real_images": "inception_real_images", "synthetic_images": "inception_synthetic_images"}}
    out = {}
    for section, keys in names.items():
        values = quality[section]
        if values["status"] == COMPUTED:
            out.update({metric: float(values[key]) for key, metric in keys.items()})
            out.update({metric: float(values[key]) for key, metric in counts.get(section, {}).items() if key in values})
    return out
