"""Reviewing registered versions: compare, promote through the gate, roll back.

The aliases carry the decisions: ``challenger`` is the newest version, ``champion`` the one
served. ``champion`` moves only through ``promote`` (the paired bootstrap of ``gate.py`` on the
per-image test scores each version's run carries as ``reports/per_image.json``), ``promote
--force`` with a recorded reason, or ``rollback`` to an earlier champion with a recorded reason.
Every attempt leaves its numbers in the version's tags (``gate.*``, ``promotion.*``) and a line
in its ``registry.log`` tag and description.
"""

from __future__ import annotations

import getpass
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from captioning.config import GateConfig
from captioning.errors import BadInputError, CaptioningError
from captioning.registry.gate import BootstrapResult, paired_bootstrap
from captioning.registry.per_image import (
    DifferentTestSets,
    ImageScores,
    NotComparable,
    paired_arrays,
    read_per_image,
)

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PER_IMAGE_ARTIFACT = "reports/per_image.json"
SCORE_TAG = "gate.score"  # "<decoding>.<metric>" a version's per-image scores are gated on
WAS_CHAMPION_TAG = "champion.since"
LOG_TAG = "registry.log"
LOG_HEADER = "\n\n## Registry log\n\n"
MAX_DESCRIPTION_CHARS = 5000  # MLflow's column size for version descriptions
MAX_LOG_TAG_CHARS = 90_000  # registry tag values hold 100,000


class RegistryError(CaptioningError, RuntimeError):
    """A registry request that cannot be carried out as asked (unknown version, no reason...)."""


@dataclass(frozen=True)
class Comparison:
    name: str
    challenger: str  # version numbers
    champion: str
    score: str  # "<decoding>.<metric>"
    result: BootstrapResult

    def report(self) -> str:
        r = self.result
        verdict = "PASS" if r.passed else "FAIL"
        rows = [
            ("mean", f"{r.challenger_mean:.4f} vs {r.champion_mean:.4f}"),
            ("mean difference", f"{r.mean_diff:+.4f}"),
            (
                f"{r.confidence:.0%} CI",
                f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] (paired bootstrap over images, "
                f"{r.resamples} resamples, seed {r.seed})",
            ),
            (f"p (gain <= {r.min_gain:g})", f"{r.p_value:.4f}"),
            (
                "per image",
                f"{r.n_better} better, {r.n_tied} tied, {r.n_worse} worse "
                f"(win fraction {r.win_fraction:.3f})",
            ),
            (
                "gate",
                f"{verdict}: lower bound {r.ci_low:+.4f} {'>' if r.passed else '<='} "
                f"min gain {r.min_gain:g}",
            ),
        ]
        head = (
            f"{self.name}: version {self.challenger} vs version {self.champion} on "
            f"{r.n_images} test images, per-image {self.score}"
        )
        return "\n".join([head, *(f"  {label:<18}{value}" for label, value in rows)])


@dataclass(frozen=True)
class Decision:
    name: str
    version: str
    decision: str  # promoted | refused | forced | already champion | pending review
    reason: str
    champion_before: str | None
    comparison: Comparison | None = None

    @property
    def champion_moved(self) -> bool:
        return self.decision in ("promoted", "forced")


def current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


def resolve_version(client: mlflow.MlflowClient, name: str, ref: str) -> ModelVersion:
    """A version by number (``3``) or alias (``champion``), with a clear error if there is none."""
    ref = str(ref).strip()
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise RegistryError(f"{name}: no version {ref!r} ({exc.message.splitlines()[0]})") from None


