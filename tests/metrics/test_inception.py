"""The FID InceptionV3: architecture against the weights file's layout, loading, inputs, Inception Score."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthmri.metrics.inception import (
    FIDInceptionV3,
    InceptionWeightsError,
    inception_features,
    inception_score,
    load_inception,
    to_inception_input,
)
from synthmri.metrics.inception_network import _avg_pool

# 94 BasicConv2d (stem 5, 3 x A 7, B 4, 4 x C 10, D 6, 2 x E 9) with 6 entries each
# (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked),
# plus fc.weight and fc.bias; no AuxLogits (pytorch-fid builds the network with aux_logits=False).
EXPECTED_KEYS = 94 * 6 + 2

# Trainable parameters (conv weights, BN weight and bias, fc). Derived two ways that agree:
# - from the layer table, sum of in*out*kh*kw + 2*out per BasicConv2d plus fc 2048*1008 + 1008:
#   stem 172,672 + A blocks 818,528 + B 1,153,280 + C blocks 6,821,376 + D 1,698,304
#   + E blocks 11,121,408 + fc 2,065,392 = 23,850,960;
# - from torchvision's inception_v3 (27,161,264 with AuxLogits and 1000 classes) minus AuxLogits
#   (98,560 + 2,459,136 + 769,000) plus 8 more classes (8 * 2048 + 8): 23,850,960.
EXPECTED_PARAMETERS = 23_850_960

KEY_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": [32, 3, 3, 3],
    "Conv2d_2a_3x3.conv.weight": [32, 32, 3, 3],
    "Conv2d_2b_3x3.bn.running_var": [64],
    "Conv2d_3b_1x1.conv.weight": [80, 64, 1, 1],
    "Conv2d_4a_3x3.conv.weight": [192, 80, 3, 3],
    "Mixed_5b.branch5x5_2.conv.weight": [64, 48, 5, 5],
    "Mixed_5b.branch_pool.conv.weight": [32, 192, 1, 1],
    "Mixed_5d.branch_pool.conv.weight": [64, 288, 1, 1],
    "Mixed_6a.branch3x3.conv.weight": [384, 288, 3, 3],
    "Mixed_6a.branch3x3dbl_3.conv.weight": [96, 96, 3, 3],
    "Mixed_6b.branch7x7_2.conv.weight": [128, 128, 1, 7],
    "Mixed_6c.branch7x7_3.conv.weight": [192, 160, 7, 1],
    "Mixed_6e.branch7x7dbl_5.conv.weight": [192, 192, 1, 7],
    "Mixed_7a.branch3x3_2.conv.weight": [320, 192, 3, 3],
    "Mixed_7a.branch7x7x3_4.conv.weight": [192, 192, 3, 3],
    "Mixed_7b.branch3x3dbl_1.conv.weight": [448, 1280, 1, 1],
    "Mixed_7b.branch3x3_2b.conv.weight": [384, 384, 3, 1],
    "Mixed_7c.branch1x1.bn.bias": [320],
    "Mixed_7c.branch_pool.conv.weight": [192, 2048, 1, 1],
    "fc.weight": [1008, 2048],
    "fc.bias": [1008],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Single-threaded torch: steady timings on small CI machines, bit-identical repeats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize(model: FIDInceptionV3, seed: int) -> None:
    """He-scaled convolutions and random BN statistics, so activations neither vanish nor explode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("conv.weight"):
                t.normal_(0.0, math.sqrt(2.0 / t[0].numel()), generator=g)
            elif name.endswith(("bn.weight", "bn.running_var")):
                t.uniform_(0.5, 1.5, generator=g)
            elif name.endswith(("bn.bias", "bn.running_mean")):
                t.normal_(0.0, 0.1, generator=g)
            elif name.startswith("fc."):
                t.normal_(0.0, 0.02, generator=g)
            if t.is_floating_point():  # representable in float16, so a half-size file loads exactly
                t.copy_(t.half().float())


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    net = FIDInceptionV3()
    _randomize(net, seed=0)
    return net.eval()


@pytest.fixture(scope="module")
def probe(model):
    """Two random slices [2, 5, 64, 64], their network input and the reference outputs."""
    slices = np.random.default_rng(0).integers(0, 256, size=(2, 5, 64, 64), dtype=np.uint8)
    x = to_inception_input(slices)
    with torch.inference_mode():
        features, logits = model(x[:1])
    return slices, x, features, logits


