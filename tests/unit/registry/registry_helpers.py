"""Tiny model directories and evaluate-stage reports for the registry tests.

A model directory is what the train stage writes (config.json, vocab.json, decoder.safetensors);
its weights are never loaded here (a stand-in ``captioning.inference`` is used where the pyfunc is
called), so only the registry plumbing and the gate are under test. The reports are what the
evaluate stage writes: metrics.json, per_image.json (per image: references and, per decoding, the
caption and its scores), attention/*.png, plus the train stage's train_log.csv.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from captioning.data.vocab import SPECIALS, Vocab

N_IMAGES = 40
REFERENCES = ("a red circle", "a blue square above a green circle")


def champion_scores(n: int = N_IMAGES) -> np.ndarray:
    return np.random.default_rng(11).gamma(1.5, 1.2, size=n)


def shifted(scores: np.ndarray, gain: float, noise: float, seed: int) -> np.ndarray:
    """Scores of another model: ``gain`` better on average, each image off by ``noise``."""
    out = scores + gain + np.random.default_rng(seed).normal(0.0, noise, size=scores.size)
    return np.clip(out, 0.0, None)


def make_model(
    root: Path,
    name: str,
    scores: np.ndarray,
    *,
    metric: str = "CIDEr",
    decoding: str = "beam",
    references: tuple[str, ...] = REFERENCES,
    figures: int = 0,
) -> dict[str, Path]:
    """models/<name>/ and reports/<name>/ for one tiny model with these per-image test scores."""
    model_dir = root / "models" / name
    model_dir.mkdir(parents=True)
    (model_dir / "decoder.safetensors").write_bytes(b"stand-in weights")
    Vocab(itos=(*SPECIALS, "a"), max_length=24).save(model_dir / "vocab.json")
    config = {
        "decoder": name,
        "seed": 42,
        "vocab_size": 2,
        "train": {"epochs": 3, "lr": 0.005, "model": {"hidden_dim": 8}},
        "encoder": {"encoder": "efficientnet_lite0", "grid": 7, "channels": 320},
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    reports = root / "reports" / name
    reports.mkdir(parents=True)
    mean = float(np.mean(scores))
    corpus = {"BLEU-4": 0.3, metric: mean, "object_accuracy_3obj": 0.6}
    metrics = {"test": {"greedy": corpus, decoding: corpus}}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    per_image = [
        {
            "image_id": 100 + i,
            "references": list(references),
            decoding: {"caption": "a red circle", metric: float(s), "BLEU-4": 0.5},
        }
        for i, s in enumerate(scores)
    ]
    (reports / "per_image.json").write_text(json.dumps(per_image))
    (reports / "train_log.csv").write_text(
        "epoch,train_loss,val_loss,lr\n1,2.0,0.9,0.005\n2,1.4,0.7,0.004\n3,1.2,0.75,0.001\n"
    )
    if figures:
        (reports / "attention").mkdir()
        for i in range(figures):
            Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(reports / "attention" / f"{i}.png")
    return {
        "model_dir": model_dir,
        "metrics_path": reports / "metrics.json",
        "per_image_path": reports / "per_image.json",
        "figures_dir": reports / "attention",
        "train_log": reports / "train_log.csv",
    }


def write_store_root(root: Path) -> None:
    """dvc.yaml (marks the repo root) and a dvc.lock with a data and a per-decoder stage."""
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  fetch:\n    cmd: x\n    outs:\n"
        "    - path: data/raw\n      hash: md5\n      md5: abc.dir\n"
        "  features:\n    cmd: x\n    outs:\n"
        "    - path: data/features\n      hash: md5\n      md5: fea.dir\n"
        "  train@a:\n    cmd: x\n    outs:\n"
        "    - path: models/a\n      hash: md5\n      md5: def.dir\n"
    )