def champion_version(client: mlflow.MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def version_scores(
    client: mlflow.MlflowClient, version: ModelVersion, default_score: str
) -> tuple[str, ImageScores]:
    """The version's gate score name and its per-image scores, read from its run's artifact."""
    score = version.tags.get(SCORE_TAG, default_score)
    decoding, _, metric = score.partition(".")
    label = f"version {version.version}"
    if not version.run_id:
        raise NotComparable(f"{label} has no run, hence no per-image scores")
    with tempfile.TemporaryDirectory(prefix="captioning-scores-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=PER_IMAGE_ARTIFACT, dst_path=tmp
            )
        except (MlflowException, OSError) as exc:
            raise NotComparable(
                f"{label} has no per-image scores (run {version.run_id} has no "
                f"{PER_IMAGE_ARTIFACT}: {str(exc).splitlines()[0]})"
            ) from None
        scores = read_per_image(Path(local), decoding, metric)
    return score, ImageScores(scores.scores, scores.test_set, label)


def compare(
    client: mlflow.MlflowClient,
    name: str,
    challenger_ref: str,
    champion_ref: str,
    gate: GateConfig,
    default_score: str,
) -> Comparison:
    """Paired bootstrap of ``challenger_ref`` against ``champion_ref`` on their shared test set."""
    challenger = resolve_version(client, name, challenger_ref)
    champion = resolve_version(client, name, champion_ref)
    if str(challenger.version) == str(champion.version):
        raise RegistryError(
            f"{name}: {challenger_ref!r} and {champion_ref!r} are both version "
            f"{str(challenger.version)}: nothing to compare"
        )
    score_a, a = version_scores(client, challenger, default_score)
    score_b, b = version_scores(client, champion, default_score)
    if score_a != score_b:
        raise NotComparable(
            f"version {str(challenger.version)} is scored on {score_a}, "
            f"version {str(champion.version)} on {score_b}"
        )
    try:
        x, y = paired_arrays(a, b)
    except DifferentTestSets as exc:
        raise DifferentTestSets(
            f"{exc}; {other_test_set_advice(str(challenger.version))}"
        ) from None
    result = paired_bootstrap(
        x,
        y,
        resamples=gate.resamples,
        confidence=gate.confidence,
        seed=gate.seed,
        min_gain=gate.min_gain,
    )
    return Comparison(name, str(challenger.version), str(champion.version), score_a, result)


def other_test_set_advice(version: str) -> str:
    """What to do when a version's test set is not its champion's (the gate pairs images)."""
    return (
        "the gate compares only models scored on one test set: register a model of another "
        'dataset under its own name (register.model_name: "" names it captioner-<fetch.source>), '
        f"or, if this test set replaces the champion's on purpose, `captioning registry promote "
        f"{version} --force --reason '<why>'`"
    )


def promote(
    client: mlflow.MlflowClient,
    name: str,
    ref: str,
    gate: GateConfig,
    default_score: str,
    *,
    force: bool = False,
    reason: str = "",
    by: str | None = None,
    apply: bool = True,
) -> Decision:
    """Run the gate for ``ref`` against the champion; move ``champion`` if it passes (or forced).

    ``force`` needs a ``reason``; it is recorded with the gate's numbers when they can be had.
    ``apply=False`` records the gate's verdict as "pending review" and moves nothing.
    """
    reason = reason.strip()
    if force and not reason:
        raise RegistryError("--force needs a --reason: it is recorded on the version")
    by = by or current_user()
    version = resolve_version(client, name, ref)
    champion = champion_version(client, name)
    before = str(champion.version) if champion else None
    if champion is not None and str(champion.version) == str(version.version):
        return Decision(name, str(version.version), "already champion", "nothing to do", before)

    comparison: Comparison | None = None
    # An alias moved by hand (e.g. in the UI) went past the gate: the record says so.
    set_by_hand = champion is not None and WAS_CHAMPION_TAG not in champion.tags
    if champion is None:
        passed, why = True, "no champion yet"
    else:
        try:
            comparison = compare(
                client, name, str(version.version), str(champion.version), gate, default_score
            )
            passed = comparison.result.passed
            why = f"vs champion {str(champion.version)}: {comparison.result.summary()}"
        except (NotComparable, BadInputError) as exc:  # a malformed per_image.json too
            passed, why = False, f"vs champion {str(champion.version)}: cannot compare: {exc}"
    if comparison is not None:
        _record_gate(client, name, str(version.version), comparison)
    if set_by_hand:
        why += f" (champion {before} was set outside `captioning registry`)"
        logger.warning("%s: champion %s was set outside the gate", name, before)

    if passed and apply:
        decision = "promoted"
    elif force and apply:
        decision, why = "forced", f"forced by {by}: {reason}; gate: {why}"
    elif apply:
        decision = "refused"
    else:
        decision = "pending review"
    if decision in ("promoted", "forced"):
        _move_champion(client, name, str(version.version), before)
    tags = {
        "promotion.decision": decision,
        "promotion.reason": why[:7000],
        "promotion.by": by,
        "promotion.at": _now(),
    }
    if reason:
        tags["promotion.note"] = reason
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version.version), key, value)
    log_event(client, name, str(version.version), f"promote by {by}: {decision}; {why}")
    logger.info("%s version %s: %s (%s)", name, str(version.version), decision, why)
    return Decision(name, str(version.version), decision, why, before, comparison)


