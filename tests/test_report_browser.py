"""The HTML report in headless Chromium: every figure renders, every section of the paper is there."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from test_report import RUNS, _summary, quality, write_evaluations, write_memorization, write_store

from synthmri.report import write_report

REPO = Path(__file__).resolve().parents[1]
# A run has one dataset: Table 3 or 4 and Table 6 or 7. These handmade evaluations record none, so the
# Dice and Hausdorff tables take the paper's layout without its numbers (test_report_tables.py has them).
SECTIONS = ("Figure 1", "Table 1", "Table 2", "Memorization", "Memorization: ddpm", "Memorization: stylegan2",
            "Figure 2", "Figure 3", "Dice scores in the layout of Table 3/4", "Table 5",
            "Hausdorff distances (mm) in the layout of Table 6/7", "Figure 4", "Promotion")


@pytest.fixture
def registry(mlflow_uri: str, monkeypatch: pytest.MonkeyPatch):
    """mlflow_uri plus the registry (tracking.configure exports MLFLOW_REGISTRY_URI)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
    yield mlflow_uri
    mlflow.set_registry_uri(None)


def _examples(paths: list[Path], rng: np.random.Generator) -> None:
    """An example.npz beside each summary: one 24x24 tumour slice, each model's prediction a little off."""
    from synthmri.segmenters.evaluate import write_example

    image = rng.integers(20, 200, (1, 5, 24, 24), dtype=np.uint8)
    image[0, 4] = 0
    image[0, 4, 6:18, 5:19] = 102
    image[0, 4, 8:16, 8:15] = 204
    image[0, 4, 10:14, 10:13] = 51
    for path in paths:
        pred = np.roll(image[:, 4], int(rng.integers(-2, 3)), axis=int(rng.integers(1, 3)))
        write_example(path / "example.npz", np.array(["p1-012"]), np.array([12]), image, pred)


def _inputs(root: Path) -> dict:
    """Handmade outputs of every stage the report reads: two architectures, two generators, a ratio sweep."""
    from synthmri.metrics.evaluate_synthetic import plot_pairs

    rng = np.random.default_rng(5)
    evaluations = write_evaluations(root / "eval-unet", "unet") + write_evaluations(root / "eval-swin", "swin", {
        key: [tuple(v - 0.05 if i < 3 else v + 1 for i, v in enumerate(values)) for values in repeats]
        for key, repeats in RUNS.items()})
    runs = {("synthetic", True, ("synthetic/stylegan2",)): [(0.66, 0.55, 0.45, 11.0, 14.0, 12.0)]}
    evaluations += write_evaluations(root / "eval-stylegan2", "unet", runs)
    for number, share in enumerate((0.0, 0.25, 0.5, 1.0)):
        for seed in range(2):
            directory = root / "eval-ratio" / f"{number}-{seed}"
            directory.mkdir(parents=True)
            summary = _summary("ratio", ["stylegan2"], seed, 0.55 + 0.2 * share + 0.02 * seed, real_share=share)
            (directory / "summary.json").write_text(json.dumps(summary))
            evaluations.append(directory)
    _examples([p for p in evaluations if "ratio" not in str(p)], rng)
    write_store(root / "real", rng, None)
    stores, memorization = [], []
    for name, values in (("ddpm", (31.5, 2.1, 4.2)), ("stylegan2", (24.25, 2.4, 5.5))):
        write_store(root / name, rng, {"name": name, "version": "1"})
        stores.append(root / name)
        write_memorization(root / f"mem-{name}", name, quality(*values))
        slices = rng.integers(0, 256, (6, 5, 24, 24), dtype=np.uint8)
        pairs = [(f"{name}-{i}", slices[i], f"p0-{i}", slices[i + 3], 0.9 - 0.1 * i) for i in range(3)]
        (root / f"mem-{name}" / "memorization_pairs.png").write_bytes(plot_pairs(pairs))
        memorization.append(root / f"mem-{name}")
    decision = {"passed": True, "model": "synthmri-stylegan2", "version": "1", "notes": [], "criteria": [
        {"name": "memorization", "value": 0.0, "threshold": 0.01, "comparison": "<=", "passed": True,
         "explanation": "0.00% vs 0.00% of test slices"}]}
    (root / "decision.json").write_text(json.dumps(decision))
    return {"evaluations": evaluations, "memorization": memorization, "real": root / "real", "synthetic": stores,
            "promotion": root / "decision.json"}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_renders_every_figure_in_chromium(browser, tmp_path, tiny_config, registry):
    html = write_report(tmp_path / "report", cfg=tiny_config, **_inputs(tmp_path / "inputs"))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(html.resolve().as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        # Fig. 1 x2, Table 2's generators' histograms and pairs x2, Figs. 2, 3 and 4.
        assert len(images) == 9
        assert all(complete and width > 0 for _, complete, width in images), images
        headings = page.locator("h1, h2, h3").all_inner_texts()
        for section in SECTIONS:
            assert any(h.startswith(section) for h in headings), (section, headings)
        assert not any("No " in p for p in page.locator("p").all_inner_texts() if "evaluations" in p)
        shot = page.screenshot(full_page=True)
        width, height = _png_size(shot)
        assert width == 1280 and height > 3000 and len(shot) > 50_000
        if os.environ.get("SYNTHMRI_SAVE_SCREENSHOTS"):  # the README's picture: the top of the report
            page.set_viewport_size({"width": 1100, "height": 900})
            (REPO / "docs").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "docs" / "report.png"), full_page=True,
                            clip={"x": 0, "y": 0, "width": 1100, "height": 1300})
    finally:
        page.close()
