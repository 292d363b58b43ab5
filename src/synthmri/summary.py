"""What the last local run (``dvc repro``) produced, in a few lines for a person."""

from __future__ import annotations

import json
from pathlib import Path

from synthmri.config import GRID_SOURCES, Config
from synthmri.report_figures import ARCH_NAMES
from synthmri.tracking import configure, tracking_uri

#: Where dvc.yaml puts each stage's output, relative to the project root.
LAYOUT = {
    "registrations": "models/generator-*/registration.json",  # one per entry of params.yaml's generators
    "memorization": "outputs/memorization-{model}/summary.json",
    "promotion": "outputs/promotion.json",
    "report": "outputs/report/report.html",
    "evaluations": {source: f"outputs/evaluation-{source}/summary.json" for source in GRID_SOURCES},
}



def _score(value: float | None) -> str:
    """A score to three decimals; undefined (null/NaN, the paper's convention) as 'n/a'."""
    return "n/a" if value is None or value != value else f"{value:.3f}"

def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def print_summary(root: Path, cfg: Config) -> int:
    """Print the report path, the registered generator and its aliases, scores and the MLflow UI.

    Args:
        root: project directory the pipeline ran in.
        cfg: resolved config (for the MLflow tracking URI).

    Returns:
        0 when the run is complete, 1 when an expected output is missing (named).
    """
    root = Path(root)
    missing = []
    print("synthmri demo: results")

    for source, rel in LAYOUT["evaluations"].items():
        summary = _read_json(root / rel)
        if summary is None:
            missing.append(rel)
            continue
        dice = "  ".join(f"{label} {_score(summary['dice'][label])}" for label in ("ET", "ED", "NCR"))
        arch = ARCH_NAMES.get(summary["model"].get("arch"), summary["model"].get("arch"))
        print(f"  {arch} trained on {source:<9} 3D Dice  {dice}  (mean {_score(summary['mean_dice'])}, "
              f"{summary['subjects']} test subjects)")

    registrations = sorted(root.glob(LAYOUT["registrations"]))
    if not registrations:
        missing.append(LAYOUT["registrations"])
    if registrations:
        import mlflow

        configure(cfg.tracking)
        client = mlflow.MlflowClient()
    for path in registrations:
        registration = json.loads(path.read_text())
        version = client.get_model_version(registration["name"], str(registration["version"]))
        aliases = ", ".join(sorted(version.aliases)) or "none"
        model = path.parent.name.removeprefix("generator-")
        memorization = _read_json(root / LAYOUT["memorization"].format(model=model))
        copies = ""
        if memorization is not None:
            copies = (f"; {memorization['synthetic']['share_above_threshold']:.1%} of its slices above "
                      f"r = {memorization['threshold']} (real test slices: "
                      f"{memorization['baseline']['share_above_threshold']:.1%})")
        print(f"  generator: {registration['name']} version {registration['version']} (aliases: {aliases}){copies}")

    decision = _read_json(root / LAYOUT["promotion"])
    if decision is None:
        missing.append(LAYOUT["promotion"])
    else:
        verdict = "passed: alias 'champion' set" if decision["passed"] else "failed: not promoted"
        print(f"  promotion gate {verdict}")
        for criterion in decision["criteria"]:
            mark = "ok  " if criterion["passed"] else "FAIL"
            print(f"    [{mark}] {criterion['explanation']}")

    report = root / LAYOUT["report"]
    if report.is_file():
        print(f"  report: {report.resolve()}")
    else:
        missing.append(LAYOUT["report"])
    print(f"  MLflow: {tracking_uri(cfg.tracking)}; browse it with `make mlflow-ui` (http://127.0.0.1:5000)")
    if missing:
        print("missing outputs (has `dvc repro` finished?): " + ", ".join(missing))
        return 1
    return 0
