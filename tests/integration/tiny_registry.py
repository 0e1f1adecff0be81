"""A tiny captioner trained through the pipeline's own code (layout -> shards -> features ->
vocab -> train), registered in a temporary SQLite MLflow store, and a free local port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from captioning.config import (
    DecoderConfig,
    EarlyStoppingConfig,
    FeaturesConfig,
    RegisterConfig,
    ShardConfig,
    TrainConfig,
    VocabConfig,
)
from captioning.data.shards import split_captions, write_shards
from captioning.data.vocab import build_vocab
from captioning.features.cache import extract_features
from captioning.registry.register import register_model
from captioning.training.loop import train_decoder
from captioning.training.sources import CachedFeatures

# One step per epoch; lr and no dropout so that 12 steps learn "a picture number ...".
TRAIN = TrainConfig(
    model=DecoderConfig(
        embed_dim=16,
        hidden_dim=16,
        attention_dim=8,
        feature_proj_dim=16,
        dropout=0.0,
        feature_dropout=0.0,
    ),
    epochs=12,
    batch_size=8,
    lr=0.05,
    warmup_steps=1,
    # CIDEr: make_layout's scenes have no objects (params.yaml's object_accuracy needs them)
    early_stopping=EarlyStoppingConfig(metric="CIDEr"),
)


def train_tiny_captioner(root: Path, level: str = "word") -> Path:
    """models/soft_attention from 8 training images (features of a random-weight small CNN);
    ``level: char`` makes it a reader that spells its captions letter by letter."""
    from conftest import make_layout

    make_layout(root / "raw", {"train": 8, "val": 2, "test": 2})
    write_shards(root / "raw", root / "shards", ShardConfig())
    torch.manual_seed(0)
    features = FeaturesConfig(encoder="small_cnn", pretrained=False, batch_size=8, num_workers=0)
    extract_features(root / "shards", root / "features", features, seed=0)
    vocab_cfg = VocabConfig(level=level, max_length=24 if level == "word" else 16)
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), vocab_cfg)
    vocab.save(root / "vocab.json")
    model_dir = root / "models" / "soft_attention"
    train_decoder(
        "soft_attention",
        CachedFeatures(root / "features"),
        root / "vocab.json",
        model_dir,
        TRAIN,
        seed=7,
        checkpoint_dir=root / "checkpoints",
    )
    return model_dir


def register(root: Path, model_dir: Path, cider: float, cfg: RegisterConfig | None = None) -> dict:
    """Register ``model_dir`` with a one-number metrics file (no per-image scores); the input
    example is the first test image if there are shards."""
    from captioning.data.shards import iter_samples

    example = None
    if (root / "shards").is_dir():
        example = next(jpg for _, jpg in iter_samples(root / "shards", "test"))
    (root / "dvc.yaml").touch()
    metrics = root / f"metrics-{cider}.json"
    metrics.write_text(json.dumps({"test": {"beam": {"CIDEr": cider}}}))
    return register_model(
        model_dir,
        metrics,
        cfg or RegisterConfig(model_name="captioner"),  # the tiny layout is no fetch.source
        out_path=root / f"registration-{cider}.json",
        root=root,
        example_image=example,
        data_source="tiny",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float, alive=lambda: True) -> None:
    """Poll ``url`` until it answers 200; fail early if ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server died before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    health_url: str,
    startup_seconds: float,
) -> Iterator[subprocess.Popen]:
    """Start ``command`` in its own process group with its output in ``log_path``, wait until
    ``health_url`` answers, and stop that group (by the server's pid) on exit. If startup or
    the body fails, the log's tail is printed."""
    log = open(log_path, "wb")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(health_url, startup_seconds, alive=lambda: server.poll() is None)
        yield server
    except Exception:
        log.flush()
        print(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        log.close()
