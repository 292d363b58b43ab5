"""Sampling: a trained generator -> a synthetic slice store, and sample-grid PNGs.

``generate`` accepts a checkpoint path or an MLflow URI, samples in batches straight into
a :class:`~synthmri.data.store.StoreWriter` (:func:`write_synthetic_store`), and records
which generator made the store. Progress goes to a callback; the ``generate`` stage
(:mod:`synthmri.stages.generate`) connects it to its monitor.
Batch ``b`` is seeded from ``(seed, b)`` alone, so the same seed, count and batch size give
the same bytes on the CPU, and a killed run resumes by skipping the batches whose shards
are already complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image

from synthmri.config import Config
from synthmri.data.store import CHANNELS, SliceRow, StoreWriter
from synthmri.generators.checkpoint import LoadedGenerator, load_generator
from synthmri.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "generator.pt"
REGISTRATION_NAME = "registration.json"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
# Annotation value -> overlay colour: NCR/NET red, ED green, ET yellow (the usual BraTS colours).
_OVERLAY = {51: (255, 0, 0), 102: (0, 255, 0), 204: (255, 255, 0)}


def batch_seed(seed: int, batch: int) -> int:
    """A 64-bit seed for batch `batch` of a run seeded `seed`, independent of other batches."""
    state = np.random.SeedSequence([int(seed), int(batch)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def sample_batch(generator: LoadedGenerator, count: int, seed: int, batch: int,
                 options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Batch number `batch` (`count` images) of a run seeded `seed`: uint8 [count, 5, H, W]."""
    rng = torch.Generator().manual_seed(batch_seed(seed, batch))
    options = generator.sampling if options is None else options
    return generator.family.sample(generator.network, generator.model_args, count, rng, options)


def sample_batches(generator: LoadedGenerator, n: int, seed: int, batch_size: int,
                   options: Mapping[str, Any] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, images)`` for consecutive batches of up to `batch_size` images until `n`.

    Raises:
        ValueError: `n` negative or `batch_size` below 1.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    for batch, start in enumerate(range(0, n, batch_size)):
        yield start, sample_batch(generator, min(batch_size, n - start), seed, batch, options)


def sample_images(generator: LoadedGenerator, n: int, seed: int, batch_size: int | None = None,
                  options: Mapping[str, Any] | None = None) -> np.ndarray:
    """`n` images as one uint8 [n, 5, H, W] array (same bytes as ``generate`` with these settings)."""
    size = generator.image_size
    out = np.empty((n, len(CHANNELS), size, size), dtype=np.uint8)
    for start, images in sample_batches(generator, n, seed, batch_size or generator.sample_batch_size, options):
        out[start : start + len(images)] = images
    return out


