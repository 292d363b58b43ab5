"""Means over subjects and repeats under each metric convention, against numpy written out here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from synthmri.data.labels import STRUCTURES
from synthmri.segmenters.summaries import aggregate_repeats, mlflow_metrics, subject_means

NAN = float("nan")


def _rows(values: dict[str, list[float]]) -> list[dict]:
    """Per-subject rows: score `values[structure][i]` for subject i, every score the same."""
    return [{"subject": f"s{i}", "structure": name, "dice": v, "hausdorff": 2 * v if not math.isnan(v) else v,
             "hausdorff95": v} for name, column in values.items() for i, v in enumerate(column)]


def test_means_over_subjects_leave_undefined_scores_out_and_count_the_rest():
    values = {"ET": [0.5, NAN, 0.25, NAN], "ED": [0.8, 0.6, 0.4, 0.2], "NCR": [NAN] * 4,
              "WT": [1.0, 0.0, 0.5, 0.5], "TC": [NAN, 0.3, NAN, NAN]}
    means, counts = subject_means(_rows(values), "paper")
    for name, column in values.items():
        defined = [v for v in column if not math.isnan(v)]
        assert counts["dice"][name] == len(defined) and counts["hausdorff"][name] == len(defined)
        if defined:
            assert means["dice"][name] == pytest.approx(sum(defined) / len(defined), abs=1e-15)
            assert means["hausdorff"][name] == pytest.approx(2 * sum(defined) / len(defined), abs=1e-15)
        else:
            assert math.isnan(means["dice"][name])
    assert counts["dice"] == {"ET": 2, "ED": 4, "NCR": 0, "WT": 4, "TC": 1}
    # penalise scores are never undefined: plain means over every subject, today's arithmetic
    finite = {name: [0.1 * (i + 1) + 0.01 * j for i in range(4)] for j, name in enumerate(STRUCTURES)}
    means, counts = subject_means(_rows(finite), "penalise")
    for name, column in finite.items():
        assert means["dice"][name] == float(np.mean(column)) and counts["dice"][name] == 4


def _summary(seed: int, dice_et: float | None, convention: str | None, hd_et: float | None = 3.0) -> dict:
    scores = {"dice": {**dict.fromkeys(STRUCTURES, 0.5), "ET": dice_et},
              "hausdorff": {**dict.fromkeys(STRUCTURES, 4.0), "ET": hd_et},
              "hausdorff95": dict.fromkeys(STRUCTURES, 2.0)}
    summary = {"model": {"arch": "unet", "train": "real", "augment": True, "synthetic": [], "real_share": None,
                         "seed": seed, "name": f"unet-real-aug-s{seed}"},
               "data_hash": "d", "eval_slices": "filtered", "subjects": 3, **scores,
               "mean_dice": (0.5 + 0.5 + (dice_et if dice_et is not None else 0.5)) / 3, "repeats": 1, "runs": [],
               "subjects_scored": {score: dict.fromkeys(STRUCTURES, 3) for score in scores}}
    if convention is not None:
        summary["convention"] = convention
    return summary


def test_sd_over_repeats_is_the_population_sd_for_the_paper_and_the_sample_sd_otherwise():
    dice_et = [0.2, 0.5, 0.9, 0.4]
    array = np.asarray(dice_et)
    population = math.sqrt(sum((v - array.mean()) ** 2 for v in dice_et) / len(dice_et))
    sample = math.sqrt(sum((v - array.mean()) ** 2 for v in dice_et) / (len(dice_et) - 1))
    runs = [f"r{i}" for i in range(4)]
    paper = aggregate_repeats([_summary(i, v, "paper") for i, v in enumerate(dice_et)], runs)
    penalise = aggregate_repeats([_summary(i, v, "penalise") for i, v in enumerate(dice_et)], runs)
    legacy = aggregate_repeats([_summary(i, v, None) for i, v in enumerate(dice_et)], runs)  # before conventions
    assert paper["sd"]["dice"]["ET"] == pytest.approx(population, abs=1e-15)
    assert penalise["sd"]["dice"]["ET"] == pytest.approx(sample, abs=1e-15)
    assert legacy["sd"] == penalise["sd"] and legacy["convention"] == "penalise"
    assert paper["dice"]["ET"] == penalise["dice"]["ET"] == pytest.approx(sum(dice_et) / 4, abs=1e-15)
    assert paper["subjects_scored"]["dice"]["ET"] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="differ in \\['convention'\\]"):
        aggregate_repeats([_summary(0, 0.2, "paper"), _summary(1, 0.3, "penalise")], runs[:2])


def test_undefined_means_drop_out_of_repeats_and_stay_out_of_json_and_mlflow():
    # Repeat 2 scored ET in no subject (null in its summary.json); repeat 3 had no distance for ET.
    summaries = [_summary(0, 0.2, "paper"), _summary(1, 0.6, "paper", hd_et=None), _summary(2, None, "paper"),
                 _summary(3, 0.7, "paper", hd_et=None)]
    summary = aggregate_repeats(summaries, ["a", "b", "c", "d"])
    assert summary["dice"]["ET"] == pytest.approx(0.5, abs=1e-15)  # (0.2 + 0.6 + 0.7) / 3
    assert summary["sd"]["dice"]["ET"] == pytest.approx(math.sqrt((0.09 + 0.01 + 0.04) / 3), abs=1e-15)
    assert summary["hausdorff"]["ET"] == 3.0 and summary["sd"]["hausdorff"]["ET"] == 0.0
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN anywhere
    one = aggregate_repeats([_summary(0, None, "paper"), _summary(1, None, "paper")], ["a", "b"])
    assert one["dice"]["ET"] is None and one["sd"]["dice"]["ET"] is None
    json.dumps(one, allow_nan=False)
    metrics, undefined = mlflow_metrics(one)
    assert undefined == ["dice_ET"] and "dice_ET" not in metrics and "dice_ET_sd" not in metrics
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["dice_ED"] == 0.5
    metrics, undefined = mlflow_metrics({**_summary(0, None, "paper"), "dice": {**one["dice"], "ET": NAN}})
    assert undefined == ["dice_ET"] and metrics["dice_ED_n"] == 3.0
