"""``synthmri generate``: sample a synthetic slice store from a generator.

The stage around :mod:`synthmri.generators.sample`: it loads the generator (a checkpoint or
an MLflow URI), opens the progress monitor (one Pushgateway group per generator, so
parallel pipeline tasks do not overwrite each other) and writes the store.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthmri.config import Config
from synthmri.stages.arguments import add_overwrite_argument, config_flag, resolve_config
from synthmri.stages.base import Resources, Verb

if TYPE_CHECKING:
    from synthmri.stages.outputs import Kind


@dataclass(frozen=True)
class GenerateResult:
    """What ``generate`` wrote.

    Attributes:
        out: The synthetic slice store.
        manifest: Its manifest.
    """

    out: Path
    manifest: dict[str, Any]

    @property
    def slices(self) -> int:
        """Slices in the store."""
        return int(self.manifest["counts"]["slices"])

    def summary(self) -> str:
        """One line for the command line."""
        return f"wrote {self.slices} synthetic slices to {self.out}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``synthmri generate``."""
    parser.add_argument("--generator", required=True,
                        help="models:/synthmri-ddpm@candidate, runs:/..., or a checkpoint path")
    config_flag(parser, "--n", key="generator.n_synthetic", type=int,
                help="number of synthetic slices (profile: generator.n_synthetic)")
    parser.add_argument("--out", type=Path, required=True, help="synthetic slice store directory")
    config_flag(parser, "--seed", key="seed", type=int, help="sampling seed; same seed, same bytes on CPU")
    add_overwrite_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Sample the store."""
    print(run(args.generator, args.out, resolve_config(args), overwrite=args.overwrite).summary())
    return 0


def run(generator: str, out: Path, cfg: Config, overwrite: bool = False) -> GenerateResult:
    """Sample ``cfg.generator.n_synthetic`` slices from `generator` into the store at `out`.

    Args:
        generator: A ``generator.pt`` path (or the directory holding it) or an MLflow URI
            such as ``models:/synthmri-ddpm@candidate``.
        out: Store directory.
        cfg: Resolved config (see :func:`synthmri.generators.sample.write_synthetic_store`).
        overwrite: Replace what `out` holds even if it is not this generator's store (a real
            store, another generator's); by default that is refused, and nothing of an
            overwritten output is left beside the new store.

    Raises:
        FileNotFoundError: The generator cannot be found.
        ConfigError: Non-positive counts (a ValueError).
        ValueError: An unusable checkpoint.
        OutputError: `out` holds another kind of output.
    """
    from synthmri.generators.sample import open_generator, sampling_counts, write_synthetic_store
    from synthmri.stages.context import stage_context
    from synthmri.stages.outputs import refuse_foreign

    n, _ = sampling_counts(cfg)
    loaded, registry = open_generator(generator, cfg)

    def same_generator(kind: "Kind") -> bool:
        # This generator's store (finished or resumable), never a real or another generator's.
        return kind.what == "partial-store" or (
            kind.what == "store" and (kind.generator or {}).get("checkpoint_sha256") == loaded.sha256)

    refuse_foreign(Path(out), "generate", same_generator, overwrite)
    with stage_context("generate", cfg, unit="images", total=n, instance=loaded.name) as context:
        manifest = write_synthetic_store(loaded, out, cfg, uri=generator, registry=registry,
                                         progress=context.monitor.progress)
    return GenerateResult(Path(out), manifest)


VERB = Verb(name="generate", help="Sample a synthetic slice store from a generator.", add_arguments=add_arguments,
            main=main, resources=Resources(cpu="4", memory="8Gi", gpu=True))
