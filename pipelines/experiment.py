"""The synthmri pipeline: data, real baseline, generators, their segmenter grids, gate, report.

One graph, compiled twice (:mod:`pipelines`): ``paper`` with the defaults below (the grid of
Akbar et al. 2024 at full size) and ``quick`` with small ones (one generator, one segmenter
setting, phantom data). Reading the graph top to bottom:

1. ``prepare`` slices BraTS (or phantom subjects) once.
2. The real-only baseline: a ``grid`` of architecture x augmentation x repeat, fanned out
   with ``dsl.ParallelFor`` and gathered into one artifact. A separate real-only
   segmenter (the profile's setting) gives ``evaluate-synthetic`` its in-domain features.
3. Per generator (``dsl.ParallelFor``): train, sample, judge (memorization, FID, in-domain
   metrics), write the shareable store, then fan out its own grid of segmenters trained on
   synthetic data without and with real data, gather them, and run the promotion gate.
4. ``report`` reads every gathered evaluation, memorization result and gate decision.

``parallelism`` caps each fan-out loop; loops nest (segmenters inside generators), so at
most ``parallelism**2`` segmenters train at once.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter types at definition.
from typing import Any, Callable, Optional

from kfp import dsl

from components import (
    Cluster,
    evaluate_segmenter,
    evaluate_synthetic,
    gather,
    generate,
    grid,
    place,
    prepare,
    promote,
    report,
    share,
    train_generator,
    train_segmenter,
    train_segmenter_real,
)

#: MLflow service as the project's Kubernetes manifests name it (same namespace as the run).
DEFAULT_MLFLOW_TRACKING_URI = "http://mlflow:5000"

#: The GPU node pool of k8s/overlays/gpu-node-pool: its label and its taint.
DEFAULT_GPU_NODE_SELECTOR = {"synthmri.io/node-pool": "gpu"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

#: Secrets of k8s/secrets (created by the platform engineer, never committed).
DEFAULT_S3_SECRET = "synthmri-s3"
DEFAULT_MLFLOW_SECRET = "synthmri-mlflow-auth"

#: Concurrent tasks per fan-out loop unless ``synthmri pipeline compile --parallelism`` says otherwise.
DEFAULT_PARALLELISM = 8

#: Generator families of the paper, in its order.
PAPER_GENERATORS = ["progan", "stylegan1", "stylegan2", "stylegan3", "ddpm"]


def build_pipeline(parallelism: int = DEFAULT_PARALLELISM, kubernetes: bool = True) -> Callable[..., None]:
    """The pipeline function, with the paper's defaults.

    Args:
        parallelism: At most this many tasks at once per fan-out loop.
        kubernetes: Place stages on the cluster: GPU node pool, Secrets, endpoints. False
            sets requests only (``run-local``, where none of that exists).
    """

    @dsl.pipeline(
        name="synthmri",
        description="Akbar et al. 2024 as a pipeline: generators x segmentation architectures x {synthetic, "
        "synthetic+real} x {aug, no aug} x repeats, real-only baseline, memorization and quality, promotion "
        "gate, report.",
    )
    def synthmri(
        data_uri: str = "s3://synthmri-data/brats2021/",
        phantom_subjects: int = 0,
        profile: str = "paper",
        image_size: int = 256,
        n_synthetic: int = 100000,
        generators: list = PAPER_GENERATORS,
        archs: list = ["unet", "swin"],
        segmenter_data: list = ["synthetic", "mixed"],
        augmentation: list = ["on", "off"],
        repeats: int = 10,
        seed: int = 0,
        mlflow_tracking_uri: str = DEFAULT_MLFLOW_TRACKING_URI,
        gpu_type: str = "nvidia.com/gpu",
        gpu_count: str = "1",
        gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
        s3_secret: str = DEFAULT_S3_SECRET,
        mlflow_secret: str = DEFAULT_MLFLOW_SECRET,
    ) -> None:
        """Train and judge generators, train segmenters on their images, and gate each generator.

        Args:
            data_uri: BraTS location (``s3://bucket/prefix`` or a path mounted into the
                pods); empty runs on ``phantom_subjects`` phantom subjects instead.
            phantom_subjects: Number of phantom subjects when ``data_uri`` is empty.
            profile: Config profile inside the image (``demo``, ``paper``) or a YAML path.
            image_size: Slice size in pixels (paper: 256).
            n_synthetic: Synthetic slices per generator (paper: 100,000).
            generators: Generator families, one loop iteration each: ``progan``,
                ``stylegan1``, ``stylegan2``, ``stylegan3``, ``ddpm``.
            archs: Segmentation architectures (``unet``, ``swin``: the paper's; ``nnunet``,
                ``swinunetr``: cheaper ones of this product); must include the
                profile's, which the gate and the in-domain features use.
            segmenter_data: ``synthetic`` (without real slices) and/or ``mixed`` (with them,
                each source drawn half the time).
            augmentation: ``on`` and/or ``off``; the gate needs ``on``.
            repeats: Trainings per segmenter setting, seeded ``seed``, ``seed+1``, ...
            seed: Seed of the data split, the generators, sampling and the first repeat.
            mlflow_tracking_uri: MLflow tracking and registry server, reachable from the pods.
            gpu_type: Accelerator resource of the GPU node pool.
            gpu_count: GPUs for generator training, a whole number given as a string
                (``"2"``; above 1: torchrun, one process per GPU). A string because the
                backend reads a pod's GPU limit from a parameter as a string only.
            gpu_node_selector: Node labels of the GPU node pool.
            gpu_tolerations: Tolerations for the GPU node pool's taints.
            s3_secret: Secret with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` for S3 data.
            mlflow_secret: Secret with MLflow credentials, if the server requires them.
        """
        cluster = Cluster(gpu_type=gpu_type, gpu_count=gpu_count, gpu_node_selector=gpu_node_selector,
                          gpu_tolerations=gpu_tolerations, s3_secret=s3_secret, mlflow_secret=mlflow_secret)
        experiment(
            data_uri=data_uri, phantom_subjects=phantom_subjects, profile=profile, image_size=image_size,
            n_synthetic=n_synthetic, generators=generators, archs=archs, segmenter_data=segmenter_data,
            augmentation=augmentation, repeats=repeats, seed=seed, mlflow_tracking_uri=mlflow_tracking_uri,
            cluster=cluster if kubernetes else None, parallelism=parallelism,
        )

    return synthmri


def experiment(
    *,
    data_uri: Any,
    phantom_subjects: Any,
    profile: Any,
    image_size: Any,
    n_synthetic: Any,
    generators: Any,
    archs: Any,
    segmenter_data: Any,
    augmentation: Any,
    repeats: Any,
    seed: Any,
    mlflow_tracking_uri: Any,
    cluster: Optional[Cluster],
    parallelism: int,
) -> None:
    """Add every task of one experiment to the pipeline being defined.

    Arguments are the pipeline's parameters (see :func:`build_pipeline`), except
    ``cluster`` (where tasks run, from parameters; None: requests only) and ``parallelism`` (fixed at compile
    time: Kubeflow takes a loop's parallelism as a constant).
    """
    tracked = {"profile": profile, "mlflow_tracking_uri": mlflow_tracking_uri}
    real = place(prepare(data_uri=data_uri, phantom_subjects=phantom_subjects, image_size=image_size, seed=seed,
                         **tracked), cluster).outputs["slices"]

    # Real-only baseline: every setting of the grid trained on real slices, the reference of relative Dice.
    baseline_grid = place(grid(archs=archs, train=["real"], augment=augmentation, repeats=repeats, seed=seed,
                               profile=profile), cluster)
    baseline_grid.set_display_name("grid-real-baseline")
    with dsl.ParallelFor(baseline_grid.outputs["cells"], parallelism=parallelism, name="real-baseline") as cell:
        baseline = place(train_segmenter_real(real=real, arch=cell.arch, augment=cell.augment, seed=cell.seed,
                                              repeat=cell.repeat, **tracked), cluster)
        baseline_evaluation = place(evaluate_segmenter(segmenter=baseline.outputs["segmenter"], real=real, **tracked),
                                    cluster)
    real_evaluations = place(gather(evaluations=dsl.Collected(baseline_evaluation.outputs["evaluation"]),
                                    profile=profile), cluster)
    real_evaluations.set_display_name("gather-real-baseline")

    # A network that has seen real MR slices: its features give evaluate-synthetic's in-domain metrics.
    # (repeat given although optional: kfp.local cannot pass an optional integer left out.)
    features = place(train_segmenter_real(real=real, seed=seed, repeat=0, **tracked), cluster)
    features.set_display_name("train-segmenter-features")

    synthetic_grid = place(grid(archs=archs, train=segmenter_data, augment=augmentation, repeats=repeats, seed=seed,
                                profile=profile), cluster)
    synthetic_grid.set_display_name("grid-synthetic")
    with dsl.ParallelFor(generators, parallelism=parallelism, name="generators") as generator:
        trained = place(train_generator(slices=real, model=generator, seed=seed,
                                        gpu_count=cluster.gpu_count if cluster else "1", **tracked), cluster)
        synthetic = place(generate(generator=trained.outputs["generator"], n_synthetic=n_synthetic, seed=seed,
                                   **tracked), cluster).outputs["synthetic"]
        judged = place(evaluate_synthetic(real=real, synthetic=synthetic, segmenter=features.outputs["segmenter"],
                                          **tracked), cluster)
        place(share(synthetic=synthetic, real=real, memorization=judged.outputs["evaluation"], **tracked), cluster)

        with dsl.ParallelFor(synthetic_grid.outputs["cells"], parallelism=parallelism, name="segmenters") as cell:
            segmenter = place(train_segmenter(real=real, synthetic=synthetic, train=cell.train, arch=cell.arch,
                                              augment=cell.augment, seed=cell.seed, repeat=cell.repeat, **tracked),
                              cluster)
            evaluation = place(evaluate_segmenter(segmenter=segmenter.outputs["segmenter"], real=real, **tracked),
                               cluster)
        generator_evaluations = place(gather(evaluations=dsl.Collected(evaluation.outputs["evaluation"]),
                                             profile=profile), cluster)
        gate = place(promote(generator=trained.outputs["generator"], memorization=judged.outputs["evaluation"],
                             real_evaluations=real_evaluations.outputs["gathered"],
                             synthetic_evaluations=generator_evaluations.outputs["gathered"], model=generator,
                             **tracked), cluster)
        # The gate writes to the model registry: re-run it every time, never serve it from cache.
        gate.set_caching_options(False)

    place(report(
        real_evaluations=real_evaluations.outputs["gathered"],
        generator_evaluations=dsl.Collected(generator_evaluations.outputs["gathered"]),
        memorization=dsl.Collected(judged.outputs["evaluation"]),
        promotions=dsl.Collected(gate.outputs["decision"]),
        real=real,
        synthetic=dsl.Collected(synthetic),
        **tracked,
    ), cluster)
