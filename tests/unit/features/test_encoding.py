"""Loading an encoder for a run or a trained model, its recorded identity, and encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captioning.features.encoders import get_encoder_spec
from captioning.features.encoding import (
    ENCODER_WEIGHTS_FILE,
    encode_batch,
    encoder_for_model,
    encoder_identity,
    load_encoder,
)
from captioning.features.loader import FeatureCacheError
from captioning.features.weights import EncoderWeightsError, state_digest
from captioning.inference import Captioner

SPEC = get_encoder_spec("small_cnn")
CPU = torch.device("cpu")


def _random(seed: int) -> tuple[torch.nn.Module, dict]:
    model = load_encoder(SPEC, False, CPU, seed=seed)
    identity = encoder_identity(SPEC, model, pretrained=False, weights_path=None, seed=seed)
    return model, identity


def test_identity_records_the_seed_and_the_weights_digest() -> None:
    model, identity = _random(3)
    assert identity["weights"] == "random (seed 3)"
    assert identity["init_seed"] == 3
    assert identity["weights_sha256"] == state_digest(model)
    assert (identity["grid"], identity["channels"], identity["dtype"]) == (7, 256, "float16")
    assert "input_height" not in identity  # a square encoder's record has no heights


def test_a_model_rebuilds_its_random_encoder_from_the_recorded_seed() -> None:
    model, identity = _random(3)
    spec, rebuilt = encoder_for_model(identity, None, CPU)
    assert spec is SPEC
    assert state_digest(rebuilt) == state_digest(model)


def test_a_model_without_the_seed_of_its_random_encoder_is_refused() -> None:
    _, identity = _random(3)
    with pytest.raises(EncoderWeightsError, match="unrecorded seed"):
        encoder_for_model({**identity, "init_seed": None}, None, CPU)


def test_an_encoder_with_other_weights_than_recorded_is_refused() -> None:
    _, identity = _random(3)
    _, other = _random(4)
    with pytest.raises(EncoderWeightsError, match="not the same encoder"):
        encoder_for_model({**identity, "weights_sha256": other["weights_sha256"]}, None, CPU)


def test_a_fine_tuned_model_loads_its_own_encoder_weights(tmp_path: Path) -> None:
    tuned, _ = _random(5)
    state = {k: v.contiguous() for k, v in tuned.state_dict().items()}  # loaded channels_last
    save_file(state, str(tmp_path / ENCODER_WEIGHTS_FILE))
    _, identity = _random(3)  # what the features were made with, before fine-tuning
    _, loaded = encoder_for_model(
        {**identity, "weights_sha256": state_digest(tuned)}, tmp_path, CPU
    )
    assert state_digest(loaded) == state_digest(tuned)


def test_encode_batch_gives_float16_locations_by_channels() -> None:
    model, _ = _random(3)
    images = torch.randn(2, 3, 224, 224)
    feats = encode_batch(model, images, SPEC, CPU, precision="fp32")
    assert feats.shape == (2, 49, 256) and str(feats.dtype) == "float16"
    with torch.inference_mode():
        fmap = model(images)  # (2, 256, 7, 7): location (row 1, column 2) is row 1*7+2
    assert torch.allclose(torch.from_numpy(feats[:, 9]).float(), fmap[:, :, 1, 2], atol=1e-2)


def test_encode_batch_refuses_a_feature_map_its_spec_does_not_describe() -> None:
    model, _ = _random(3)
    with pytest.raises(FeatureCacheError, match="its spec says"):
        encode_batch(
            model, torch.randn(1, 3, 64, 64), SPEC, CPU, precision="fp32"
        )  # a 2x2 grid, not 7x7


def test_live_features_stay_on_the_device_with_the_cached_values(monkeypatch) -> None:
    """A Captioner's features are the cache's float16 values, not a trip through numpy."""
    model, _ = _random(0)
    images = [Image.new("RGB", (90, 60), colour) for colour in ((0, 0, 0), (200, 30, 90))]
    batch = torch.stack([SPEC.preprocess(image) for image in images])
    cached = encode_batch(model, batch, SPEC, CPU, precision="fp32")
    captioner = Captioner(model, SPEC, None, None, {}, CPU, precision="fp32")
    monkeypatch.setattr(torch.Tensor, "numpy", lambda *a: pytest.fail("copied to numpy"))
    live = captioner.encode(images)
    assert live.dtype == torch.float16 and live.device == CPU
    assert torch.equal(live, torch.from_numpy(cached))
