"""The ``quick`` pipeline: every stage once, at demo size, from data to promotion.

One generator, one segmenter per training source (real, synthetic, mixed), one repeat.
Without a data URI it runs on phantom subjects, so it works on any cluster in minutes.
"""

from kfp import dsl

from components import (
    apply_resources,
    evaluate_segmenter,
    evaluate_synthetic,
    generate,
    phantom,
    prepare,
    prepare_from_uri,
    promote,
    report,
    train_generator,
    train_segmenter,
)

#: MLflow service as the project's Kubernetes manifests name it (same namespace as the run).
DEFAULT_MLFLOW_TRACKING_URI = "http://mlflow:5000"

#: Training sources of the segmenters, in report order.
TRAINING_SOURCES = ("real", "synthetic", "mixed")


@dsl.pipeline(
    name="synthmri-quick",
    description="Phantom or BraTS data -> generator -> synthetic slices -> memorization -> "
    "segmenters on real/synthetic/mixed -> 3D evaluation -> promotion gate -> report.",
)
def quick(
    data_uri: str = "",
    phantom_subjects: int = 20,
    profile: str = "demo",
    image_size: int = 64,
    n_synthetic: int = 400,
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_TRACKING_URI,
    generator: str = "ddpm",
    seed: int = 0,
) -> None:
    """Run every stage once and gate the new generator.

    Args:
        data_uri: BraTS location (``s3://bucket/prefix`` or a path mounted into the pods);
            empty runs on phantom subjects instead.
        phantom_subjects: Number of phantom subjects when ``data_uri`` is empty.
        profile: Config profile inside the image (``demo`` or ``paper``) or a YAML path.
        image_size: Slice size in pixels.
        n_synthetic: Number of synthetic slices to sample.
        mlflow_tracking_uri: MLflow tracking and registry server, reachable from the pods.
        generator: Generator family to train, sample and gate (``ddpm``).
        seed: One seed for data split, training and sampling; same seed, same run.
    """
    shared = {"profile": profile, "mlflow_tracking_uri": mlflow_tracking_uri}

    with dsl.If(data_uri == "", name="no-data-uri"):
        phantom_task = apply_resources(phantom(subjects=phantom_subjects, seed=seed, profile=profile))
        prepare_phantom = apply_resources(
            prepare(source=phantom_task.outputs["brats"], image_size=image_size, seed=seed, **shared)
        )
    with dsl.Else(name="data-uri"):
        prepare_brats = apply_resources(
            prepare_from_uri(source_uri=data_uri, image_size=image_size, seed=seed, **shared)
        )
    real = dsl.OneOf(prepare_phantom.outputs["slices"], prepare_brats.outputs["slices"])

    generator_task = apply_resources(train_generator(slices=real, model=generator, seed=seed, **shared))
    generate_task = apply_resources(
        generate(generator=generator_task.outputs["generator"], n_synthetic=n_synthetic, seed=seed, **shared)
    )
    synthetic = generate_task.outputs["synthetic"]
    memorization_task = apply_resources(evaluate_synthetic(real=real, synthetic=synthetic, **shared))

    evaluations = {}
    for source in TRAINING_SOURCES:
        synthetic_input = {} if source == "real" else {"synthetic": synthetic}
        segmenter_task = apply_resources(
            train_segmenter(real=real, train=source, seed=seed, **synthetic_input, **shared)
        )
        segmenter_task.set_display_name(f"train-segmenter-{source}")
        evaluation_task = apply_resources(
            evaluate_segmenter(segmenter=segmenter_task.outputs["segmenter"], real=real, **shared)
        )
        evaluation_task.set_display_name(f"evaluate-segmenter-{source}")
        evaluations[source] = evaluation_task.outputs["evaluation"]

    promote_task = apply_resources(
        promote(
            generator=generator_task.outputs["generator"],
            memorization=memorization_task.outputs["memorization"],
            real_evaluation=evaluations["real"],
            synthetic_evaluation=evaluations["synthetic"],
            model=generator,
            **shared,
        )
    )
    # The gate writes to the model registry: re-run it every time, never serve it from cache.
    promote_task.set_caching_options(False)

    apply_resources(
        report(
            real_evaluation=evaluations["real"],
            synthetic_evaluation=evaluations["synthetic"],
            mixed_evaluation=evaluations["mixed"],
            memorization=memorization_task.outputs["memorization"],
            real=real,
            synthetic=synthetic,
            promotion=promote_task.outputs["decision"],
            **shared,
        )
    )
