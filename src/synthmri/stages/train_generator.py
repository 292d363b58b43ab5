"""``synthmri train-generator``: train a generator on the training slices and register it in MLflow.

The stage around :mod:`synthmri.generators.train`: rank 0 opens the MLflow run (tags, the
real store as a dataset, the network's size as params) and the progress monitor, hands
them to the training loop as its reporter, logs the final grid, and registers the
generator as ``synthmri-<model>`` with alias ``candidate``; ``registration.json`` in the
output directory records the registry name, version, run id, model URI and the sha256 of
``generator.pt`` (also a tag of the version: what ``promote`` binds evidence to). A run that
SIGTERM stopped is marked KILLED. ``completion.json`` (:mod:`synthmri.stages.outputs`),
written last, names the store trained on, the config and the seed; ``--resume`` of a run
that already finished with them does nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthmri.config import GENERATOR_MODELS, Config
from synthmri.stages.arguments import UsageError, add_overwrite_argument, at_least, resolve_config
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.generators.train import GeneratorTrainResult, GeneratorTraining
    from synthmri.stages.outputs import StageOutput

log = logging.getLogger(__name__)

STAGE = "train-generator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri train-generator``."""
    parser.add_argument("--model", choices=GENERATOR_MODELS,
                        help="generator family (default: the profile's generator.model)")
    parser.add_argument("--data", type=Path, required=True, help="real slice store")
    parser.add_argument("--out", type=Path, required=True, help="directory for checkpoints and samples")
    parser.add_argument("--iterations", type=int, help="ddpm: training iterations (overrides the profile)")
    parser.add_argument("--kimg", type=float, help="GANs: thousands of real images to train on (overrides the profile)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--no-register", action="store_true", help="do not register the model in MLflow")
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="data-parallel processes (one per GPU); above 1 the command re-runs itself under torchrun")
    add_overwrite_argument(parser)


def under_torchrun(argv: list[str], processes: int) -> int:
    """Run ``synthmri <argv>`` as `processes` data-parallel processes under torchrun."""
    import subprocess

    forwarded, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc-per-node":
            skip = True
        elif not item.startswith("--nproc-per-node="):
            forwarded.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "synthmri", *forwarded]
    log.info("%d processes under torchrun: %s", processes, " ".join(command))
    return subprocess.run(command, check=False).returncode


def main(args: argparse.Namespace) -> int:
    """Train (under torchrun when --nproc-per-node > 1) and print the result."""
    at_least(args.nproc_per_node, 1, "--nproc-per-node")
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return under_torchrun(args.argv, args.nproc_per_node)

    model = args.model or resolve_config(args).generator.model
    overrides: dict[str, Any] = {"generator.model": model, "seed": args.seed}
    # A GAN's length is in thousands of images shown, the diffusion model's in iterations.
    if args.iterations is not None:
        if model != "ddpm":
            raise UsageError(f"--iterations sets the diffusion model's steps; {model} trains for --kimg "
                             "thousand images")
        overrides["generator.ddpm.iterations"] = args.iterations
    if args.kimg is not None:
        if model == "ddpm":
            raise UsageError("--kimg sets a GAN's training length; the diffusion model takes --iterations")
        overrides[f"generator.{model}.kimg"] = args.kimg
    cfg = resolve_config(args, **overrides)
    result = run(args.data, args.out, cfg, resume=args.resume, register=not args.no_register,
                 overwrite=args.overwrite)
    print(result.summary())
    return 0


def run(data: Path, out: Path, cfg: Config, *, resume: bool = False, register: bool = True,
        overwrite: bool = False) -> "GeneratorTrainResult":
    """Train ``cfg.generator.model`` on the non-test slices of `data`, tracked, and register it.

    Under ``torchrun`` every process trains; rank 0 alone tracks, writes and registers.

    Args:
        data: Real slice store.
        out: Output directory: ``checkpoint.pt``, ``samples.png``, ``generator.pt``,
            ``registration.json``, ``completion.json``.
        cfg: Resolved config (see :func:`synthmri.generators.train.open_training`).
        resume: Continue from ``out/checkpoint.pt`` if it exists; a run that already finished
            with the same store, config and seed is left as it is (nothing is trained or
            registered again).
        register: Log the pyfunc model and register it as ``synthmri-<model>`` with alias
            ``candidate``.
        overwrite: Train into `out` even if it holds another kind of output.

    Returns:
        The result (on every process; only rank 0's names a run and files).

    Raises:
        ConfigError: Unknown model, bad settings, or a checkpoint of other network settings.
        StoreError: No train or val slices, a corrupt store, or a checkpoint trained on other data.
        OutputError: `out` holds another kind of output.
        TrainingInterrupted: SIGTERM arrived; the state was checkpointed and the run marked KILLED.
    """
    from synthmri.generators.train import open_training
    from synthmri.stages.outputs import other_files, stage_output

    if resume and (done := finished_run(data, out, cfg)) is not None:
        log.info("%s already finished training on these slices with this config and seed (%s): nothing to do",
                 out, done.registered_name or "not registered")
        return done
    if int(os.environ.get("RANK", "0")) != 0:
        with open_training(data, out, cfg, resume=resume) as training:
            return training.fit()
    with stage_output(out, STAGE, cfg, replace=False, overwrite=overwrite, accept=other_files) as output, \
            open_training(data, out, cfg, resume=resume) as training:
        return _train_main(training, output, cfg, register)


