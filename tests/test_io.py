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
