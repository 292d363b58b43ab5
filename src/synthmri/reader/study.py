"""The reader study's state on disk: the blinded plan, the answer log and the confusion table.

A study directory holds::

    order.key        the secret seed of the presentation order (256 random bits, mode 0600)
    plan.json        written once (atomically): opaque token -> (source, slice position), shuffled
    answers.jsonl    append-only, one fsync'ed JSON line per answer or undo
    confusion.csv    written by :func:`synthmri.reader.results.finish`

Blinding. ``--seed`` picks *which* slices are shown, so the selection can be reproduced and
reported; the *order* they are shown in comes from ``order.key``, drawn with :mod:`secrets`
when the study is first opened and never printed, logged, served or copied into plan.json.
So nobody can rebuild the order from the inputs (the seed, the stores and their sizes); a
resumed study reads its key (and its plan) back and keeps its order.

Selection. Real images are drawn from the real store's ``test`` split (held-out patients),
synthetic ones from every slice of each synthetic store. Every candidate, real or synthetic,
must pass the same foreground rule that ``prepare`` applied to the real slices (the real
store's manifest ``filter``; else the profile's ``data`` settings): more than
``min_foreground_fraction`` of the pixels above ``intensity_threshold`` in ``channel``. So a
near-empty synthetic slice (an easy giveaway) is skipped, and both sources face one rule.

Answers. A token is answered once: a second answer is refused until the first is undone
(undo takes back the most recent answer still in effect). Once every item is answered the
study is complete and frozen. A torn last line (a crash mid-write) is dropped on load.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthmri.config import DataConfig
from synthmri.data.store import CHANNELS, SliceStore
from synthmri.io import atomic_write_json
from synthmri.reader.order import ORDER_KEY, ORDER_KEY_BITS, order_key

log = logging.getLogger(__name__)

STAGE = "reader-study"
PLAN_VERSION = 2  # 2: the order comes from the secret order.key (1: from --seed, which is guessable)
ANSWERS = ("real", "synthetic")


class StudyError(ValueError):
    """Bad study input or a refused request; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ForegroundRule:
    """Keep a slice when more than `min_fraction` of its pixels exceed `threshold` in `channel`."""

    channel: str = "t1"
    threshold: float = 50
    min_fraction: float = 0.15

    @classmethod
    def for_store(cls, store: SliceStore, data: DataConfig | None = None) -> "ForegroundRule":
        """The rule `prepare` applied to `store` (its manifest's ``filter``), else `data`'s."""
        data = data or DataConfig()
        recorded = store.manifest.get("filter") or {}
        return cls(channel=str(recorded.get("channel", data.filter_channel)),
                   threshold=float(recorded.get("intensity_threshold", data.intensity_threshold)),
                   min_fraction=float(recorded.get("min_foreground_fraction", data.min_foreground_fraction)))

    def passes(self, slices: np.ndarray) -> np.ndarray:
        """Boolean per slice of uint8 [n, 5, H, W]."""
        channel = slices[:, CHANNELS.index(self.channel)]
        return (channel > self.threshold).mean(axis=(1, 2)) > self.min_fraction

    def describe(self) -> str:
        return f"more than {self.min_fraction:.0%} of pixels above {self.threshold:g} in {self.channel}"


def generator_name(store: SliceStore) -> str:
    """A synthetic store's generator: ``manifest["generator"]["name"]``, else the folder name."""
    generator = store.manifest.get("generator") or {}
    return str(generator.get("name") or store.path.resolve().name)


def _pick(store: SliceStore, candidates: np.ndarray, n: int, rule: ForegroundRule, rng: np.random.Generator,
          what: str) -> list[int]:
    """`n` positions of `candidates` passing `rule`, tried in a seeded random order."""
    if n > len(candidates):
        raise StudyError(f"{store.path}: --per-source {n} but the store has only {len(candidates)} {what}")
    chosen: list[int] = []
    order = rng.permutation(candidates)
    for start in range(0, len(order), 256):
        chunk = order[start : start + 256]
        chosen += chunk[rule.passes(store.read(chunk))].tolist()[: n - len(chosen)]
        if len(chosen) == n:
            return chosen
    raise StudyError(f"{store.path}: --per-source {n} but only {len(chosen)} of its {len(candidates)} {what} "
                     f"pass the foreground rule ({rule.describe()})")


