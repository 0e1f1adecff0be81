"""common.precision through training, the saved model and decoding, on a tiny model (CPU):
fp32 computes exactly as without autocast, the resolved precision is recorded, and a model
trained in one precision decodes in another."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from test_loop import assert_same_weights, train, weights

from captioning import devices
from captioning.config import FeaturesConfig, ShardConfig, VocabConfig, load_params
from captioning.data.images import load_rgb
from captioning.data.shards import iter_samples, split_captions, write_shards
from captioning.data.vocab import build_vocab
from captioning.features.cache import FeatureCache, extract_features
from captioning.inference import ENV_PRECISION, Captioner
from captioning.training import tracked
from captioning.training.loop import TrainResult

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from conftest import make_layout

    root = tmp_path_factory.mktemp("precision")
    make_layout(root / "raw", {"train": 8, "val": 2, "test": 2})
    write_shards(root / "raw", root / "shards", ShardConfig())
    cfg = FeaturesConfig(encoder="small_cnn", pretrained=False, num_workers=0)
    extract_features(root / "shards", root / "features", cfg, torch.device("cpu"), seed=0)
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), VocabConfig())
    vocab.save(root / "vocab.json")
    return root


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """This machine's case (AVX2 only), whatever CPU runs the test."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)


def config(root: Path, name: str) -> dict:
    return json.loads((root / "models" / name / "config.json").read_text())


@pytest.fixture(scope="module")
def fp32_and_bf16(workspace) -> Path:
    """One model trained in fp32 (no autocast anywhere: torch.autocast raises), one in bf16."""
    with pytest.MonkeyPatch.context() as patch:

        def no_autocast(*args, **kwargs):
            raise AssertionError("autocast entered by an fp32 run")

        patch.setattr(torch, "autocast", no_autocast)
        assert train(workspace, "fp32", precision="fp32").precision == "fp32"
    assert train(workspace, "bf16", precision="bf16").precision == "bf16"
    return workspace


def test_the_features_record_the_precision_they_were_computed_in(workspace):
    meta = FeatureCache.open(workspace / "features", "train").meta
    assert meta["precision"] == devices.resolve_precision("auto", torch.device("cpu"))


def test_the_model_config_records_the_resolved_precision(fp32_and_bf16):
    assert config(fp32_and_bf16, "fp32")["precision"] == "fp32"
    assert config(fp32_and_bf16, "bf16")["precision"] == "bf16"
    # the features' precision rides along with the rest of the encoder's record
    assert "precision" in config(fp32_and_bf16, "fp32")["encoder"]


def test_auto_on_a_cpu_without_bf16_is_the_fp32_run_to_the_bit(fp32_and_bf16, cpu_without_bf16):
    assert train(fp32_and_bf16, "auto", precision="auto").precision == "fp32"
    assert_same_weights(weights(fp32_and_bf16, "fp32"), weights(fp32_and_bf16, "auto"))
    recorded = [config(fp32_and_bf16, name) for name in ("auto", "fp32")]
    for record in recorded:
        del record["training"]["train_seconds"]
    assert recorded[0] == recorded[1]


def test_bf16_training_computes_otherwise(fp32_and_bf16):
    """The setting takes effect: the bf16 run's weights are not the fp32 run's (but close)."""
    fp32, bf16 = weights(fp32_and_bf16, "fp32"), weights(fp32_and_bf16, "bf16")
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)
    floats = [v for v in bf16.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)  # fp32 master weights


@pytest.mark.parametrize("trained", ["fp32", "bf16"])
def test_a_model_decodes_in_either_precision(fp32_and_bf16, trained, monkeypatch):
    root = fp32_and_bf16
    images = [load_rgb(jpg) for _, jpg in iter_samples(root / "shards", "test")]
    results = {}
    for decoding in ("fp32", "bf16"):
        monkeypatch.setenv(ENV_PRECISION, decoding)  # how predict and serving are told
        captioner = Captioner.load(root / "models" / trained)
        assert captioner.precision == decoding
        results[decoding] = captioner.caption(images, beam_size=2)
    for fp32, bf16 in zip(results["fp32"], results["bf16"], strict=True):
        assert math.isfinite(bf16.score) and bf16.score < 0 and bf16.words
        assert bf16.attention is not None and bf16.attention.dtype == "float32"
        assert bf16.score == pytest.approx(fp32.score, rel=0.1)


def test_fp16_decoding_on_the_cpu_is_refused(fp32_and_bf16):
    with pytest.raises(devices.ConfigError, match="fp16 needs a CUDA device"):
        Captioner.load(fp32_and_bf16 / "models" / "fp32", precision="fp16")


def test_the_training_run_logs_the_setting_and_what_it_resolved_to(
    workspace, tmp_path, monkeypatch
):
    """The MLflow run's params: common.precision as set, precision as resolved (by the loop)."""
    import mlflow

    seen = {}

    def fake_train(*args, precision, on_epoch, on_step, **kwargs):
        seen["precision"] = precision
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text("{}")
        return TrainResult([], 1.0, 10, precision="bf16")

    monkeypatch.setattr(tracked, "train_decoder", fake_train)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["register"]["experiment"] = "precision-test"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    params = load_params(tmp_path / "params.yaml")
    tracked.train_tracked(
        params,
        "soft_attention",
        features_dir=workspace / "features",
        vocab_path=workspace / "vocab.json",
        model_dir=tmp_path / "model",
        log_path=tmp_path / "log.csv",
        checkpoint_dir=tmp_path / "checkpoints",
    )
    assert seen["precision"] == "auto"
    (run,) = mlflow.search_runs(experiment_names=["precision-test"], output_format="list")
    assert run.data.params["common.precision"] == "auto"
    assert run.data.params["precision"] == "bf16"


def test_a_model_saved_before_precision_was_recorded_still_loads(fp32_and_bf16, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(fp32_and_bf16 / "models" / "bf16", old)
    recorded = config(fp32_and_bf16, "bf16")
    del recorded["precision"], recorded["encoder"]["precision"]
    (old / "config.json").write_text(json.dumps(recorded))
    images = [load_rgb(jpg) for _, jpg in iter_samples(fp32_and_bf16 / "shards", "test")]
    new_captions = Captioner.load(fp32_and_bf16 / "models" / "bf16", precision="fp32")
    old_captions = Captioner.load(old, precision="fp32")
    assert [r.caption for r in old_captions.caption(images)] == [
        r.caption for r in new_captions.caption(images)
    ]
