"""What a verb is: its name, its flags, its entry point and what its container needs.

Every stage module ends with one :class:`Verb`; :data:`synthmri.stages.VERBS` lists them.
The command line (:mod:`synthmri.cli`), the Kubeflow components (``components/``), the
DVC pipeline (``dvc.yaml``) and the README's command table are all checked against it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Resources:
    """What one stage's container needs on a cluster (read by ``components/resources.py``).

    Attributes:
        cpu: CPU request (a Kubernetes quantity). The stage sizes its threads to it.
        memory: Memory request, also the limit: a stage that outgrows it fails clearly.
        gpu: The stage runs on the GPU node pool.
        multi_gpu: The stage spreads over the pipeline's GPU count (torchrun); other GPU
            stages take one GPU.
        s3: The stage reads S3 itself (BraTS from ``s3://``, Inception weights) and gets the
            S3 credentials.
        mlflow: The stage talks to MLflow (tracking or registry).
    """

    cpu: str
    memory: str
    gpu: bool = False
    multi_gpu: bool = False
    s3: bool = False
    mlflow: bool = True


@dataclass(frozen=True)
class Verb:
    """One ``synthmri <verb>``.

    Attributes:
        name: The verb as typed, e.g. ``train-segmenter``.
        help: One line for ``synthmri --help`` and the README's table.
        add_arguments: Registers the verb's flags on its subparser (the one source of them).
        main: Runs the verb from parsed flags; returns the exit status.
        resources: The container's needs when the verb is a pipeline component; None for
            verbs that only run on a workstation (``phantom``, ``reader-study``...).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]
    resources: Resources | None = None
