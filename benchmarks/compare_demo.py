"""Compare two finished demo runs (``make demo`` in two checkouts): stores byte for byte, scores exactly.

Used to show that a change leaves the demo's outputs alone: every slice store under ``data/``
(the phantom NIfTI aside) is hashed file by file, and every number in every ``summary.json``
under ``outputs/`` and in ``outputs/promotion.json`` is compared.

    python benchmarks/compare_demo.py BEFORE_CHECKOUT AFTER_CHECKOUT --out benchmarks/results/compare_demo.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, keyed by its relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def numbers(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON value, keyed by its path (``a.b[2]``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{prefix}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, float(value)


def compare(before: Path, after: Path) -> dict[str, Any]:
    """Store verdicts and, per scores file, the number of values compared and the largest difference."""
    stores = {}
    for store in sorted(p for p in (before / "data").iterdir() if p.is_dir() and p.name != "phantom"):
        a, b = file_hashes(store), file_hashes(after / "data" / store.name)
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        stores[store.name] = {"identical": not differing, "differing_files": differing[:20]}
    scores = {}
    for path in sorted((before / "outputs").rglob("summary.json")) + [before / "outputs" / "promotion.json"]:
        relative = str(path.relative_to(before))
        other = after / relative
        if not other.is_file():
            scores[relative] = {"missing_after": True}
            continue
        a, b = dict(numbers(json.loads(path.read_text()))), dict(numbers(json.loads(other.read_text())))
        common = sorted(k for k in set(a) & set(b) if not (math.isnan(a[k]) or math.isnan(b[k])))
        worst = max(common, key=lambda k: abs(a[k] - b[k]), default=None)
        scores[relative] = {"values": len(common), "only_before": sorted(set(a) - set(b)),
                            "only_after": sorted(set(b) - set(a)),
                            "max_abs_difference": None if worst is None else abs(a[worst] - b[worst]),
                            "at": worst}
    return {"stores": stores, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="checkout of the first demo run")
    parser.add_argument("after", type=Path, help="checkout of the second demo run")
    parser.add_argument("--out", type=Path, help="write the comparison here as JSON")
    args = parser.parse_args()
    text = json.dumps(compare(args.before, args.after), indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
