"""Kubeflow components: one per stage, each a thin wrapper around ``synthmri <verb>``.

Every component runs :data:`IMAGE` (built from docker/Dockerfile) and passes artifact
paths and parameters to the CLI's flags; the logic lives in the ``synthmri`` library.
"""

from components.common import IMAGE, IMAGE_REPOSITORY
from components.evaluate_segmenter import evaluate_segmenter
from components.evaluate_synthetic import evaluate_synthetic
from components.generate import generate
from components.phantom import phantom
from components.prepare import prepare, prepare_from_uri
from components.promote import promote
from components.report import report
from components.resources import STAGE_RESOURCES, StageResources, apply_resources
from components.train_generator import train_generator
from components.train_segmenter import train_segmenter

__all__ = [
    "IMAGE",
    "IMAGE_REPOSITORY",
    "STAGE_RESOURCES",
    "StageResources",
    "apply_resources",
    "evaluate_segmenter",
    "evaluate_synthetic",
    "generate",
    "phantom",
    "prepare",
    "prepare_from_uri",
    "promote",
    "report",
    "train_generator",
    "train_segmenter",
]