def build_plan(real: Path, synthetic: Sequence[Path], per_source: int, seed: int, *, order_key: int | None = None,
               reader: str = "", data: DataConfig | None = None) -> dict[str, Any]:
    """Select `per_source` slices of each source and shuffle them behind random tokens.

    Args:
        real: real slice store; its ``test`` split is sampled.
        synthetic: synthetic slice stores, one source each (named by their generator).
        per_source: images per source.
        seed: seed of the selection (which slices); public, recorded in the plan.
        order_key: secret seed of the presentation order (see :func:`~synthmri.reader.order.order_key`); None: a
            fresh one that is not kept. It is not recorded in the plan.
        reader: the reader's name, recorded with the plan.
        data: the profile's data settings (foreground rule when the real manifest has none).

    Returns:
        The plan (what ``plan.json`` holds).

    Raises:
        StudyError: no synthetic store, a store without test slices, differing image sizes,
            duplicate source names, or fewer eligible slices than `per_source`.
    """
    if per_source < 1:
        raise StudyError(f"--per-source must be at least 1, got {per_source}")
    if not synthetic:
        raise StudyError("a reader study needs at least one synthetic store")
    real_store = SliceStore(real)
    rule = ForegroundRule.for_store(real_store, data)
    rng = np.random.default_rng(seed)
    test = real_store.indices("test")
    if len(test) == 0:
        raise StudyError(f"{real_store.path}: no test slices (splits: {real_store.manifest['counts'].get('splits')}); "
                         "real images must come from held-out patients")
    sources = [{"name": "real", "kind": "real", "store": str(real_store.path.resolve()),
                "content_hash": real_store.content_hash}]
    items = [("real", int(i)) for i in _pick(real_store, test, per_source, rule, rng, "test slices")]
    for path in synthetic:
        store = SliceStore(path)
        if store.image_size != real_store.image_size:
            raise StudyError(f"{store.path}: image size {store.image_size}, but the real store {real_store.path} "
                             f"has {real_store.image_size}")
        name = generator_name(store)
        if name in {s["name"] for s in sources}:
            raise StudyError(f"{store.path}: source name {name!r} is already taken; give each synthetic store "
                             "its own generator name (manifest) or folder")
        sources.append({"name": name, "kind": "synthetic", "store": str(store.path.resolve()),
                        "content_hash": store.content_hash})
        items += [(name, int(i)) for i in _pick(store, store.indices(), per_source, rule, rng, "slices")]
    order = np.random.default_rng(secrets.randbits(ORDER_KEY_BITS) if order_key is None else order_key) \
        .permutation(len(items))
    tokens: set[str] = set()
    while len(tokens) < len(items):
        tokens.add(secrets.token_hex(16))
    return {
        "version": PLAN_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": int(seed),
        "order": f"secret ({ORDER_KEY})",
        "per_source": int(per_source),
        "reader": reader,
        "foreground": {"channel": rule.channel, "intensity_threshold": rule.threshold,
                       "min_foreground_fraction": rule.min_fraction},
        "sources": sources,
        "items": [{"token": token, "source": items[k][0], "index": items[k][1]} for token, k in zip(sorted(tokens), order)],
    }


def _check_plan(plan: dict[str, Any], path: Path, real: Path | None, synthetic: Sequence[Path],
                per_source: int | None, seed: int | None) -> None:
    """Raise StudyError when the arguments given differ from what `plan` was made for."""
    wanted = [s["store"] for s in plan["sources"]]
    given = [str(Path(p).resolve()) for p in ([real] if real else []) + list(synthetic)]
    problems = []
    if given and given != wanted:
        problems.append(f"stores {given} (plan: {wanted})")
    if per_source is not None and per_source != plan["per_source"]:
        problems.append(f"--per-source {per_source} (plan: {plan['per_source']})")
    if seed is not None and seed != plan["seed"]:
        problems.append(f"--seed {seed} (plan: {plan['seed']})")
    if problems:
        raise StudyError(f"{path} was made for other inputs: {'; '.join(problems)}; resume with the same arguments, "
                         "or use another --out")


