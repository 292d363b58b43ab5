"""FID and Inception Score features from the "FID Inception" network, built in this project.

The Fréchet Inception Distance (FID) fits a Gaussian to the 2048-wide pool3 features of real
and of synthetic images and reports the Fréchet distance between the two
(:func:`synthmri.metrics.distribution.frechet_distance`). The Inception Score (IS) is
``exp(E_x KL(p(y|x) || p(y)))`` over the network's class posteriors: high when each image is
classified confidently and the classes spread out over the set.

Network: :class:`FIDInceptionV3` is the InceptionV3 of TensorFlow's 2015-12-05 graph as ported
to PyTorch by pytorch-fid (the network that published FID numbers use). It differs from
torchvision's Inception3 in three places: the average pools in the A, C and E blocks leave the
zero padding out of the mean (``count_include_pad=False``), ``Mixed_7c`` pools its last branch
with a max pool instead of an average pool, and the classifier has 1008 outputs. Parameter names
follow that port, so its weights file ``pt_inception-2015-12-05-6726825d.pth`` (sha256 prefix
6726825d) loads with ``load_state_dict(strict=True)``.

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

#: The standard weights file (pytorch-fid's port of the 2015-12-05 TensorFlow graph).
WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


class InceptionWeightsError(ValueError):
    """Inception weights that cannot be fetched, read or loaded; the message names the source."""


class _BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (64 + 64 + 96 + pool_features)."""

    def __init__(self, in_ch: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = _BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = _BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class _InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3 and max pool."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (4 x 192 channels out)."""

    def __init__(self, in_ch: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = _BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, 7x7-then-strided-3x3 and max pool."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = _BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (320 + 768 + 768 + 192 = 2048 channels).

    ``max_pool=True`` is the FID graph's ``Mixed_7c``, which pools its last branch with a max pool.
    """

    def __init__(self, in_ch: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = _BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 as in the FID reference graph; parameter names match the standard weights file.

    Args:
        logits_bias: add ``fc.bias`` to the logits. Off by default: the reference Inception Score
            code (and torch-fidelity's ``logits_unbiased``) multiplies pool3 by the softmax weights
            without the bias, so IS stays comparable with published values.
    """

    def __init__(self, logits_bias: bool = False) -> None:
        super().__init__()
        self.logits_bias = logits_bias
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool3 features [n, 2048] and logits [n, 1008] from images [n, 3, 299, 299] in [-1, 1]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected input [n, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {list(x.shape)}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = F.linear(features, self.fc.weight, self.fc.bias if self.logits_bias else None)
        return features, logits


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
