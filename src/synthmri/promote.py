"""``synthmri promote``: the gate between a registered generator and the alias ``champion``.

Two criteria (docs/design.md, "MLflow, registry, promotion"):

- memorization: the share of synthetic slices whose nearest training slice correlates above
  ``memorization.threshold`` may exceed the same share for held-out real test slices by at
  most ``promotion.max_memorized_excess`` (absolute);
- relative Dice: mean Dice of a segmenter trained on synthetic slices only, divided by that
  of one trained on real slices only (with augmentation, as in the paper), must be at least
  ``promotion.min_relative_dice``.

Whatever the outcome the version gets tags with the evidence (``synthmri.gate.*``); passing
also points ``champion`` at it. Registry stages are deprecated in MLflow and never used.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthmri.config import Config
from synthmri.io import atomic_write_json, jsonable
from synthmri.promote_evidence import (EvidenceError, GatedVersion, check_evaluation, check_memorization,
                                       read_summary, summary_file)
from synthmri.records import CHECKPOINT_TAG

log = logging.getLogger(__name__)

CHAMPION = "champion"
TAG_PREFIX = "synthmri.gate."


class PromotionError(ValueError):
    """Evidence or registry entry unusable for a decision; the message names the culprit."""


@dataclass(frozen=True)
class Criterion:
    """One gate criterion: ``value <comparison> threshold`` must hold."""

    name: str
    value: float
    threshold: float
    passed: bool
    explanation: str
    comparison: str = "<="


@dataclass
class Decision:
    """The gate's verdict on one registered model version."""

    passed: bool
    criteria: list[Criterion]
    model: str
    version: str
    requested: str = ""  # what the caller asked for (a number or an alias)
    evidence: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def describe(self) -> str:
        """Readable verdict: one line per criterion with its value, threshold and why."""
        via = f" (alias {self.requested})" if self.requested and self.requested != self.version else ""
        if self.passed:
            head = f"{self.model} version {self.version}{via}: PASSED the gate; alias '{CHAMPION}' now points to it"
        else:
            names = ", ".join(c.name for c in self.failed)
            head = f"{self.model} version {self.version}{via}: FAILED the gate ({names}); alias '{CHAMPION}' not set"
        lines = [head]
        for c in self.criteria:
            mark = "pass" if c.passed else "FAIL"
            lines.append(f"  [{mark}] {c.name}: {c.value:.4f} {c.comparison} {c.threshold:.4f} required. {c.explanation}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (NaN values become null)."""
        return jsonable({
            "passed": self.passed, "model": self.model, "version": self.version, "requested": self.requested,
            "criteria": [asdict(c) for c in self.criteria], "evidence": self.evidence, "notes": self.notes,
        })


def load_gate_evaluation(paths: list[Path], expected_train: str, role: str, arch: str,
                         gated: GatedVersion) -> dict[str, Any]:
    """One evaluation for the gate from one or several evaluate-segmenter outputs.

    A single output is used as it is and must come from `expected_train` data. Several, or a
    gathered grid (architectures, data sources, augmentation on and off, repeats), are
    narrowed to the paper's reference setting: `expected_train` data, the profile's
    architecture `arch`, with augmentation; mean Dice is averaged over the runs that remain.
    Every run used must carry its completion record, trained on `expected_train` data only
    (on `gated`'s samples, for synthetic training), with a mean Dice in [0, 1].

    Raises:
        FileNotFoundError: a summary is missing.
        PromotionError: an output is of the wrong kind or without provenance, none matches the
            reference setting, or they were scored on different test data (file and field named).
    """
    from synthmri.segmenters.evaluate import evaluation_runs

    if not paths:
        raise PromotionError(f"no {role} evaluation given")
    try:
        runs = [(Path(path), run) for path in paths for run in evaluation_runs(Path(path))]
    except ValueError as exc:
        raise PromotionError(str(exc)) from None
    single = len(paths) == 1 and [Path(run["_path"]) for _, run in runs] == [summary_file(Path(paths[0]))]
    chosen = runs if single else [
        (root, run) for root, run in runs if isinstance(run.get("model"), dict)
        and run["model"].get("train") == expected_train and run["model"].get("arch") == arch
        and run["model"].get("augment", True)]
    if not chosen:
        found = sorted({f"{s['model'].get('arch')}/{s['model'].get('train')}/"
                        f"{'aug' if s['model'].get('augment', True) else 'no aug'}" for _, s in runs})
        raise PromotionError(f"none of the {len(runs)} evaluations given as {role} is {arch} trained on "
                             f"'{expected_train}' slices with augmentation (the gate's reference setting); "
                             f"found {', '.join(found)}")
    for root, run in chosen:
        file = Path(run["_path"])
        if run["model"].get("train") != expected_train:
            raise PromotionError(
                f"{file}: the {role} evaluation must come from a segmenter trained on '{expected_train}' slices "
                f"only, but field 'model.train' is {run['model'].get('train')!r}")
        try:
            check_evaluation(run, file, root, expected_train, gated)
        except EvidenceError as exc:
            raise PromotionError(str(exc)) from None
    summaries = [run for _, run in chosen]
    hashes = {s.get("data_hash") for s in summaries}
    if len(hashes) > 1:
        raise PromotionError(f"the {role} evaluations were scored on different test data ({sorted(map(str, hashes))})")
    combined = dict(summaries[0])
    combined["mean_dice"] = sum(float(s["mean_dice"]) for s in summaries) / len(summaries)
    combined["repeats"] = sum(int(s.get("repeats", 1)) for s in summaries)
    combined["model"] = {**summaries[0]["model"],
                         "name": ", ".join(sorted(str(s["model"].get("name")) for s in summaries))}
    return combined


def load_memorization(path: Path, gated: GatedVersion) -> dict[str, Any]:
    """The evaluate-synthetic summary at `path`, checked and bound to `gated` (see :mod:`synthmri.promote_evidence`).

    Raises:
        FileNotFoundError: no summary.json at `path`.
        PromotionError: unreadable, a field missing or out of range, no provenance, or another generator.
    """
    try:
        return check_memorization(read_summary(Path(path)), Path(path), gated)
    except EvidenceError as exc:
        raise PromotionError(str(exc)) from None


def _criterion(name: str, value: float, threshold: float, comparison: str, explanation: str) -> Criterion:
    if not math.isfinite(value):
        return Criterion(name, value, threshold, False, f"{explanation} The value is not a number, so the criterion cannot hold.", comparison)
    holds = value <= threshold if comparison == "<=" else value >= threshold
    return Criterion(name, value, threshold, holds, explanation, comparison)


def evaluate_gate(memorization: dict[str, Any], real_eval: dict[str, Any], synthetic_eval: dict[str, Any],
                  cfg: Config) -> list[Criterion]:
    """The two gate criteria from loaded evidence (pure; no registry access)."""
    syn_share = float(memorization["synthetic"]["share_above_threshold"])
    base_share = float(memorization["baseline"]["share_above_threshold"])
    threshold_r = float(memorization["threshold"])
    excess = syn_share - base_share
    limit = cfg.promotion.max_memorized_excess
    verdict = "within" if excess <= limit else "more than"
    memo = _criterion(
        "memorization", excess, limit, "<=",
        f"{syn_share:.2%} of {memorization['synthetic'].get('n', '?')} synthetic slices correlate above r={threshold_r:g} "
        f"with a training slice vs {base_share:.2%} of {memorization['baseline'].get('n', '?')} held-out real test slices: "
        f"an excess of {excess:+.2%}, {verdict} the allowed {limit:.2%}.")
    real_dice, syn_dice = float(real_eval["mean_dice"]), float(synthetic_eval["mean_dice"])
    relative = syn_dice / real_dice if real_dice > 0 else float("nan")
    floor = cfg.promotion.min_relative_dice
    if real_dice > 0:
        why = (f"synthetic-only training reaches mean Dice {syn_dice:.4f}, {relative:.1%} of real-only training's "
               f"{real_dice:.4f}; at least {floor:.0%} is required.")
    else:
        why = f"real-only training has mean Dice {real_dice}, so no relative Dice can be formed."
    dice = _criterion("relative_dice", relative, floor, ">=", why)
    return [memo, dice]


def _resolve_version(client: Any, model: str, version: str, cfg: Config) -> tuple[str, Any]:
    """(registered name, ModelVersion) for a version number or alias; clear errors if absent."""
    from mlflow.exceptions import MlflowException

    from synthmri.tracking import registered_model_name

    names = [model]
    prefixed = registered_model_name(cfg.tracking, model)
    if not model.startswith(f"{cfg.tracking.registered_model_prefix}-"):
        names.append(prefixed)  # accept the generator family ("ddpm") as well as "synthmri-ddpm"
    name = None
    for candidate in names:
        try:
            client.get_registered_model(candidate)
            name = candidate
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # an unreachable or broken registry is not "no such model"
            continue
    if name is None:
        tried = " or ".join(repr(n) for n in names)
        raise PromotionError(f"registered model {tried} not found in the MLflow registry")
    try:
        if version.isdigit():
            return name, client.get_model_version(name, version)
        return name, client.get_model_version_by_alias(name, version)
    except MlflowException as exc:
        # A missing alias is INVALID_PARAMETER_VALUE, a missing version RESOURCE_DOES_NOT_EXIST.
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        kind = "version" if version.isdigit() else "alias"
        raise PromotionError(f"registered model {name!r} has no {kind} {version!r} ({exc.message})") from None


def _consistency(real_eval: dict[str, Any], synthetic_eval: dict[str, Any], paths: dict[str, Any]) -> list[str]:
    """Raise on evidence that cannot be compared; return notes on weaker mismatches."""
    notes = []
    if real_eval.get("data_hash") != synthetic_eval.get("data_hash"):
        raise PromotionError(
            f"{paths['real']} and {paths['synthetic']} were scored on different test data "
            f"(data_hash {real_eval.get('data_hash')} vs {synthetic_eval.get('data_hash')}); relative Dice needs the same test set")
    real_arch, syn_arch = real_eval["model"].get("arch"), synthetic_eval["model"].get("arch")
    if real_arch != syn_arch:
        raise PromotionError(f"{paths['real']} ({real_arch}) and {paths['synthetic']} ({syn_arch}) evaluate different architectures")
    if not real_eval["model"].get("augment", True):
        notes.append("the real-only baseline was trained without augmentation; the paper's reference uses augmentation")
    return notes


def promote(model: str, version: str, memorization: Path, real_evaluation: Path | list[Path],
            synthetic_evaluation: Path | list[Path], out: Path | None, cfg: Config) -> Decision:
    """Gate a registered generator version and record the decision in the registry.

    Args:
        model: registered model name (``synthmri-ddpm``) or generator family (``ddpm``).
        version: version number or alias (``candidate``).
        memorization: evaluate-synthetic output directory (or its summary.json).
        real_evaluation: evaluate-segmenter output of real-only training, or several
            (see :func:`load_gate_evaluation`).
        synthetic_evaluation: evaluate-segmenter output of synthetic-only training, or several.
        out: where to write the decision as JSON (atomically), or None.
        cfg: resolved config (``promotion`` thresholds, ``tracking``).

    Returns:
        The Decision. Tags ``synthmri.gate.*`` are set on the version either way; alias
        ``champion`` only when it passed.

    Raises:
        FileNotFoundError: an evidence file is missing.
        PromotionError: the model, version or alias does not exist, or the evidence is of the
            wrong kind or cannot be compared (the message names the file).
    """
    from mlflow import MlflowClient

    from synthmri.tracking import configure

    real_paths = [Path(p) for p in (real_evaluation if isinstance(real_evaluation, list) else [real_evaluation])]
    syn_paths = [Path(p) for p in (synthetic_evaluation if isinstance(synthetic_evaluation, list) else [synthetic_evaluation])]
    paths = {"memorization": Path(memorization), "real": ", ".join(map(str, real_paths)),
             "synthetic": ", ".join(map(str, syn_paths))}
    # The version first: the evidence is checked against what it registered.
    configure(cfg.tracking)
    client = MlflowClient()
    name, model_version = _resolve_version(client, model, str(version), cfg)
    number = str(model_version.version)
    checkpoint = (getattr(model_version, "tags", None) or {}).get(CHECKPOINT_TAG)
    if not checkpoint:
        raise PromotionError(f"registered model {name!r} version {number} has no tag {CHECKPOINT_TAG!r}, so no "
                             "evidence can be tied to it (register generators with synthmri train-generator)")
    gated = GatedVersion(name, number, checkpoint)
    memo = load_memorization(paths["memorization"], gated)
    real_eval = load_gate_evaluation(real_paths, "real", "real-only", cfg.segmenter.arch, gated)
    floor = cfg.promotion.min_real_dice
    if float(real_eval["mean_dice"]) < floor:
        raise PromotionError(
            f"{paths['real']}: the real-only baseline's mean Dice is {float(real_eval['mean_dice']):.4f}, below "
            f"promotion.min_real_dice {floor:g}: that segmenter failed to train, and any generator would pass "
            "against it; the gate will not judge until the baseline is retrained")
    syn_eval = load_gate_evaluation(syn_paths, "synthetic", "synthetic-only", cfg.segmenter.arch, gated)
    notes = _consistency(real_eval, syn_eval, paths)
    criteria = evaluate_gate(memo, real_eval, syn_eval, cfg)
    passed = all(c.passed for c in criteria)
    if not passed and CHAMPION in (getattr(model_version, "aliases", None) or []):
        # Never moved silently: a champion in service is taken down by a person, not by a re-run.
        notes.append(f"alias '{CHAMPION}' still points to this version from an earlier decision; "
                     f"remove it by hand if this evidence supersedes that one")
    evidence = {
        "memorization": str(paths["memorization"]), "real_evaluation": str(paths["real"]),
        "synthetic_evaluation": str(paths["synthetic"]),
        "memorization_run_id": memo.get("mlflow_run_id"), "checkpoint_sha256": checkpoint,
        "real_hash": memo.get("real_hash"),
        "synthetic_hash": memo.get("synthetic_hash"), "evaluation_data_hash": real_eval.get("data_hash"),
        "real_mean_dice": float(real_eval["mean_dice"]), "synthetic_mean_dice": float(syn_eval["mean_dice"]),
        "real_model": real_eval["model"].get("name"), "synthetic_model": syn_eval["model"].get("name"),
        "decided_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    decision = Decision(passed, criteria, name, number, str(version), evidence, notes)

    values = {c.name: c for c in criteria}
    tags = {
        "passed": str(passed).lower(),
        "memorized_excess": f"{values['memorization'].value:.6g}",
        "max_memorized_excess": f"{cfg.promotion.max_memorized_excess:g}",
        "relative_dice": f"{values['relative_dice'].value:.6g}",
        "min_relative_dice": f"{cfg.promotion.min_relative_dice:g}",
        "failed": ",".join(c.name for c in decision.failed) or "none",
        **{k: str(v) for k, v in evidence.items() if v is not None},
    }
    # Evidence first, alias last: a champion never lacks the tags that justify it.
    for key, value in tags.items():
        client.set_model_version_tag(name, number, TAG_PREFIX + key, value[:5000])
    if passed:
        client.set_registered_model_alias(name, CHAMPION, number)
        log.info("%s version %s passed; alias %s set", name, number, CHAMPION)
    else:
        log.warning("%s version %s failed the gate: %s", name, number, ", ".join(c.name for c in decision.failed))
    if out is not None:
        atomic_write_json(Path(out), decision.to_dict())
    return decision
