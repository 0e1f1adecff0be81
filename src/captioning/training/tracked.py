"""The train stage's work: train a decoder inside an MLflow run and write its DVC plot."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import mlflow

from captioning.config import ConfigError, Params, flatten
from captioning.io import atomic_path
from captioning.registry.tracking import (
    configure_mlflow,
    get_or_create_experiment,
    lineage_tags,
    repo_root,
)
from captioning.training.fine_tune import train_fine_tuned
from captioning.training.loop import TrainResult, train_decoder

logger = logging.getLogger(__name__)

UPSTREAM_STAGES = ("fetch", "shard", "vocab", "features")


def train_tracked(
    params: Params,
    *,
    features_dir: Path | None,
    vocab_path: Path,
    model_dir: Path,
    log_path: Path,
    checkpoint_dir: Path,
    shards_dir: Path | None = None,
) -> TrainResult:
    """Train on cached features, or, with ``train.fine_tune.enabled``, on the images of
    ``shards_dir`` with the encoder's last blocks trained too."""
    cfg = params.train
    if cfg.fine_tune.enabled and shards_dir is None:
        raise ConfigError("train.fine_tune.enabled needs the shards (--shards) to read images")
    root = repo_root()
    configure_mlflow(root)
    experiment_id = get_or_create_experiment(params.register.experiment, root)
    tags = {**lineage_tags(root, UPSTREAM_STAGES), "stage": "train", "decoder": cfg.decoder}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{cfg.decoder}", tags=tags):
        mlflow.log_params(
            {
                **flatten(cfg, "train."),
                **flatten(params.features, "features."),
                "common.seed": params.common.seed,
            }
        )

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

        if cfg.fine_tune.enabled:
            assert shards_dir is not None
            result = train_fine_tuned(
                shards_dir,
                vocab_path,
                model_dir,
                cfg,
                params.features,
                seed=params.common.seed,
                checkpoint_dir=checkpoint_dir,
                on_epoch=on_epoch,
            )
        else:
            result = train_decoder(
                features_dir,
                vocab_path,
                model_dir,
                cfg,
                seed=params.common.seed,
                checkpoint_dir=checkpoint_dir,
                on_epoch=on_epoch,
            )
        write_training_log(log_path, result.history)
        mlflow.log_metrics({"train_seconds": result.seconds, "parameters": result.parameters})
        mlflow.log_artifact(str(log_path))
        mlflow.log_artifact(str(model_dir / "config.json"))
    logger.info("trained in %.0f s", result.seconds)
    return result


def write_training_log(path: Path, history: list[dict[str, float]]) -> None:
    """One row per epoch; DVC draws it as the loss curve."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "train_loss", "val_loss", "lr"])
        writer.writeheader()
        for record in history:
            writer.writerow(record)
