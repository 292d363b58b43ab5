"""FID and Inception Score features from the "FID Inception" network, built in this project.

The Fréchet Inception Distance (FID) fits a Gaussian to the 2048-wide pool3 features of real
and of synthetic images and reports the Fréchet distance between the two
(:func:`synthmri.metrics.distribution.frechet_distance`). The Inception Score (IS) is
``exp(E_x KL(p(y|x) || p(y)))`` over the network's class posteriors: high when each image is
classified confidently and the classes spread out over the set.

Network: :class:`FIDInceptionV3` (:mod:`synthmri.metrics.inception_network`) is the
InceptionV3 of TensorFlow's 2015-12-05 graph as ported to PyTorch by pytorch-fid (the network
that published FID numbers use); its weights file ``pt_inception-2015-12-05-6726825d.pth``
(sha256 prefix 6726825d) loads with ``load_state_dict(strict=True)``.

Weights: nothing is downloaded. The weights file has to be provided through the config as a
local path, an ``s3://`` URI or an MLflow artifact URI (:func:`load_inception`); where no
weights are configured the caller skips FID and IS (they are meaningless with random weights).

Channel mapping: the network wants RGB; the slices carry t1, t1ce, t2, flair and the
annotation. :func:`to_inception_input` takes any three channel indices as R, G and B, repeats
allowed: ``(1, 1, 1)`` is the T1Gd channel replicated to RGB (the paper's Table 2, the
``quality.inception_input: t1ce_gray`` mode of :mod:`synthmri.metrics.quality`); its default
``(1, 2, 3)`` is t1ce, t2 and flair (the ``channels`` mode's default).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmri.metrics.inception_network import (  # noqa: F401 (re-exported: the network and its sizes)
    FEATURE_DIM,
    INPUT_SIZE,
    NUM_CLASSES,
    FIDInceptionV3,
)

#: The standard weights file (pytorch-fid's port of the 2015-12-05 TensorFlow graph).
WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


class InceptionWeightsError(ValueError):
    """Inception weights that cannot be fetched, read or loaded; the message names the source."""


def _fetch(source: str, tmp: Path) -> Path:
    """The weights as a local file: remote sources are downloaded into `tmp`."""
    if source.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = source[len("s3://"):].partition("/")
        if not bucket or not key:
            raise InceptionWeightsError(f"Inception weights URI {source!r} is not of the form s3://bucket/key")
        target = tmp / (Path(key).name or "weights.pth")
        try:
            client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
            client.download_file(bucket, key, str(target))
        except (BotoCoreError, ClientError) as exc:
            raise InceptionWeightsError(f"cannot download Inception weights from {source}: {exc}") from exc
        return target
    if source.startswith(MLFLOW_SCHEMES):
        import mlflow

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp))
        except Exception as exc:  # MlflowException, OSError, store-specific errors
            raise InceptionWeightsError(f"cannot download Inception weights from {source}: {exc}") from exc
        path = Path(local)
        if path.is_dir():
            raise InceptionWeightsError(f"Inception weights {source} is a directory of artifacts, not a file")
        return path
    path = Path(source[len("file://"):] if source.startswith("file://") else source).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InceptionWeightsError(f"Inception weights file {path} {what}")
    return path


def _read_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and tensor errors come in many types
        raise InceptionWeightsError(f"cannot read Inception weights from {source}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InceptionWeightsError(
            f"Inception weights from {source} are not a state dict of tensors (got {type(obj).__name__})"
        )
    return dict(obj)


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str, show: int = 5) -> None:
    """Raise if `state` does not fit `model`; BatchNorm ``num_batches_tracked`` may be absent."""
    expected = model.state_dict()
    for key, value in expected.items():  # files from before torch 0.4.1 lack these counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    shape = lambda t: str(list(t.shape))  # noqa: E731
    groups = [
        ("missing keys", [f"{k} {shape(v)}" for k, v in expected.items() if k not in state]),
        ("unexpected keys", [f"{k} {shape(v)}" for k, v in state.items() if k not in expected]),
        ("shape mismatches", [f"{k}: file {shape(state[k])}, network {shape(v)}" for k, v in expected.items()
                              if k in state and state[k].shape != v.shape]),
    ]
    problems = [f"{len(names)} {what} ({', '.join(names[:show])}{', ...' if len(names) > show else ''})"
                for what, names in groups if names]
    if problems:
        raise InceptionWeightsError(f"Inception weights from {source} do not fit FIDInceptionV3: " + "; ".join(problems))


def load_inception(source: str, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load its weights from `source`, in eval mode on `device`.

    Args:
        source: a local file path, an ``s3://bucket/key`` URI (boto3; endpoint from
            ``AWS_ENDPOINT_URL`` when set, credentials from the environment) or an MLflow artifact
            URI (``runs:/``, ``models:/``, ``mlflow-artifacts:/``). The file holds a state dict,
            plain or under the key ``"state_dict"``.
        device: where the network goes.

    Raises:
        InceptionWeightsError: the file is missing, cannot be downloaded or read, or its keys or
            shapes do not fit the network; the message names `source`.
    """
    with tempfile.TemporaryDirectory(prefix="inception-") as tmp:
        state = _read_state_dict(_fetch(str(source), Path(tmp)), str(source))
    model = FIDInceptionV3()
    _check_state_dict(model, state, str(source))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def to_inception_input(slices_uint8: np.ndarray, channels: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Three channels of uint8 slices [n, C, H, W] as RGB in [-1, 1], resized to 299x299.

    Args:
        slices_uint8: the slices; 0 maps to -1 and 255 to 1.
        channels: the channel indices that become R, G and B (default t1ce, t2, flair;
            repeats allowed, ``(1, 1, 1)`` is T1Gd as gray).

    Returns:
        float32 tensor [n, 3, 299, 299] (bilinear resize, ``align_corners=False``).

    Raises:
        ValueError: not a 4-D uint8 array, or channel indices that are not three valid indices.
    """
    arr = np.asarray(slices_uint8)
    if arr.ndim != 4:
        raise ValueError(f"expected slices [n, C, H, W], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 slices, got dtype {arr.dtype}")
    picked = list(channels)
    if len(picked) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c < arr.shape[1] for c in picked):
        raise ValueError(f"channels must be three indices into {arr.shape[1]} channels, got {tuple(channels)}")
    x = torch.from_numpy(np.ascontiguousarray(arr[:, picked])).float() / 127.5 - 1.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x


def _batches(images, batch_size: int) -> Iterator[np.ndarray]:
    if callable(images):
        images = images()
    chunks: Iterable = [images] if isinstance(images, np.ndarray) else images
    for chunk in chunks:
        chunk = np.asarray(chunk)
        for start in range(0, len(chunk), batch_size):
            yield chunk[start:start + batch_size]


def inception_features(
    model: FIDInceptionV3,
    images: np.ndarray | Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    channels: Sequence[int] = (1, 2, 3),
) -> tuple[np.ndarray, np.ndarray]:
    """Pool3 features and logits of uint8 slices, computed in batches in eval mode.

    Args:
        model: the network; it is moved to `device` and put in eval mode.
        images: a uint8 array [n, 5, H, W], an iterable of such arrays (batches from a store),
            or a callable returning such an iterable.
        batch_size: images per forward pass (larger chunks are split).
        device: where the forward passes run.
        channels: slice channels used as R, G, B (see :func:`to_inception_input`).

    Returns:
        features float64 [n, 2048] and logits float64 [n, 1008] (empty arrays for no images).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    model = model.to(device).eval()
    feats, logits = [], []
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            f, lg = model(to_inception_input(batch, channels).to(device))
            feats.append(f.double().cpu().numpy())
            logits.append(lg.double().cpu().numpy())
    if not feats:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES))
    return np.concatenate(feats), np.concatenate(logits)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score: mean and standard deviation over `splits` groups of the samples.

    Per group ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the group's mean posterior; groups
    are consecutive slices ``[i*n//splits, (i+1)*n//splits)`` and the sd is the population sd
    (``ddof=0``), as in the reference TensorFlow code. The softmax spans all 1008 outputs (1000
    ImageNet classes plus padding outputs of the 2015 graph), as in that code, torch-fidelity and
    torchmetrics, so IS stays comparable with published numbers; use unbiased logits
    (:class:`FIDInceptionV3` default) for the same reason.

    Args:
        logits: [n, classes] pre-softmax scores (from :func:`inception_features`).
        splits: number of groups.

    Raises:
        ValueError: not 2-D, non-finite values, ``splits < 1`` or fewer samples than splits.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected logits [n, classes], got shape {z.shape}")
    if splits < 1:
        raise ValueError(f"splits must be positive, got {splits}")
    if len(z) < splits:
        raise ValueError(f"need at least as many samples as splits, got {len(z)} samples for {splits} splits")
    if not np.isfinite(z).all():
        raise ValueError("logits contain non-finite values")
    zmax = z.max(axis=1, keepdims=True)
    log_p = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    n, scores = len(z), []
    for i in range(splits):
        lp = log_p[i * n // splits:(i + 1) * n // splits]
        # log of the group's mean posterior, by log-sum-exp so that it stays finite
        top = lp.max(axis=0)
        log_py = top + np.log(np.exp(lp - top).mean(axis=0))
        kl = (np.exp(lp) * (lp - log_py)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
