"""Kubeflow pipelines of synthmri, by name; ``synthmri pipeline compile`` writes each one.

Importing this package needs kfp (the ``kfp`` extra); the ``synthmri`` library never does.
"""

from typing import Callable

from pipelines.quick import quick

#: Pipeline name -> pipeline function; compiled to ``<name>.yaml``.
PIPELINES: dict[str, Callable[..., object]] = {
    "quick": quick,
}

__all__ = ["PIPELINES", "quick"]