def rollback(
    client: mlflow.MlflowClient, name: str, ref: str, *, reason: str, by: str | None = None
) -> Decision:
    """Move ``champion`` back to ``ref``, which must have been champion before."""
    reason = reason.strip()
    if not reason:
        raise RegistryError("rollback needs a --reason: it is recorded on both versions")
    by = by or current_user()
    target = resolve_version(client, name, ref)
    champion = champion_version(client, name)
    before = str(champion.version) if champion else None
    if before == str(target.version):
        raise RegistryError(f"{name}: version {str(target.version)} is already champion")
    if WAS_CHAMPION_TAG not in target.tags:
        raise RegistryError(
            f"{name}: version {str(target.version)} was never champion; a version that has not "
            "been champion goes through `promote` (the gate) or `promote --force --reason`"
        )
    _move_champion(client, name, str(target.version), before)
    stamp = _now()
    for key, value in {
        "rollback.by": by,
        "rollback.reason": reason,
        "rollback.at": stamp,
        "rollback.from_version": before or "none",
    }.items():
        client.set_model_version_tag(name, str(target.version), key, value)
    line = f"rollback by {by}: champion {before or 'none'} -> {str(target.version)}; {reason}"
    log_event(client, name, str(target.version), line)
    if before is not None:
        client.set_model_version_tag(name, before, "rolled_back.by", by)
        client.set_model_version_tag(name, before, "rolled_back.reason", reason)
        log_event(client, name, before, line)
    logger.info("%s: %s", name, line)
    return Decision(name, str(target.version), "rolled back", reason, before)


def log_event(client: mlflow.MlflowClient, name: str, version: str, line: str) -> None:
    """Append a timestamped line to the version's log tag and to the end of its description."""
    current = client.get_model_version(name, version)
    entry = f"- {_now()} {line}"
    log = (current.tags.get(LOG_TAG, "") + entry + "\n")[-MAX_LOG_TAG_CHARS:]
    client.set_model_version_tag(name, version, LOG_TAG, log)
    card = (current.description or "").split(LOG_HEADER)[0]
    room = MAX_DESCRIPTION_CHARS - len(card) - len(LOG_HEADER)
    recent: list[str] = []
    for event in reversed(log.splitlines()):  # the newest events that fit, oldest first
        if sum(len(e) + 1 for e in recent) + len(event) + 1 > room:
            break
        recent.insert(0, event)
    client.update_model_version(name, version, description=card + LOG_HEADER + "\n".join(recent))


def _record_gate(client: mlflow.MlflowClient, name: str, version: str, c: Comparison) -> None:
    r = c.result
    tags = {
        "gate.vs_version": c.champion,
        "gate.score": c.score,
        "gate.passed": str(r.passed).lower(),
        "gate.n_images": str(r.n_images),
        "gate.mean_diff": f"{r.mean_diff:.6g}",
        "gate.ci_low": f"{r.ci_low:.6g}",
        "gate.ci_high": f"{r.ci_high:.6g}",
        "gate.confidence": f"{r.confidence:g}",
        "gate.p_value": f"{r.p_value:.6g}",
        "gate.win_fraction": f"{r.win_fraction:.6g}",
        "gate.resamples": str(r.resamples),
        "gate.seed": str(r.seed),
        "gate.min_gain": f"{r.min_gain:g}",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _move_champion(
    client: mlflow.MlflowClient, name: str, version: str, before: str | None
) -> None:
    stamp = _now()
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, WAS_CHAMPION_TAG, stamp)
    if before is not None:
        client.set_model_version_tag(name, before, "champion.until", stamp)
        client.set_model_version_tag(name, before, "champion.replaced_by", version)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
