"""Kubeflow pipelines of synthmri: one graph (:mod:`pipelines.experiment`), two sets of defaults.

``synthmri pipeline compile`` writes each to ``<name>.yaml``. Importing this package needs
kfp (the ``kfp`` extra); the ``synthmri`` library never does.
"""

from dataclasses import dataclass, field
from typing import Any

from pipelines.experiment import build_pipeline


@dataclass(frozen=True)
class Pipeline:
    """One compiled pipeline: the shared graph under a name, with its own parameter defaults.

    Attributes:
        name: Pipeline name in Kubeflow.
        display_name: What the Kubeflow UI shows.
        defaults: Parameter defaults that replace the graph's (the paper's) ones.
    """

    name: str
    display_name: str
    defaults: dict[str, Any] = field(default_factory=dict)


#: ``quick``: every stage once at demo size on phantom data, minutes on any cluster.
#: ``paper``: the grid of Akbar et al. (2024) on BraTS, the graph's own defaults.
PIPELINES: dict[str, Pipeline] = {
    "quick": Pipeline("synthmri-quick", "synthmri quick: one generator, one segmenter setting, phantom data", {
        "data_uri": "", "phantom_subjects": 20, "profile": "demo", "image_size": 64, "n_synthetic": 400,
        "generators": ["ddpm"], "archs": ["nnunet"], "augmentation": ["on"], "repeats": 1,
    }),
    "paper": Pipeline("synthmri-paper", "synthmri paper: 5 generators x U-Net/Swin x data x augmentation x 10 repeats"),
}

__all__ = ["PIPELINES", "Pipeline", "build_pipeline"]
