"""Stage outputs that are complete or absent, and the record that says which.

Every stage that writes a directory goes through :func:`stage_output`, in one of two ways:

- *replace* (evaluations, share, report): the stage writes into a fresh hidden sibling,
  ``.<name>.partial``, which is renamed into place when the stage finishes. A killed or
  failed stage leaves the old complete output or nothing, never a mix of old and new files.
- *in place* (training, which resumes from its checkpoint): the old completion record is
  removed before anything else is written and the new one is written last.

Both ways end with ``completion.json``, the completion record: the verb, every input by
content hash (with the generator that made each synthetic store), the config's hash, the
seed and the MLflow runs. "Already finished" is decided from that record alone, and a
consumer refuses an output without one (:func:`require_record`).

While a stage runs, its output holds ``.synthmri-running.json`` naming the process and the
MLflow runs it opened. An attempt that finds this marker from a killed process marks those
runs KILLED (a run killed with -9 would otherwise stay RUNNING for ever), and refuses to start
while the process that wrote it is still alive.

No stage writes over another kind of output (a slice store, another verb's output, a folder
of unrelated files) unless the user passes ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from synthmri.io import atomic_write_json, fsync_directory
from synthmri.records import (RECORD_NAME, RECORD_SCHEMA, RUNNING_NAME, OutputError, config_sha256, read_json_file,
                              read_record)

if TYPE_CHECKING:
    from synthmri.config import Config
    from synthmri.data.store import SliceStore

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"  # a slice store's completion marker (docs/design.md, "The slice store")


@dataclass(frozen=True)
class Kind:
    """What an existing output directory holds.

    Attributes:
        what: ``store``, ``partial-store``, ``record``, ``running`` or ``other``.
        verb: The verb of a record or running marker.
        generator: A store's ``generator`` manifest entry (None: a real store).
    """

    what: str
    verb: str | None = None
    generator: dict[str, Any] | None = None

    def describe(self) -> str:
        """The kind in words, for messages."""
        if self.what == "store":
            if not self.generator:
                return "a real slice store"
            return f"a synthetic slice store of generator {self.generator.get('name')!r}"
        if self.what == "partial-store":
            return "an unfinished slice store"
        if self.what == "record":
            return f"a finished {self.verb} output"
        if self.what == "running":
            return f"an unfinished {self.verb} output"
        return "files that synthmri did not write"


def kind_of(directory: Path) -> Kind | None:
    """What `directory` holds; None when it is absent or empty."""
    directory = Path(directory)
    if not directory.is_dir() or not any(directory.iterdir()):
        return None
    record = read_record(directory)
    if record is not None:
        return Kind("record", verb=record["verb"])
    if (directory / MANIFEST_NAME).is_file():
        manifest = read_json_file(directory / MANIFEST_NAME)
        generator = manifest.get("generator") if isinstance(manifest, dict) else None
        return Kind("store", generator=generator if isinstance(generator, dict) else None)
    if (directory / RUNNING_NAME).is_file():
        marker = read_json_file(directory / RUNNING_NAME)
        return Kind("running", verb=str(marker.get("verb")) if isinstance(marker, dict) else None)
    if any((directory / name).exists() for name in (".partial", "shards", "index.csv")):
        return Kind("partial-store")  # a store whose writer stopped before its manifest
    return Kind("other")


def refuse_foreign(out: Path, verb: str, accept: Callable[[Kind], bool], overwrite: bool) -> None:
    """Stop `verb` from writing over another kind of output at `out`, unless `overwrite`.

    With `overwrite`, a foreign output is removed first, so nothing of it is left beside the
    new one.

    Raises:
        OutputError: `out` holds an output `accept` rejects (names it and the way out).
    """
    kind = kind_of(out)
    if kind is None or accept(kind):
        return
    if not overwrite:
        raise OutputError(f"{out} holds {kind.describe()}; {verb} will not write over it "
                          "(choose another --out, or pass --overwrite to replace it)")
    log.warning("--overwrite: removing %s (%s) before %s writes there", out, kind.describe(), verb)
    if out.is_symlink() or out.is_file():
        out.unlink()
    else:
        shutil.rmtree(out)


def other_files(kind: Kind) -> bool:
    """Accept a folder of the user's files: a training stage only adds its own files to it."""
    return kind.what == "other"


def own_output(verb: str) -> Callable[[Kind], bool]:
    """Accept an earlier output of `verb` itself (finished or not), nothing else."""
    return lambda kind: kind.what in ("record", "running") and kind.verb == verb


@dataclass
class StageOutput:
    """An output directory being written; :func:`stage_output` yields it.

    Attributes:
        path: Where the stage writes now (the hidden sibling while a replace output is open).
        final: Where the output lives once finished.
        verb: The stage's verb.
        inputs: Role -> provenance of what the stage read (recorded on completion).
        details: More fields of the completion record (the seed, the generator evaluated, ...).
        run_ids: MLflow runs the stage opened.
    """

    path: Path
    final: Path
    verb: str
    inputs: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)

    def add_store(self, role: str, store: "SliceStore") -> None:
        """Record that the stage read `store` as `role`."""
        from synthmri.records import store_provenance

        self.inputs[role] = store_provenance(store)

    def add_run(self, run_id: str) -> None:
        """Record an MLflow run the stage opened (in the running marker at once)."""
        self.run_ids.append(run_id)
        self._write_marker()

    def _write_marker(self) -> None:
        atomic_write_json(self.path / RUNNING_NAME, {"verb": self.verb, "pid": os.getpid(), "host": socket.gethostname(),
                                                     "run_ids": self.run_ids})