@pytest.fixture(scope="module")
def weights_file(model, tmp_path_factory) -> Path:
    """The model's weights saved in float16 (48 MB instead of 95 MB: moto and copies are faster)."""
    path = tmp_path_factory.mktemp("weights") / "fid_inception.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    return path


def _same_outputs(loaded: FIDInceptionV3, probe) -> None:
    assert not loaded.training
    with torch.inference_mode():
        features, logits = loaded(probe[1][:1])
    torch.testing.assert_close(features, probe[2], rtol=0, atol=0)
    torch.testing.assert_close(logits, probe[3], rtol=0, atol=0)


def _light_state_dict(model: FIDInceptionV3) -> dict[str, torch.Tensor]:
    """Right keys and shapes in a tiny file: every tensor is a stride-0 view of one element."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


def test_state_dict_matches_the_weights_file_layout(model):
    state = model.state_dict()
    assert len(state) == EXPECTED_KEYS
    assert not [k for k in state if k.startswith("AuxLogits")]
    for key, shape in KEY_SHAPES.items():
        assert list(state[key].shape) == shape, key
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(bns) == len(convs) == 94
    assert all(m.eps == 0.001 for m in bns) and all(m.bias is None for m in convs)


def test_fid_variant_pooling(model):
    # Average pools leave the padding out of the mean: a constant map stays constant at the border.
    ones = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(_avg_pool(ones), ones)
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


def test_forward_shapes_and_nonnegative_pool_features(model, probe):
    with torch.inference_mode():
        features, logits = model(probe[1])
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert (features >= 0).all() and features.abs().max() > 0
    with pytest.raises(ValueError, match=r"299"):
        model(torch.zeros(1, 3, 64, 64))


def test_inception_features_from_an_array_and_from_batches(model, probe):
    slices = probe[0]
    features, logits = inception_features(model, slices, batch_size=1)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert features.dtype == logits.dtype == np.float64
    np.testing.assert_array_equal(features[:1], probe[2].double().numpy())
    from_batches, _ = inception_features(model, lambda: iter([slices[:1], slices[1:]]))
    np.testing.assert_allclose(from_batches, features, rtol=1e-5, atol=1e-7)


def test_round_trip_through_a_local_file(weights_file, probe):
    _same_outputs(load_inception(str(weights_file)), probe)


def test_round_trip_through_s3(weights_file, probe, monkeypatch):
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="weights")
        # upload_file (multipart) rather than put_object: moto takes seconds over one 95 MB body
        s3.upload_file(str(weights_file), "weights", "inception/fid_inception.pth")
        _same_outputs(load_inception("s3://weights/inception/fid_inception.pth"), probe)
        with pytest.raises(InceptionWeightsError, match=r"s3://weights/inception/nothing\.pth"):
            load_inception("s3://weights/inception/nothing.pth")


def test_round_trip_through_an_mlflow_artifact(weights_file, probe, mlflow_uri):
    import mlflow

    # An explicit experiment: the fluent API remembers the active one of an earlier test's database.
    mlflow.set_experiment("inception-weights")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(weights_file))
    _same_outputs(load_inception(f"runs:/{run.info.run_id}/fid_inception.pth"), probe)


def test_missing_or_unreadable_files_are_named(tmp_path):
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(InceptionWeightsError, match=r"no_such_weights\.pth.*does not exist"):
        load_inception(str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InceptionWeightsError, match=r"cannot read .*garbage\.pth"):
        load_inception(str(garbage))
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(InceptionWeightsError, match=r"list\.pth are not a state dict"):
        load_inception(str(not_a_dict))


def test_wrong_shapes_missing_and_unexpected_keys_are_named(model, tmp_path):
    state = _light_state_dict(model)
    state["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(1).expand(128, 128, 7, 1)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(state, bad_shape)
    with pytest.raises(InceptionWeightsError, match=r"bad_shape\.pth") as info:
        load_inception(str(bad_shape))
    assert "1 shape mismatches (Mixed_6b.branch7x7_2.conv.weight: file [128, 128, 7, 1]" in str(info.value)

    state = _light_state_dict(model)
    for key in ("fc.weight", "fc.bias", "Mixed_7c.branch_pool.conv.weight"):
        del state[key]
    state["AuxLogits.fc.weight"] = torch.zeros(1).expand(1000, 768)
    partial = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, partial)
    with pytest.raises(InceptionWeightsError, match=r"partial\.pth") as info:
        load_inception(str(partial))
    message = str(info.value)
    assert "3 missing keys" in message and "fc.weight [1008, 2048]" in message
    assert "Mixed_7c.branch_pool.conv.weight [192, 2048, 1, 1]" in message
    assert "1 unexpected keys (AuxLogits.fc.weight [1000, 768])" in message


def test_batch_norm_counters_may_be_absent(model, tmp_path):
    state = {k: v for k, v in _light_state_dict(model).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counters.pth"
    torch.save(state, path)
    loaded = load_inception(str(path))
    assert float(loaded.fc.weight.detach().abs().sum()) == 0.0


def test_to_inception_input_scale_shape_and_channel_order():
    black, white = np.zeros((1, 5, 32, 48), np.uint8), np.full((1, 5, 32, 48), 255, np.uint8)
    assert to_inception_input(black).shape == (1, 3, 299, 299)
    torch.testing.assert_close(to_inception_input(black), torch.full((1, 3, 299, 299), -1.0))
    torch.testing.assert_close(to_inception_input(white), torch.full((1, 3, 299, 299), 1.0))

    levels = np.array([10, 60, 120, 180, 240], np.uint8)
    slices = np.broadcast_to(levels[None, :, None, None], (2, 5, 16, 16)).copy()
    rgb = to_inception_input(slices)
    assert rgb.shape == (2, 3, 299, 299)
    for out, channel in zip(range(3), (1, 2, 3)):  # default: t1ce, t2, flair as R, G, B
        torch.testing.assert_close(rgb[:, out], torch.full((2, 299, 299), levels[channel] / 127.5 - 1.0))
    custom = to_inception_input(slices, channels=(4, 0, 2))
    torch.testing.assert_close(custom[0, :, 0, 0], torch.tensor([240, 10, 120]) / 127.5 - 1.0)


def test_to_inception_input_rejects_bad_arrays():
    good = np.zeros((1, 5, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"uint8"):
        to_inception_input(good.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[n, C, H, W\]"):
        to_inception_input(good[0])
    with pytest.raises(ValueError, match=r"three indices into 5 channels"):
        to_inception_input(good, channels=(1, 2, 5))
    with pytest.raises(ValueError, match=r"three indices"):
        to_inception_input(good, channels=(1, 2))


def test_inception_score_of_identical_predictions_is_one():
    logits = np.tile(np.random.default_rng(0).normal(size=(1, 1008)), (20, 1))
    mean, sd = inception_score(logits, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and sd == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_even_predictions_is_the_class_count():
    k, n = 5, 50  # sample i is class i % k, so each split of 5 holds every class once
    logits = np.zeros((n, 1008))
    logits[np.arange(n), np.arange(n) % k] = 100.0
    mean, sd = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, abs=1e-3) and sd == pytest.approx(0.0, abs=1e-9)


def test_inception_score_closed_form_and_identical_splits():
    # Two classes, posteriors (a, 1 - a) and (1 - a, a) in equal numbers: p(y) is uniform and
    # IS = exp(log 2 - H(a)) = 2 exp(-H(a)).
    a = 0.8
    row = np.log([a, 1 - a])
    logits = np.tile(np.stack([row, row[::-1]]), (4, 1))
    entropy = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    mean, sd = inception_score(logits, splits=4)
    assert mean == pytest.approx(2.0 * math.exp(-entropy), rel=1e-12) and sd == pytest.approx(0.0, abs=1e-12)
    # Random posteriors repeated block by block: all splits equal, so sd 0 and IS > 1.
    block = np.random.default_rng(1).normal(scale=3.0, size=(7, 1008))
    mean, sd = inception_score(np.tile(block, (4, 1)), splits=4)
    assert mean > 1.0 and sd == pytest.approx(0.0, abs=1e-9)


def test_inception_score_rejects_too_few_samples():
    with pytest.raises(ValueError, match=r"3 samples for 10 splits"):
        inception_score(np.zeros((3, 1008)), splits=10)
    with pytest.raises(ValueError, match=r"\[n, classes\]"):
        inception_score(np.zeros(1008))
