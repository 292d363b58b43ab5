"""Shared I/O helpers: pipeline artifact lists and flat metrics."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from synthmri.io import artifact_paths, expand_artifact_paths, scalar_metrics


def test_a_plain_path_is_itself():
    assert artifact_paths("data/slices") == [Path("data/slices")]


def test_an_artifact_list_maps_uris_to_the_launchers_mounts():
    listing = {"artifacts": [
        {"name": "a", "uri": "minio://mlpipeline/v2/artifacts/run/gather/gathered", "metadata": {}},
        {"name": "b", "uri": "s3://bucket/key/evaluation"},
        {"name": "c", "uri": "gs://bucket/x"},
        {"name": "d", "uri": "/tmp/kfp/evaluate-segmenter/evaluation"},
        {"name": "e", "uri": "file:///tmp/local"},
    ]}
    assert artifact_paths(json.dumps(listing)) == [
        Path("/minio/mlpipeline/v2/artifacts/run/gather/gathered"), Path("/s3/bucket/key/evaluation"),
        Path("/gcs/bucket/x"), Path("/tmp/kfp/evaluate-segmenter/evaluation"), Path("/tmp/local")]
    # The bare list form and an empty fan-in.
    assert artifact_paths(json.dumps(listing["artifacts"][:1])) == [Path("/minio/mlpipeline/v2/artifacts/run/gather/gathered")]
    assert artifact_paths('{"artifacts": []}') == []


def test_expand_concatenates_paths_and_lists_in_order():
    listing = json.dumps({"artifacts": [{"uri": "/x/1"}, {"uri": "/x/2"}]})
    assert expand_artifact_paths(["/x/0", listing, "/x/3"]) == [Path(f"/x/{i}") for i in range(4)]
    assert expand_artifact_paths(None) == []


@pytest.mark.parametrize("text", ['{"artifacts": [{"name": "no uri"}]}', '{"artifacts": "x"}', "[1, 2]", "{not json"])
def test_malformed_artifact_lists_are_named(text):
    with pytest.raises(ValueError, match="artifact list"):
        artifact_paths(text)


def test_scalar_metrics_flatten_finite_numbers_only():
    summary = {"mean_dice": 0.5, "dice": {"ET": 0.25, "WT": np.float32(0.75)}, "n": 3, "passed": True,
               "name": "unet", "hd": {"ET": math.inf, "ED": float("nan")}, "sd": None, "runs": ["a"]}
    assert scalar_metrics(summary) == {"mean_dice": 0.5, "dice.ET": 0.25, "dice.WT": 0.75, "n": 3.0}


def test_npy_parts_equal_np_save_of_the_concatenation(tmp_path):
    import hashlib
    import io as stdio

    from synthmri.io import atomic_save_npy_parts

    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, size=(n, 5, 8, 8), dtype=np.uint8) for n in (3, 1, 7)]
    parts.append(parts[0][:, :, ::2, ::2].repeat(2, axis=2).repeat(2, axis=3))  # not contiguous before the copy
    expected = stdio.BytesIO()
    np.save(expected, np.concatenate(parts))
    digest = atomic_save_npy_parts(tmp_path / "shard.npy", parts)
    assert (tmp_path / "shard.npy").read_bytes() == expected.getvalue()
    assert digest == hashlib.sha256(expected.getvalue()).hexdigest()
    assert not list(tmp_path.glob(".shard.npy.*"))  # no temporary left
    with pytest.raises(ValueError, match="differ in dtype or trailing shape"):
        atomic_save_npy_parts(tmp_path / "bad.npy", [parts[0], parts[0].astype(np.int16)])
    with pytest.raises(ValueError, match="nothing to save"):
        atomic_save_npy_parts(tmp_path / "empty.npy", [])
