"""Labels: BraTS ids -> annotation values -> class indices, checked against direct lookups."""

from __future__ import annotations

import numpy as np
import pytest

from synthmri.data.labels import LABEL_VALUES, LabelError, classes_to_values, encode_labels, snap_labels, values_to_classes

BRATS_2021 = {1: 51, 2: 102, 4: 204}
BRATS_2023 = {1: 51, 2: 102, 3: 204}


def test_encode_brats2021_labels_to_annotation_values():
    seg = np.array([[0, 1, 2], [4, 0, 4]], dtype=np.int16)
    encoded = encode_labels(seg, BRATS_2021)
    assert encoded.dtype == np.uint8
    expected = np.array([[BRATS_2021.get(int(v), 0) for v in row] for row in seg])
    np.testing.assert_array_equal(encoded, expected)


def test_encode_brats2023_maps_label_3_to_enhancing_tumour():
    seg = np.array([0, 1, 2, 3, 3], dtype=np.uint8)
    np.testing.assert_array_equal(encode_labels(seg, BRATS_2023), [0, 51, 102, 204, 204])


def test_encode_accepts_integral_floats():
    seg = np.array([0.0, 1.0, 2.0, 4.0])
    np.testing.assert_array_equal(encode_labels(seg, BRATS_2021), [0, 51, 102, 204])


@pytest.mark.parametrize("seg,label_map,bad", [
    (np.array([0, 3]), BRATS_2021, "3"),  # BraTS 2023 data with the 2021 map
    (np.array([0, 4]), BRATS_2023, "4"),
    (np.array([0.0, 1.5]), BRATS_2021, "1.5"),
])
def test_encode_rejects_labels_outside_the_map(seg, label_map, bad):
    with pytest.raises(LabelError, match=bad.replace(".", r"\.")):
        encode_labels(seg, label_map)


def test_snap_labels_picks_the_nearest_value():
    values = np.arange(256, dtype=np.float32)
    snapped = snap_labels(values)
    levels = np.array(LABEL_VALUES)
    for v, s in zip(values, snapped):
        distances = np.abs(levels - v)
        assert distances[levels == s][0] == distances.min()
    assert snapped.dtype == np.uint8
    np.testing.assert_array_equal(snap_labels(np.array(LABEL_VALUES)), LABEL_VALUES)
    # Boundaries: midpoints are 25.5, 76.5, 153.
    np.testing.assert_array_equal(snap_labels(np.array([25, 26, 76, 77, 152, 154, 255])), [0, 51, 51, 102, 102, 204, 204])


def test_classes_values_round_trip():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, size=(7, 9))
    values = classes_to_values(classes)
    assert set(np.unique(values).tolist()) <= set(LABEL_VALUES)
    np.testing.assert_array_equal(values_to_classes(values), classes)
    # Off-grid annotation values (e.g. a generator's output) snap to the nearest class.
    noisy = values.astype(np.float32) + rng.uniform(-20, 20, size=values.shape)
    np.testing.assert_array_equal(values_to_classes(noisy), classes)
    np.testing.assert_array_equal(values_to_classes(noisy), values_to_classes(snap_labels(noisy)))
