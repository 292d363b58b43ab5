"""The MLflow pyfunc flavour of a generator: "give me N images from seed S".

The model is logged "from code": MLflow stores a copy of this file and the artifact
``generator.pt``, nothing pickled. Loading executes the copy, which imports the installed
``synthmri`` package (the project images and the dev venv install it), so a registered
generator loads in any such process with
``mlflow.pyfunc.load_model("models:/synthmri-ddpm@candidate")``.

``predict`` takes a DataFrame (or a dict / list of dicts) with columns ``n`` and ``seed``
and optionally a sampler option the model has: ``steps`` (DDIM steps, diffusion) or
``truncation_psi`` (StyleGANs); each row is one request and the rows' images are
concatenated into one uint8 array [sum(n), 5, H, W]. A request gives the same bytes as
``synthmri generate`` with that seed and count and the batch size recorded at training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from synthmri.generators.checkpoint import LoadedGenerator, load_generator
from synthmri.generators.sample import sample_images

ARTIFACT_KEY = "checkpoint"
MAX_REQUEST = 100_000  # images per row; a guard against a typo exhausting memory


#: Optional request columns -> (sampler option, type); a model accepts those in its sampling options.
OPTION_COLUMNS = {"steps": int, "truncation_psi": float}


def parse_requests(model_input: Any) -> list[tuple[int, int, dict[str, Any]]]:
    """``(n, seed, sampler option overrides)`` per request row.

    Raises:
        ValueError: a missing column or an out-of-range value; the message names it.
    """
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: v if isinstance(v, (list, tuple, np.ndarray)) else [v] for k, v in model_input.items()})
    elif isinstance(model_input, list):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise ValueError(f"generator input must be a DataFrame or dict with columns n, seed; got {type(model_input).__name__}")
    missing = [c for c in ("n", "seed") if c not in model_input.columns]
    if missing:
        raise ValueError(f"generator input lacks column(s) {missing}; needs n and seed "
                         f"(optional: {', '.join(OPTION_COLUMNS)})")
    requests = []
    for row in model_input.to_dict("records"):
        n, seed = int(row["n"]), int(row["seed"])
        if not 1 <= n <= MAX_REQUEST:
            raise ValueError(f"generator input n must be in 1..{MAX_REQUEST}, got {n}")
        options = {}
        for column, kind in OPTION_COLUMNS.items():
            value = row.get(column)
            if value is not None and not pd.isna(value):
                options[column] = kind(value)
        if options.get("steps", 1) < 1:
            raise ValueError(f"generator input steps must be positive, got {options['steps']}")
        if not 0.0 <= options.get("truncation_psi", 1.0) <= 2.0:
            raise ValueError(f"generator input truncation_psi must be in [0, 2], got {options['truncation_psi']}")
        requests.append((n, seed, options))
    return requests


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Samples images from the ``generator.pt`` artifact; see the module docstring."""

    def load_context(self, context: Any) -> None:
        """Load the checkpoint (``weights_only=True``) and rebuild the network."""
        self._generator: LoadedGenerator = load_generator(Path(context.artifacts[ARTIFACT_KEY]))

    # A DataFrame hint: MLflow validates against the signature instead of inferring from hints.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """uint8 [sum(n), 5, H, W] for the requested rows (see :func:`parse_requests`).

        Raises:
            ValueError: a row sets an option this model does not have (``steps`` for a GAN,
                ``truncation_psi`` for the diffusion model).
        """
        outputs = []
        for n, seed, overrides in parse_requests(model_input):
            options = dict(self._generator.sampling)
            foreign = sorted(set(overrides) - set(options))
            if foreign:
                raise ValueError(f"generator input column(s) {foreign} do not apply to a {self._generator.name} "
                                 f"model (its options: {sorted(options) or 'none'})")
            options.update(overrides)
            outputs.append(sample_images(self._generator, n, seed, options=options))
        return np.concatenate(outputs)


def signature(image_size: int, channels: int = 5) -> ModelSignature:
    """Columns n, seed (long) and optional steps / truncation_psi in; uint8 [-1, 5, H, W] out."""
    inputs = Schema([ColSpec("long", "n"), ColSpec("long", "seed"), ColSpec("long", "steps", required=False),
                     ColSpec("double", "truncation_psi", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, channels, image_size, image_size))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_generator_model(checkpoint: Path, image_size: int, name: str = "generator") -> Any:
    """Log a pyfunc model holding `checkpoint` to the active MLflow run.

    Returns:
        The ``mlflow.models.model.ModelInfo`` (its ``model_uri`` can be registered).
    """
    import monai
    import torch

    torch_version = torch.__version__.split("+")[0]  # drop local tags such as +cpu
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=Path(__file__),  # models from code: this file, executed on load
        artifacts={ARTIFACT_KEY: str(checkpoint)},
        signature=signature(image_size),
        input_example=pd.DataFrame({"n": [1], "seed": [0]}),
        # Explicit requirements skip MLflow's slow inference; synthmri itself comes from the image.
        pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch_version}", f"monai=={monai.__version__}",
                          "numpy", "pandas", "pillow"],
    )


if __name__ != "synthmri.generators.pyfunc":
    # MLflow executes a copy of this file under another module name to log and to load the
    # model ("models from code"); importing the package module must not set it.
    mlflow.models.set_model(GeneratorModel())