def _alive(marker: dict[str, Any]) -> bool:
    """Whether the process that wrote a running marker still runs (on this host)."""
    if marker.get("host") != socket.gethostname() or not isinstance(marker.get("pid"), int):
        return False
    if marker["pid"] == os.getpid():
        return False
    try:
        os.kill(marker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retire_marker(directory: Path, cfg: "Config") -> None:
    """Deal with a running marker an earlier attempt left: refuse if it still runs, else mark its runs KILLED."""
    file = directory / RUNNING_NAME
    if not file.is_file():
        return
    marker = read_json_file(file)
    marker = marker if isinstance(marker, dict) else {}
    if _alive(marker):
        raise OutputError(f"{directory}: {marker.get('verb')} (process {marker.get('pid')}) is still writing here; "
                          "wait for it or stop it first")
    run_ids = [r for r in marker.get("run_ids") or [] if isinstance(r, str)]
    if run_ids:
        for run_id in mark_runs_killed(cfg, run_ids):
            log.warning("MLflow run %s of an earlier %s attempt that was killed is now marked KILLED",
                        run_id, marker.get("verb"))
    file.unlink(missing_ok=True)


def mark_runs_killed(cfg: "Config", run_ids: list[str]) -> list[str]:
    """End those of `run_ids` that MLflow still shows RUNNING as KILLED; returns them.

    A tracking server that cannot be asked is logged and skipped: the runs stay as they are,
    and the stage goes on.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from synthmri.tracking import configure

    ended: list[str] = []
    try:
        configure(cfg.tracking)
        client = MlflowClient()
        for run_id in run_ids:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
                ended.append(run_id)
    except (MlflowException, ConnectionError) as exc:
        log.warning("could not mark the MLflow runs of a killed attempt (%s) KILLED: %s", ", ".join(run_ids), exc)
    return ended


def _swap_into_place(work: Path, out: Path) -> None:
    """Rename the finished `work` directory to `out`, replacing an old `out`."""
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(work, out)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
            raise
        # `out` is a mount point (a volume a pipeline launcher mounted): empty it and move the
        # files in, the completion record last, so `out` is never taken for finished too early.
        out.mkdir(parents=True, exist_ok=True)
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        for child in sorted(work.iterdir(), key=lambda path: path.name == RECORD_NAME):
            shutil.move(str(child), str(out / child.name))
        shutil.rmtree(work)
    fsync_directory(out.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def stage_output(out: Path, verb: str, cfg: "Config", *, replace: bool, overwrite: bool = False,
                 accept: Callable[[Kind], bool] | None = None) -> Iterator[StageOutput]:
    """Write one stage's output directory so that it is complete or absent.

    Args:
        out: The output directory.
        verb: The stage's verb (named in the record, compared on later runs).
        cfg: The resolved config (its hash and seed go into the record; its tracking settings
            reach the runs a killed attempt left).
        replace: True: write into a fresh sibling renamed into place at the end; False: write
            in `out` itself (a stage that resumes).
        overwrite: Replace an output of another kind at `out` instead of refusing.
        accept: What else may already be at `out` (default: only this verb's own output).

    Yields:
        The :class:`StageOutput`; write into its ``path``, and add to its ``inputs`` and ``details``.

    Raises:
        OutputError: `out` holds another kind of output (without `overwrite`), or another
            process is writing it.
    """
    out = Path(out)
    own = own_output(verb)
    refuse_foreign(out, verb, (lambda kind: own(kind) or accept(kind)) if accept else own, overwrite)
    if replace:
        work = out.parent / f".{out.name}.partial"
        if work.is_dir():
            _retire_marker(work, cfg)
            shutil.rmtree(work)
        work.mkdir(parents=True)
    else:
        work = out
        work.mkdir(parents=True, exist_ok=True)
        _retire_marker(work, cfg)
        (work / RECORD_NAME).unlink(missing_ok=True)  # from here on the old result is not "finished"
    output = StageOutput(path=work, final=out, verb=verb)
    output._write_marker()
    try:
        yield output
    except BaseException:
        if replace:
            shutil.rmtree(work, ignore_errors=True)
        else:
            (work / RUNNING_NAME).unlink(missing_ok=True)
        raise
    record = {
        "schema": RECORD_SCHEMA, "verb": verb,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": output.inputs, "config_sha256": config_sha256(cfg), "seed": int(cfg.seed),
        "run_ids": output.run_ids, **output.details,
    }
    (work / RUNNING_NAME).unlink(missing_ok=True)
    atomic_write_json(work / RECORD_NAME, record)
    if replace:
        _swap_into_place(work, out)
