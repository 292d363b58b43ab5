"""benchmarks/compare_demo.py tells identical demo runs from ones whose bytes or scores moved."""

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("compare_demo", REPO / "benchmarks" / "compare_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(root: Path) -> Path:
    (root / "data" / "slices" / "shards").mkdir(parents=True)
    (root / "data" / "slices" / "shards" / "shard-00000.npy").write_bytes(bytes(range(64)))
    (root / "outputs" / "evaluation-real").mkdir(parents=True)
    (root / "outputs" / "evaluation-real" / "summary.json").write_text(json.dumps({"mean_dice": 0.9, "dice": [0.8, 1.0]}))
    (root / "outputs" / "promotion.json").write_text(json.dumps({"passed": False, "value": 0.25}))
    return root


def test_identical_runs_compare_equal_and_changes_are_named(tmp_path: Path) -> None:
    compare = load_script().compare
    before = make_run(tmp_path / "before")
    after = tmp_path / "after"
    shutil.copytree(before, after)
    same = compare(before, after)
    assert same["stores"]["slices"]["identical"]
    assert same["scores"]["outputs/evaluation-real/summary.json"] == {
        "values": 3, "only_before": [], "only_after": [], "max_abs_difference": 0.0, "at": "dice[0]"}

    shard = after / "data" / "slices" / "shards" / "shard-00000.npy"
    shard.write_bytes(b"\x01" + shard.read_bytes()[1:])
    (after / "outputs" / "evaluation-real" / "summary.json").write_text(json.dumps({"mean_dice": 0.875, "dice": [0.8, 1.0]}))
    moved = compare(before, after)
    assert moved["stores"]["slices"] == {"identical": False, "differing_files": ["shards/shard-00000.npy"]}
    scores = moved["scores"]["outputs/evaluation-real/summary.json"]
    assert scores["at"] == "mean_dice" and abs(scores["max_abs_difference"] - 0.025) < 1e-12
