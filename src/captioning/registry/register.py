"""Log a trained captioner to MLflow, register it, and promote it if it beats the champion.

Every new version gets the alias ``challenger``. ``champion`` moves to it only if there is no
champion yet or the new version's ``test.beam.<promote_metric>`` is strictly greater than the
champion's. The value is stored on each version as a tag so it is read back without the run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from captioning.config import RegisterConfig, flatten_dict
from captioning.io import write_json
from captioning.registry.pyfunc import log_captioner
from captioning.registry.tracking import (
    configure_mlflow,
    get_or_create_experiment,
    lineage_tags,
    locked_stages,
    repo_root,
)

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
LINEAGE_STAGES = ("fetch", "shard", "vocab", "features")
PER_DECODER_STAGES = ("train", "evaluate")
MAX_PARAM_LENGTH = 6000


def decide_promotion(new: float, champion: float | None) -> tuple[bool, str]:
    """Promote iff there is no (valid) champion value or ``new`` is strictly greater."""
    if math.isnan(new):
        return False, f"new value is NaN; champion {champion}"
    if champion is None or math.isnan(champion):
        return True, f"no champion value to beat; new {new:.6g}"
    if new > champion:
        return True, f"new {new:.6g} > champion {champion:.6g}"
    return False, f"new {new:.6g} <= champion {champion:.6g}"


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    flat = flatten_dict(metrics)
    return {
        k: float(v)
        for k, v in flat.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def lineage_stages(root: Path, decoder: str) -> tuple[str, ...]:
    """The upstream DVC stages; ``train``/``evaluate`` as ``<stage>@<decoder>`` under foreach."""
    locked = locked_stages(root)
    per_decoder = tuple(
        f"{stage}@{decoder}" if f"{stage}@{decoder}" in locked else stage
        for stage in PER_DECODER_STAGES
    )
    return (*LINEAGE_STAGES, *per_decoder)


def promote_key(cfg: RegisterConfig) -> str:
    return f"test.beam.{cfg.promote_metric}"


def register_model(
    model_dir: Path,
    metrics_path: Path,
    cfg: RegisterConfig,
    *,
    out_path: Path,
    root: Path | None = None,
    example_image: bytes | None = None,
) -> dict:
    """Log, register, alias and maybe promote; write and return the decision record."""
    model_dir, metrics_path = Path(model_dir), Path(metrics_path)
    root = Path(root) if root is not None else repo_root()
    config = _read_json(model_dir / "config.json")
    metrics = numeric_metrics(_read_json(metrics_path))
    key = promote_key(cfg)
    if key not in metrics:
        raise ValueError(f"{metrics_path}: no numeric {key!r} to decide promotion on")
    new_value = metrics[key]
    decoder = str(config.get("decoder", model_dir.name))

    configure_mlflow(root)
    experiment_id = get_or_create_experiment(cfg.experiment, root)
    tags = lineage_tags(root, lineage_stages(root, decoder))
    tags.update(decoder=decoder, encoder=_encoder_name(config))
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{decoder}") as run:
        mlflow.log_params({k: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten_dict(config).items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        mlflow.log_artifact(str(metrics_path), artifact_path="reports")
        mlflow.log_artifact(str(model_dir / "config.json"), artifact_path="reports")
        info = log_captioner(model_dir, example_image=example_image)
        run_id = run.info.run_id

    client = mlflow.MlflowClient()
    version = mlflow.register_model(
        info.model_uri, cfg.model_name, tags={key: repr(new_value), "decoder": decoder}
    ).version
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    champion_version, champion_value = _champion(client, cfg.model_name, key)
    promoted, reason = decide_promotion(new_value, champion_value)
    if champion_version is not None:
        reason += f" (champion is version {champion_version})"
    if promoted:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    decision = "promoted" if promoted else "kept"
    client.set_model_version_tag(cfg.model_name, version, "promotion.decision", decision)
    client.set_model_version_tag(cfg.model_name, version, "promotion.reason", reason)
    client.set_tag(run_id, "promotion.decision", decision)
    logger.info("%s version %s: %s (%s)", cfg.model_name, version, decision, reason)

    aliases = client.get_model_version(cfg.model_name, version).aliases
    record = {
        "model_name": cfg.model_name,
        "version": str(version),
        "run_id": run_id,
        "aliases": sorted(aliases),
        "decision": decision,
        "reason": reason,
        "metric": key,
        "new_value": new_value,
        "champion_value": champion_value,
    }
    write_json(out_path, record)
    return record


def _champion(client: mlflow.MlflowClient, name: str, key: str) -> tuple[str | None, float | None]:
    """The current champion's version and its promote-metric value (None if unknown)."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    raw = champion.tags.get(key)
    if raw is None and champion.run_id:
        # A version registered without the tag: fall back to its run's metric.
        raw = client.get_run(champion.run_id).data.metrics.get(key)
    try:
        return champion.version, float(raw) if raw is not None else None
    except ValueError:
        logger.warning("champion %s has a non-numeric %s tag %r", champion.version, key, raw)
        return champion.version, None


def _encoder_name(config: dict[str, Any]) -> str:
    encoder = config.get("encoder")
    if isinstance(encoder, dict):
        return str(encoder.get("encoder") or encoder.get("name") or "unknown")
    return str(encoder or "unknown")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