class ReaderStudy:
    """One study directory: the plan, the answers so far, and the images behind the tokens.

    Safe to share between the server's request threads.

    Attributes:
        out: the study directory.
        plan: the parsed plan.json.
    """

    def __init__(self, out: Path, plan: dict[str, Any]) -> None:
        self.out = Path(out)
        self.plan = plan
        self._items = {item["token"]: item for item in plan["items"]}
        self._sources = {s["name"]: s for s in plan["sources"]}
        self._stores: dict[str, SliceStore] = {}
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        self._stack: list[str] = []  # answered tokens, oldest first (undo pops the last)
        self._load_answers()

    # ---------------------------------------------------------------- answers

    @property
    def answers_path(self) -> Path:
        return self.out / "answers.jsonl"

    def _load_answers(self) -> None:
        path = self.answers_path
        if not path.exists():
            return
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # torn last line: drop it so the next append starts clean
            keep = raw.rfind(b"\n") + 1
            log.warning("%s: dropping an incomplete last line (%d bytes)", path, len(raw) - keep)
            with open(path, "r+b") as handle:
                handle.truncate(keep)
            raw = raw[:keep]
        for number, line in enumerate(raw.decode().splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "undo" in record:
                if self._stack and self._stack[-1] == record["undo"]:
                    self._answers.pop(self._stack.pop())
                continue
            if record.get("token") not in self._items or record.get("answer") not in ANSWERS:
                raise StudyError(f"{path}:{number}: not an answer to this study's plan: {line[:200]}")
            if record["token"] not in self._answers:
                self._answers[record["token"]] = record["answer"]
                self._stack.append(record["token"])

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.answers_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @property
    def total(self) -> int:
        return len(self.plan["items"])

    @property
    def answered(self) -> int:
        return len(self._answers)

    @property
    def complete(self) -> bool:
        return self.answered == self.total

    def state(self) -> dict[str, Any]:
        """What the browser may know: the next unanswered token (plan order) and the progress."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        token = next((item["token"] for item in self.plan["items"] if item["token"] not in self._answers), None)
        return {"token": token, "answered": self.answered, "total": self.total, "done": token is None}

    def answer(self, token: str, answer: str) -> dict[str, Any]:
        """Record `answer` ("real" or "synthetic") for `token`; returns the new :meth:`state`."""
        if answer not in ANSWERS:
            raise StudyError(f"answer must be one of {ANSWERS}, got {answer!r}")
        with self._lock:
            if token not in self._items:
                raise StudyError("unknown token", status=404)
            if token in self._answers:
                raise StudyError("already answered (undo first to change it)", status=409)
            self._append({"token": token, "answer": answer, "reader": self.plan.get("reader", ""),
                          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            self._answers[token] = answer
            self._stack.append(token)
            return self._state()

    def undo(self) -> dict[str, Any]:
        """Take back the most recent answer still in effect; refused once the study is complete."""
        with self._lock:
            if self.complete:
                raise StudyError("the study is complete", status=409)
            if not self._stack:
                raise StudyError("nothing to undo", status=409)
            token = self._stack[-1]
            self._append({"undo": token, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            self._stack.pop()
            self._answers.pop(token)
            return self._state()

    def answers(self) -> dict[str, str]:
        """Token -> answer, for the answers in effect."""
        with self._lock:
            return dict(self._answers)

    # ---------------------------------------------------------------- images

    def store(self, source: str) -> SliceStore:
        """The slice store of `source`, checked against the content hash the plan recorded."""
        with self._lock:
            if source not in self._stores:
                info = self._sources[source]
                store = SliceStore(Path(info["store"]))
                if store.content_hash != info["content_hash"]:
                    raise StudyError(f"{store.path}: content changed since {self.out / 'plan.json'} was made "
                                     f"(hash {store.content_hash[:12]}, plan {info['content_hash'][:12]})", status=500)
                self._stores[source] = store
            return self._stores[source]

    def pixels(self, token: str) -> np.ndarray:
        """The uint8 [5, H, W] slice behind `token`."""
        item = self._items.get(token)
        if item is None:
            raise StudyError("unknown token", status=404)
        return self.store(item["source"]).read([item["index"]])[0]


def open_study(out: Path, *, real: Path | None = None, synthetic: Sequence[Path] = (), per_source: int | None = None,
               seed: int | None = None, reader: str = "", data: DataConfig | None = None) -> ReaderStudy:
    """Open the study in `out`: its plan.json if there is one (checked against the arguments), else a new plan.

    A new plan's order comes from the study's secret :func:`~synthmri.reader.order.order_key` (made first, so a
    crash before plan.json is written leaves the key, and the next run plans the same order).

    Raises:
        StudyError: no plan and missing arguments, a plan made for other arguments, or bad stores
            (see :func:`build_plan`).
    """
    out = Path(out)
    path = out / "plan.json"
    if path.is_file():
        plan = json.loads(path.read_text())
        _check_plan(plan, path, real, synthetic, per_source, seed)
        if reader and reader != plan.get("reader", ""):
            raise StudyError(f"{path} belongs to reader {plan.get('reader')!r}, not {reader!r}; use another --out")
        if plan.get("version", 1) < 2:
            log.warning("%s predates the secret order: its order can be rebuilt from --seed and the stores, so "
                        "the reading is not blind; start a new study in another --out", path)
    else:
        if real is None or not synthetic or per_source is None:
            raise StudyError(f"{path} does not exist: a new study needs --real, --synthetic and --per-source")
        try:
            key = order_key(out)
        except ValueError as exc:
            raise StudyError(str(exc)) from None
        plan = build_plan(real, synthetic, per_source, 0 if seed is None else seed, order_key=key,
                          reader=reader, data=data)
        atomic_write_json(path, plan)
        log.info("reader study: %d images (%d per source, %d sources) planned in %s", len(plan["items"]),
                 per_source, len(plan["sources"]), path)
    return ReaderStudy(out, plan)
