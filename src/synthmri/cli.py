"""``synthmri <verb>``: the table of verbs and the handling of their errors.

Each verb lives in its own module under :mod:`synthmri.stages` (its flags, its run, its
resources); DVC and the Kubeflow components call the same verbs. Heavy imports happen inside
the verbs, so ``synthmri --help`` is instant.

Known failures end in one line on stderr, ``synthmri <verb>: error: ...``, never a traceback:
bad input (flags, config), a missing store, a failed promotion, an MLflow look-up that finds
nothing (the message names the ``models:/``/``runs:/`` URI and the tracking URI), a tracking
server that does not answer (named, after a bounded wait) and a full disk (the path, where
the error knows it).
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import signal
import sys
import tempfile
import threading

from synthmri import __version__
from synthmri.config import ConfigError
from synthmri.data.store import StoreError
from synthmri.promote import PromotionError
from synthmri.stages import VERBS
from synthmri.stages.arguments import UsageError, add_common_arguments
from synthmri.threads import apply_thread_limit
from synthmri.tracking import TrackingUnreachableError, connection_reason, redact

#: MLflow error codes of a look-up that found nothing (a missing alias is INVALID_PARAMETER_VALUE).
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
#: What the disk-full errors say.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "no space left on device (disk quota exceeded)"}


def build_parser() -> argparse.ArgumentParser:
    """The ``synthmri`` parser: one subparser per verb of :data:`synthmri.stages.VERBS`."""
    parser = argparse.ArgumentParser(
        prog="synthmri",
        description="Synthetic brain-tumour MRI: prepare BraTS, train generators, vet and use their images.",
    )
    parser.add_argument("--version", action="version", version=f"synthmri {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS.values():
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help)
        add_common_arguments(sub)
        verb.add_arguments(sub)
        sub.set_defaults(handler=verb.main)
    return parser


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error that `exc` is, or that it was raised from or while handling."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _mlflow_exception(exc: BaseException) -> bool:
    """Whether `exc` is an ``MlflowException`` (without importing MLflow when no verb did)."""
    module = sys.modules.get("mlflow.exceptions")
    return module is not None and isinstance(exc, module.MlflowException)


def describe_mlflow_error(exc: Exception, argv: list[str]) -> str:
    """One line for an ``MlflowException``: what failed, against which tracking URI.

    A look-up that found nothing names the MLflow URIs among `argv` (``models:/...``,
    ``runs:/...``); a request that got no answer names the server and why.
    """
    import mlflow

    code = str(getattr(exc, "error_code", "") or "")
    message = " ".join(str(getattr(exc, "message", exc)).split())
    if request := re.match(r"API request to (\S+) failed with (?:timeout )?exception (.*)", message):
        return f"MLflow request to {redact(request.group(1))} failed ({connection_reason(request.group(2))})"
    message = message.removeprefix(f"{code}: ")
    if len(message) > 400:
        message = message[:397] + "..."
    named = [arg for arg in argv if re.match(r"(models|runs|mlflow-artifacts):/", arg)]
    subject = f"{', '.join(named)}: " if named and code in NOT_FOUND_CODES else ""
    return f"{subject}{message} ({code or 'MLflow error'}; tracking URI {redact(mlflow.get_tracking_uri())})"


def describe_disk_full(error: OSError, args: argparse.Namespace) -> str:
    """``<path>: no space left on device``; without a path, where the stage was writing."""
    what = DISK_FULL[error.errno]
    if error.filename:
        return f"{error.filename}: {what}"
    out = getattr(args, "out", None)
    where = f"its output {out} or " if out is not None else ""
    return f"{what} while writing (free space at {where}the temporary directory {tempfile.gettempdir()})"


def describe(exc: Exception, args: argparse.Namespace) -> tuple[int, str] | None:
    """``(exit status, message)`` for a known failure of a verb; None for a bug (its traceback shows).

    2 for bad input (flags, config); 1 for a stage that failed on what it met: a missing
    store or model, a failed gate, MLflow, a tracking server that does not answer, a full disk.
    """
    if (full := _disk_full(exc)) is not None:
        return 1, describe_disk_full(full, args)
    if isinstance(exc, (UsageError, ConfigError)):
        return 2, str(exc)
    if isinstance(exc, (TrackingUnreachableError, StoreError, FileNotFoundError, PromotionError, ValueError)):
        return 1, str(exc)
    if _mlflow_exception(exc):
        return 1, describe_mlflow_error(exc, args.argv)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``synthmri`` command: run one verb, turning known errors into messages.

    Returns:
        The verb's exit status; 2 for bad input (flags, config), 1 for a failed stage (see
        :func:`describe`), 130 when interrupted, 143 on SIGTERM.
    """
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # SIGTERM (Kubernetes stopping a pod, `kill`) unwinds like Ctrl-C: the stage's MLflow run
    # is marked KILLED and its unfinished output removed. Training loops set their own handler
    # while they run, to checkpoint first.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        apply_thread_limit()  # before torch starts its pools: the CPUs this process may use
        return args.handler(args)
    except KeyboardInterrupt as exc:
        print(f"synthmri {args.verb}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        known = describe(exc, args)
        if known is None:
            raise
        logging.getLogger(__name__).debug("synthmri %s failed", args.verb, exc_info=exc)  # --verbose: the trace
        print(f"synthmri {args.verb}: error: {known[1]}", file=sys.stderr)
        return known[0]
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a verb ran outside a training loop."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


if __name__ == "__main__":
    raise SystemExit(main())