def grid_image(images: np.ndarray, min_tile: int = 96) -> Image.Image:
    """One row per image: T1, T1Gd, T2, FLAIR as grey tiles, then FLAIR with the annotation in colour.

    Args:
        images: uint8 [n, 5, H, W].
        min_tile: tiles smaller than this are enlarged (nearest neighbour) to stay legible.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != len(CHANNELS) or images.dtype != np.uint8:
        raise ValueError(f"grid needs uint8 [n, {len(CHANNELS)}, H, W], got {images.dtype} {list(images.shape)}")
    n, _, size, _ = images.shape
    scale = max(1, -(-min_tile // size))
    tile, gap = size * scale, 2
    columns = len(CHANNELS)
    canvas = Image.new("RGB", (columns * tile + (columns - 1) * gap, n * tile + (n - 1) * gap), (255, 255, 255))
    for row, image in enumerate(images):
        tiles = [np.repeat(image[c][..., None], 3, axis=-1) for c in range(4)]
        overlay = tiles[3].astype(np.float32)
        for value, colour in _OVERLAY.items():
            mask = image[4] == value
            overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.asarray(colour, dtype=np.float32)
        tiles.append(np.rint(overlay).astype(np.uint8))
        for column, pixels in enumerate(tiles):
            picture = Image.fromarray(pixels, "RGB").resize((tile, tile), Image.NEAREST)
            canvas.paste(picture, (column * (tile + gap), row * (tile + gap)))
    return canvas


def save_grid(images: np.ndarray, path: Path) -> Path:
    """Write :func:`grid_image` of `images` as a PNG, atomically; returns `path`."""
    buffer = io.BytesIO()
    grid_image(images).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _registry_entry(uri: str) -> dict[str, Any] | None:
    """The model-registry name and version a ``models:/`` URI names, if it names one."""
    from mlflow import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))/?", uri)
    if not match:
        return None
    name, alias, number = match.groups()
    version = int(number) if number else int(MlflowClient().get_model_version_by_alias(name, alias).version)
    return {"name": name, "version": version}


@contextlib.contextmanager
def resolve_generator(generator: str, cfg: Config) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    """The local ``generator.pt`` that `generator` names, and its registry entry if known.

    A path may be the checkpoint file or the training output directory (registry name and
    version from its ``registration.json``). An MLflow URI (``models:/name@alias``,
    ``models:/name/3``, ``runs:/...``) is downloaded to a temporary directory that lives while
    the context does.

    Yields:
        The checkpoint path and ``{"name": ..., "version": ...}`` (None when not registered).

    Raises:
        FileNotFoundError: the path, or a ``generator.pt`` among the downloaded artifacts,
            does not exist.
    """
    if not _URI.match(generator):
        path = Path(generator)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"generator checkpoint not found: {path}")
        entry = None
        record_path = path.parent / REGISTRATION_NAME
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if isinstance(record, dict) and record.get("version") is not None:
                entry = {"name": record.get("name"), "version": int(record["version"])}
        yield path, entry
        return

    import mlflow

    from synthmri.tracking import configure

    configure(cfg.tracking)
    entry = _registry_entry(generator)
    with tempfile.TemporaryDirectory(prefix="synthmri-generator-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=generator, dst_path=tmp))
        found = [local] if local.is_file() else sorted(local.rglob(CHECKPOINT_NAME))
        if not found:
            raise FileNotFoundError(f"{generator}: no {CHECKPOINT_NAME} among the downloaded artifacts")
        yield found[0], entry


def open_generator(generator: str, cfg: Config) -> tuple[LoadedGenerator, dict[str, Any] | None]:
    """Load the generator `generator` names (see :func:`resolve_generator`) and its registry entry.

    Raises:
        FileNotFoundError: The generator cannot be found.
        ValueError: An unusable checkpoint.
    """
    with resolve_generator(generator, cfg) as (path, entry):
        return load_generator(path), entry


def sampling_counts(cfg: Config) -> tuple[int, int]:
    """``(generator.n_synthetic, generator.sample_batch_size)`` (the config checked both positive)."""
    return int(cfg.generator.n_synthetic), int(cfg.generator.sample_batch_size)


def write_synthetic_store(loaded: LoadedGenerator, out: Path, cfg: Config, *, uri: str,
                          registry: dict[str, Any] | None = None,
                          progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Sample ``cfg.generator.n_synthetic`` slices from `loaded` into a synthetic slice store.

    Batch ``b`` is seeded from ``(cfg.seed, b)``; a run with the same settings that was
    killed resumes after its complete shards.

    Args:
        loaded: The generator.
        out: Store directory.
        cfg: Resolved config; uses ``seed``, ``generator.n_synthetic``,
            ``generator.sample_batch_size``, ``data.shard_size`` and the family's sampler
            settings (e.g. ``generator.ddpm.sampler``/``sample_steps``).
        uri: How the generator was named (recorded in the manifest).
        registry: Its registry entry (``name``, ``version``), if known. The manifest's
            ``generator`` records the family, the registry name and version and the
            checkpoint's sha256: the provenance every evaluation of the store carries.
        progress: Called with the number of slices stored after each batch.

    Returns:
        The store manifest.
    """
    n, batch_size = sampling_counts(cfg)
    options = loaded.family.sampling_options(cfg)
    settings = {"seed": int(cfg.seed), "n": n, "batch_size": batch_size, "options": options,
                "checkpoint_sha256": loaded.sha256}
    out = Path(out)
    # Resume only a run with identical settings: the store checks slice ids, not pixels.
    marker = out / ".partial" / "generate.json"
    resume = marker.is_file() and json.loads(marker.read_text()) == settings
    writer = StoreWriter(
        out,
        image_size=loaded.image_size,
        source={"path": uri, "content_hash": loaded.data_hash},
        shard_size=cfg.data.shard_size,
        generator={"name": loaded.name, "registered_name": (registry or {}).get("name"),
                   "version": (registry or {}).get("version"), "uri": uri, "checkpoint_sha256": loaded.sha256},
        extra={"sampling": {k: v for k, v in settings.items() if k != "checkpoint_sha256"}},
        resume=resume,
    )
    atomic_write_json(marker, settings)
    skip = writer.resumed_slices
    if skip:
        log.info("resuming %s: %d of %d slices already stored", out, skip, n)
    size = loaded.image_size
    for batch, start in enumerate(range(0, n, batch_size)):
        count = min(batch_size, n - start)
        if start + count <= skip:
            # Already in complete shards: the writer only checks these slice ids, so
            # zeros stand in for pixels it will not write again.
            images = np.zeros((count, len(CHANNELS), size, size), dtype=np.uint8)
        else:
            images = sample_batch(loaded, count, cfg.seed, batch, options)
        writer.add(images, _rows(loaded.name, start, start + count))
        if progress is not None:
            progress(start + count)
    manifest = writer.close()
    log.info("wrote %d synthetic slices from %s to %s", n, uri, out)
    return manifest


def generate(generator: str, out: Path, cfg: Config, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Sample ``cfg.generator.n_synthetic`` slices from `generator` into a synthetic slice store.

    ``synthmri generate`` (:func:`synthmri.stages.generate.run`) adds progress monitoring.

    Args:
        generator: A ``generator.pt`` path (or the directory holding it) or an MLflow URI
            such as ``models:/synthmri-ddpm@candidate``.
        out: Store directory.
        cfg: Resolved config (see :func:`write_synthetic_store`).
        progress: Called with the number of slices stored after each batch.

    Returns:
        The store manifest.

    Raises:
        FileNotFoundError: The generator cannot be found.
        ValueError: An unusable checkpoint.
    """
    sampling_counts(cfg)
    loaded, registry = open_generator(generator, cfg)
    return write_synthetic_store(loaded, out, cfg, uri=generator, registry=registry, progress=progress)


def _rows(model: str, start: int, stop: int) -> list[SliceRow]:
    return [SliceRow(slice_id=f"{model}-{i:06d}", subject=model, z=-1, split="train") for i in range(start, stop)]
