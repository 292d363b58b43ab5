"""The stage layer: one module per ``synthmri`` verb.

A stage module holds the verb's contract in one place: its flags (``add_arguments``, the one
source of them, which the Kubeflow components, ``dvc.yaml`` and the README are checked
against), its entry point (``main``: resolve the config, run, print one summary) and its
container's needs (:class:`~synthmri.stages.base.Resources`). Stages open stores, MLflow runs
and progress through :mod:`synthmri.stages.context`; the libraries they call (``data``,
``generators``, ``metrics``, ``segmenters``, ``report``) never do. See docs/design.md.
"""

from __future__ import annotations

from synthmri.stages import (
    evaluate_segmenter,
    evaluate_synthetic,
    gather,
    generate,
    grid,
    phantom,
    pipeline,
    prepare,
    promote,
    reader_study,
    report,
    share,
    summary,
    train_generator,
    train_segmenter,
)
from synthmri.stages.base import Resources, Verb

#: Every verb, in pipeline order (the order of ``synthmri --help``).
VERBS: dict[str, Verb] = {module.VERB.name: module.VERB for module in (
    phantom, prepare, train_generator, generate, evaluate_synthetic, share, train_segmenter, evaluate_segmenter,
    promote, report, reader_study, grid, gather, summary, pipeline,
)}

__all__ = ["VERBS", "Resources", "Verb"]
