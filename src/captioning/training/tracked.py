"""The train and scst stages' work: train a decoder inside an MLflow run and write its DVC plot.

MLflow gets the params (``precision``: what ``common.precision`` resolved to here), the training loss every ``train.log_every_steps`` steps, per epoch the
losses, the mean scheduled-sampling probability and the validation BLEU/CIDEr-D, then the best
epoch and the model directory (the best epoch's weights) as artifacts.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import mlflow

from captioning.config import ConfigError, Params, ScstConfig, flatten
from captioning.io import atomic_path, write_json
from captioning.models import DECODERS
from captioning.registry.tracking import (
    configure_mlflow,
    get_or_create_experiment,
    lineage_tags,
    pipeline_dir,
)
from captioning.training.fine_tune import EncodedImages
from captioning.training.loop import TrainResult, train_decoder
from captioning.training.scst_phase import scst_phase
from captioning.training.sources import BatchSource, CachedFeatures

logger = logging.getLogger(__name__)

UPSTREAM_STAGES = ("fetch", "shard", "vocab", "features")


def train_tracked(
    params: Params,
    decoder: str,
    *,
    features_dir: Path | None,
    vocab_path: Path,
    model_dir: Path,
    log_path: Path,
    checkpoint_dir: Path,
    shards_dir: Path | None = None,
    summary_path: Path | None = None,
) -> TrainResult:
    """Train ``decoder`` on cached features, or, with ``train.fine_tune.enabled``, on the
    images of ``shards_dir`` with the encoder's last blocks trained too. ``summary_path`` gets
    its size, time and best epoch (for the comparison)."""
    cfg = params.train
    if decoder not in DECODERS:
        raise ConfigError(
            f"train.decoders: unknown decoder {decoder!r}; choose from {sorted(DECODERS)}"
        )
    train = partial(
        train_decoder,
        decoder,
        _batch_source(params, features_dir, shards_dir),
        vocab_path,
        model_dir,
        cfg,
        seed=params.common.seed,
        checkpoint_dir=checkpoint_dir,
        precision=params.common.precision,
        device_setting=params.common.device,
    )
    logged = {
        **flatten(cfg, "train."),
        "train.decoder": decoder,  # the run's decoder, under the key it always had
        **flatten(params.features, "features."),
    }
    paths = (model_dir, log_path, summary_path)
    return run_tracked(params, train, logged, stage="train", decoder=decoder, paths=paths)


def scst_tracked(
    params: Params,
    decoder: str,
    *,
    features_dir: Path | None,
    vocab_path: Path,
    start_dir: Path,
    model_dir: Path,
    log_path: Path,
    checkpoint_dir: Path,
    summary_path: Path | None = None,
) -> TrainResult:
    """Self-critical training of ``decoder`` from its cross-entropy model ``start_dir``, on the
    cached features, through the same loop; the model is named ``<decoder>_scst``."""
    if features_dir is None:
        raise ConfigError("self-critical training reads cached features (--features)")
    phase = scst_phase(params, decoder, features_dir, start_dir, vocab_path)
    train = partial(
        train_decoder,
        decoder,
        CachedFeatures(features_dir),
        vocab_path,
        model_dir,
        phase.train,
        seed=params.common.seed,
        checkpoint_dir=checkpoint_dir,
        objective=phase.objective,
        precision=params.common.precision,
        device_setting=params.common.device,
        init_weights=phase.init_weights,
        run_record=phase.record,
    )
    logged = {
        **flatten(params.scst, "scst."),
        "scst.decoder": decoder,
        "scst.start": str(start_dir),
    }
    paths = (model_dir, log_path, summary_path)
    model = ScstConfig(decoders=[decoder]).model_names()[0]  # <decoder>_scst
    return run_tracked(
        params, train, logged, stage="scst", decoder=decoder, paths=paths, model=model
    )


def run_tracked(
    params: Params,
    train: Callable[..., TrainResult],
    logged: dict[str, Any],
    *,
    stage: str,
    decoder: str,
    paths: tuple[Path, Path, Path | None],
    model: str | None = None,
) -> TrainResult:
    """``train`` inside an MLflow run named ``<stage>-<decoder>`` (the params ``logged``;
    metrics per step and epoch; the best epoch; the model as artifacts), writing the per-epoch
    log and the summary of ``paths`` (model directory, log CSV, summary JSON or None), which
    names the model ``model`` (default: the decoder)."""
    model_dir, log_path, summary_path = paths
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun only rank 0 records the run and writes the outputs.
        return train()
    root = pipeline_dir()
    configure_mlflow(root)
    experiment_id = get_or_create_experiment(params.register.experiment, root)
    tags = {**lineage_tags(root, UPSTREAM_STAGES), "stage": stage, "decoder": decoder}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{stage}-{decoder}", tags=tags):
        mlflow.log_params(
            {
                **logged,
                "common.seed": params.common.seed,
                "common.precision": params.common.precision,
                "common.device": params.common.device,
            }
        )

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

        def on_step(step: int, report: dict[str, float]) -> None:  # every log_every_steps
            mlflow.log_metrics({f"step_{k}": v for k, v in report.items()}, step=step)

        result = train(on_epoch=on_epoch, on_step=on_step)
        mlflow.log_param("precision", result.precision)  # auto resolves per machine
        write_training_log(log_path, result.history)
        summary = result.summary(model or decoder)
        if summary_path is not None:
            write_json(summary_path, summary)
            mlflow.log_artifact(str(summary_path))
        metric = result.best.get("metric", "metric")
        mlflow.log_metrics(
            {
                "train_seconds": result.seconds,
                "parameters": result.parameters,
                "best_epoch": result.best.get("epoch", 0),
                f"best_val_{metric}": result.best.get("value", 0.0),
                "stopped_early": float(result.stopped_early),
            }
        )
        mlflow.log_artifact(str(log_path))
        # The model directory holds the best epoch's weights (decoder, encoder if fine-tuned).
        mlflow.log_artifacts(str(model_dir), artifact_path="best_model")
    logger.info("trained in %.0f s", result.seconds)
    return result


def _batch_source(
    params: Params, features_dir: Path | None, shards_dir: Path | None
) -> BatchSource:
    """The images of the shards through the encoder with ``train.fine_tune.enabled``, else the
    cached features."""
    if params.train.fine_tune.enabled:
        if shards_dir is None:
            raise ConfigError("train.fine_tune.enabled needs the shards (--shards) to read images")
        return EncodedImages(shards_dir, params.features)
    if features_dir is None:
        raise ConfigError("training on cached features needs them (--features)")
    return CachedFeatures(features_dir)


def write_training_log(path: Path, history: list[dict[str, float]]) -> None:
    """One row per epoch (losses, LR, sampling probability, validation scores where
    validated); DVC draws it as the loss curve."""
    fields = ["epoch", "train_loss", "val_loss", "lr"]
    for record in history:
        fields.extend(k for k in record if k not in fields)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for record in history:
            writer.writerow(record)
