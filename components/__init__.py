"""Kubeflow components: one per stage, each a thin wrapper around ``synthmri <verb>``.

Every component runs a project image (built from docker/) and passes artifact paths and
parameters to the CLI's flags; the logic lives in the ``synthmri`` library.
"""

from components.common import CPU_IMAGE, GPU_IMAGE, IMAGE_REPOSITORY
from components.evaluate_segmenter import evaluate_segmenter
from components.evaluate_synthetic import evaluate_synthetic
from components.gather import gather
from components.generate import generate
from components.grid import grid
from components.prepare import prepare
from components.promote import promote
from components.report import report
from components.resources import STAGE_RESOURCES, Cluster, StageResources, place
from components.share import share
from components.train_generator import train_generator
from components.train_segmenter import train_segmenter, train_segmenter_real

__all__ = [
    "CPU_IMAGE",
    "GPU_IMAGE",
    "IMAGE_REPOSITORY",
    "STAGE_RESOURCES",
    "Cluster",
    "StageResources",
    "evaluate_segmenter",
    "evaluate_synthetic",
    "gather",
    "generate",
    "grid",
    "place",
    "prepare",
    "promote",
    "report",
    "share",
    "train_generator",
    "train_segmenter",
    "train_segmenter_real",
]