def _train_main(training: "GeneratorTraining", output: "StageOutput", cfg: Config,
                register: bool) -> "GeneratorTrainResult":
    """Rank 0's part: the tracked run, registration, ``registration.json`` and the completion record."""
    import dataclasses

    from synthmri.generators.sample import REGISTRATION_NAME
    from synthmri.io import atomic_write_json, sha256_file
    from synthmri.stages.context import stage_context

    with stage_context(STAGE, cfg, experiment="generators", run_name=f"{training.name}-s{cfg.seed}",
                       datasets={"real": training.store}, tags=training.tags, unit="iterations",
                       total=training.iterations, instance=training.name, output=output) as context:
        context.log_params(training.params)
        # SIGTERM raises TrainingInterrupted (a KeyboardInterrupt): the context marks the run KILLED.
        result = training.fit(context)
        context.log_artifact(training.grid_path)
        checkpoint_sha256 = sha256_file(result.generator)
        record: dict[str, Any] = {"name": None, "version": None, "run_id": result.run_id, "model_uri": None,
                                  "checkpoint_sha256": checkpoint_sha256}
        if register:
            record = _register(cfg, training.name, result.generator, training.store.image_size,
                               training.store.content_hash, result.run_id, checkpoint_sha256)
        atomic_write_json(output.path / REGISTRATION_NAME, record)
    result = dataclasses.replace(result, registered_name=record["name"], version=record["version"])
    output.details["registration"] = record
    output.details["result"] = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
    return result


def finished_run(data: Path, out: Path, cfg: Config) -> "GeneratorTrainResult | None":
    """The result of a run at `out` that finished on the store `data` with this config and seed, else None."""
    from synthmri.data.store import SliceStore
    from synthmri.generators.train import GeneratorTrainResult
    from synthmri.records import finished_record, store_provenance

    record = finished_record(out, STAGE, cfg, {"real": store_provenance(SliceStore(Path(data)))})
    fields = (record or {}).get("result")
    if not isinstance(fields, dict) or not fields.get("generator") or not Path(fields["generator"]).is_file():
        return None
    try:
        return GeneratorTrainResult(**{**fields, "checkpoint": Path(fields["checkpoint"]),
                                       "generator": Path(fields["generator"])})
    except TypeError:
        return None  # a record of another version of this result: train again


def _register(cfg: Config, model: str, generator_path: Path, image_size: int, data_hash: str,
              run_id: str, checkpoint_sha256: str) -> dict[str, Any]:
    """Log the pyfunc to the active run, register it, alias it ``candidate`` and tag it.

    Returns:
        The ``registration.json`` record: name, version, run id, model URI and the checkpoint's sha256.
    """
    import mlflow
    from mlflow import MlflowClient

    from synthmri.generators.pyfunc import log_generator_model
    from synthmri.generators.train import CANDIDATE_ALIAS
    from synthmri.records import CHECKPOINT_TAG
    from synthmri.tracking import registered_model_name

    info = log_generator_model(generator_path, image_size)
    name = registered_model_name(cfg.tracking, model)
    version = mlflow.register_model(info.model_uri, name)
    client = MlflowClient()
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
    for key, value in {"synthmri.data.real": data_hash, "synthmri.run_id": run_id,
                       "synthmri.profile": cfg.profile, "synthmri.seed": str(cfg.seed),
                       CHECKPOINT_TAG: checkpoint_sha256}.items():
        client.set_model_version_tag(name, version.version, key, value)
    log.info("registered %s version %s with alias %s", name, version.version, CANDIDATE_ALIAS)
    return {"name": name, "version": int(version.version), "run_id": run_id,
            "model_uri": f"models:/{name}/{version.version}", "checkpoint_sha256": checkpoint_sha256}


VERB = Verb(name="train-generator", help="Train a generator on the training slices and register it in MLflow.",
            add_arguments=add_arguments, main=main,
            resources=Resources(cpu="4", memory="16Gi", gpu=True, multi_gpu=True))
