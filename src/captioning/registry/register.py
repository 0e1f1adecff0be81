"""Log a trained model to MLflow, register it as ``challenger``, and run the promotion gate.

Every version carries what a reviewer needs: test (and validation) metrics, params, encoder and
decoder, git commit, the dvc.lock hashes of its data and features, the Prefect flow-run id, a
model card (its description), the per-image test scores the gate compares, the attention
figures, a signature and an input example. ``champion`` moves only through ``review.promote``
(here when ``register.auto_promote`` is set; by hand with ``captioning registry promote``).

Idempotent: each version carries the sha256 of everything its registration read (``INPUTS_TAG``:
the model directory, the reports, the input example, the register config). A re-run with the
same inputs, e.g. after the stage was killed between creating the version and writing its
record, reuses that version instead of registering the same model a second time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from captioning.config import RegisterConfig, flatten, flatten_dict
from captioning.errors import BadInputError
from captioning.io import file_digest, read_json_input, write_json
from captioning.registry.model_card import CardInputs, render_model_card
from captioning.registry.per_image import ImageScores, read_per_image
from captioning.registry.pyfunc import log_captioner
from captioning.registry.review import CHALLENGER, PER_IMAGE_ARTIFACT, SCORE_TAG, promote
from captioning.registry.tracking import (
    configure_mlflow,
    get_or_create_experiment,
    lineage_tags,
    locked_stages,
    pipeline_dir,
)

logger = logging.getLogger(__name__)

LINEAGE_STAGES = ("fetch", "shard", "vocab", "features")
PER_DECODER_STAGES = ("train", "evaluate")
MAX_PARAM_LENGTH = 6000
INPUTS_TAG = "registration.inputs_sha256"


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
    """The corpus metric shown next to the gate, e.g. ``test.beam.CIDEr``."""
    return f"test.{cfg.decoding}.{cfg.promote_metric}"


def register_model(
    model_dir: Path,
    metrics_path: Path,
    cfg: RegisterConfig,
    *,
    out_path: Path,
    root: Path | None = None,
    example_image: bytes | None = None,
    per_image_path: Path | None = None,
    figures_dir: Path | None = None,
    train_log: Path | None = None,
    data_source: str = "unknown",
) -> dict:
    """Log, register as challenger, run the gate; write and return the decision record.

    The registered model is ``cfg.registered_name(data_source)``: one per dataset by default.
    """
    model_dir, metrics_path = Path(model_dir), Path(metrics_path)
    root = Path(root) if root is not None else pipeline_dir()
    config = _read_json(model_dir / "config.json")
    metrics = numeric_metrics(_read_json(metrics_path))
    key = promote_key(cfg)
    if key not in metrics:
        raise BadInputError(f"{metrics_path}: no numeric {key!r} to decide promotion on")
    score_name = f"{cfg.decoding}.{cfg.promote_metric}"
    per_image: ImageScores | None = None
    if per_image_path is not None:  # read first: a malformed file fails before anything is logged
        per_image = read_per_image(Path(per_image_path), cfg.decoding, cfg.promote_metric)
    metrics.update(validation_metrics(train_log))
    decoder = str(config.get("decoder", model_dir.name))
    encoder = _encoder_name(config)
    figures = sorted(Path(figures_dir).glob("*.png")) if figures_dir is not None else []

    name = cfg.registered_name(data_source)
    configure_mlflow(root)
    experiment_id = get_or_create_experiment(cfg.experiment, root)
    lineage = lineage_tags(root, lineage_stages(root, decoder))
    tags = {**lineage, "decoder": decoder, "encoder": encoder, "model_name": name}
    card = render_model_card(
        CardInputs(
            model_name=name,
            decoder=decoder,
            encoder=encoder,
            config=config,
            test_metrics={k[5:]: v for k, v in metrics.items() if k.startswith("test.")},
            val_metrics={k[4:]: v for k, v in metrics.items() if k.startswith("val.")},
            lineage=lineage,
            data_source=data_source,
            n_test_images=len(per_image) if per_image else None,
            test_set=per_image.test_set if per_image else None,
            gate_score=score_name,
            figures=[f"figures/attention/{f.name}" for f in figures],
        )
    )

    def log_and_register() -> tuple[str, str]:
        """A new run with the reports and the model, and a new version of it: (version, run)."""
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{decoder}") as run:
            params = {**flatten_dict(config), **flatten(cfg, "register.")}
            mlflow.log_params({k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()})
            mlflow.log_metrics(metrics)
            mlflow.set_tags(tags)
            mlflow.log_artifact(str(metrics_path), artifact_path="reports")
            mlflow.log_artifact(str(model_dir / "config.json"), artifact_path="reports")
            if per_image_path is not None:
                # Under the name the gate reads back, whatever the file is called here.
                text = Path(per_image_path).read_text(encoding="utf-8")
                mlflow.log_text(text, PER_IMAGE_ARTIFACT)
            if train_log is not None and Path(train_log).is_file():
                mlflow.log_artifact(str(train_log), artifact_path="reports")
            for figure in figures:
                mlflow.log_artifact(str(figure), artifact_path="figures/attention")
            mlflow.log_text(card, "model_card.md")
            info = log_captioner(model_dir, beam_size=cfg.beam_size, example_image=example_image)
        version_tags = {**tags, key: repr(metrics[key]), SCORE_TAG: score_name, INPUTS_TAG: inputs}
        if per_image is not None:
            version_tags["test_set.references"] = per_image.test_set
            version_tags["test_set.n_images"] = str(len(per_image))
        # The tags are written with the version, in one transaction: a version found by its
        # INPUTS_TAG is complete.
        registered = mlflow.register_model(info.model_uri, name, tags=version_tags)
        return str(registered.version), run.info.run_id

    client = mlflow.MlflowClient()
    reports = [metrics_path, per_image_path, train_log, *figures]
    inputs = inputs_digest(cfg, model_dir, reports, example_image, data_source)
    existing = registered_from(client, name, inputs)
    if existing is None:
        version, run_id = log_and_register()
    else:
        version, run_id = str(existing.version), existing.run_id
        logger.info(
            "reusing version %s of %s: registered from these same inputs before "
            "(a re-run, e.g. of an interrupted registration)",
            version,
            name,
        )
    if existing is None or not (existing.description or "").startswith(card):
        # (a reused version keeps its description: the card and the registry log after it)
        client.update_model_version(name, version, description=card)
    client.set_registered_model_alias(name, CHALLENGER, version)
    decision = promote(
        client,
        name,
        version,
        cfg.gate,
        score_name,
        by="register stage",
        apply=cfg.auto_promote,
    )
    client.set_tag(run_id, "promotion.decision", decision.decision)

    aliases = client.get_model_version(name, version).aliases
    record = {
        "model_name": name,
        "version": version,
        "run_id": run_id,
        "aliases": sorted(aliases),
        "decision": decision.decision,
        "reason": decision.reason,
        "champion_before": decision.champion_before,
        "metric": key,
        "new_value": metrics[key],
        "gate_score": score_name,
        "gate": decision.comparison.result.to_dict() if decision.comparison else None,
    }
    write_json(out_path, record)
    return record


def inputs_digest(
    cfg: RegisterConfig,
    model_dir: Path,
    reports: list[Path | None],
    example_image: bytes | None,
    data_source: str,
) -> str:
    """sha256 over what a registration records: every file of the model directory, the report
    files (a missing one counts as missing), the input example, the data source and the
    register config, less the gate's settings (the gate runs again on a reused version), with
    the name registered under rather than how it was spelled (``""`` or ``captioner``)."""
    digest = hashlib.sha256()
    model_files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    for path in model_files:
        digest.update(f"model/{path.relative_to(model_dir).as_posix()}:".encode())
        digest.update(file_digest(path).encode())
    for path in reports:
        found = path is not None and Path(path).is_file()
        digest.update(f"report/{Path(path).name if path else ''}:".encode())
        digest.update(file_digest(path).encode() if found else b"missing")
    digest.update(b"example:" + hashlib.sha256(example_image or b"").hexdigest().encode())
    config = {
        k: v
        for k, v in flatten(cfg, "register.").items()
        if not k.startswith(("register.gate.", "register.auto_promote"))
    }
    config["register.model_name"] = cfg.registered_name(data_source)
    digest.update(f"source:{data_source}".encode())
    digest.update(b"config:" + json.dumps(config, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def registered_from(client: mlflow.MlflowClient, name: str, inputs: str) -> ModelVersion | None:
    """The earliest version of ``name`` registered from ``inputs`` (see ``inputs_digest``)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:  # no such registered model yet
        return None
    matching = [v for v in versions if v.tags.get(INPUTS_TAG) == inputs]
    return min(matching, key=lambda v: int(v.version), default=None)


def validation_metrics(train_log: Path | None) -> dict[str, float]:
    """``val.loss_last``, ``val.loss_best`` and ``val.best_epoch`` from the train stage's CSV."""
    if train_log is None or not Path(train_log).is_file():
        return {}
    with open(train_log, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss") not in (None, "")]
    if not rows:
        return {}
    try:
        losses = [(float(r["val_loss"]), int(float(r["epoch"]))) for r in rows]
    except (KeyError, ValueError) as exc:
        raise BadInputError(
            f"{train_log}: expected numeric 'epoch' and 'val_loss' columns ({exc})"
        ) from None
    best, best_epoch = min(losses)
    return {
        "val.loss_last": losses[-1][0],
        "val.loss_best": best,
        "val.best_epoch": float(best_epoch),
    }


def _encoder_name(config: dict[str, Any]) -> str:
    encoder = config.get("encoder")
    if isinstance(encoder, dict):
        return str(encoder.get("encoder") or encoder.get("name") or "unknown")
    return str(encoder or "unknown")


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json_input(path, "not found")
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
