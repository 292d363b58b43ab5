"""``synthmri reader-study``: a blinded real-vs-synthetic reading by a radiologist (the paper's Table 8).

:mod:`synthmri.reader.study` plans the study (which slices, in which order, behind which
tokens) and keeps the answers; :mod:`synthmri.reader.order` keeps the secret seed of the
order; :mod:`synthmri.reader.server` serves the page, the JSON API and the images, and
:mod:`synthmri.reader.guard` checks each request first; :mod:`synthmri.reader.results`
writes the confusion table to CSV; :mod:`synthmri.stages.reader_study` logs it to MLflow.
"""

from synthmri.reader.results import (
    StudyResult,
    confusion_rows,
    finish,
    study_datasets,
    study_metrics,
    study_params,
    study_tags,
)
from synthmri.reader.order import order_key
from synthmri.reader.server import ReaderServer, render_png, run_until_done, serve
from synthmri.reader.study import ForegroundRule, ReaderStudy, StudyError, build_plan, open_study

__all__ = [
    "ForegroundRule",
    "ReaderServer",
    "ReaderStudy",
    "StudyError",
    "StudyResult",
    "build_plan",
    "confusion_rows",
    "finish",
    "open_study",
    "order_key",
    "render_png",
    "run_until_done",
    "serve",
    "study_datasets",
    "study_metrics",
    "study_params",
    "study_tags",
]
