from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.features.encoders import (
    ENCODERS,
    efficientnet_lite0_weights_path,
    get_encoder_spec,
)

SPEC = get_encoder_spec("efficientnet_lite0")


def _random_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(90, 120), (224, 224), (300, 200), (50, 64)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def pretrained_encoder() -> torch.nn.Module:
    return SPEC.build(True)


def test_registry_lists_efficientnet_lite0() -> None:
    assert "efficientnet_lite0" in ENCODERS
    assert (SPEC.input_size, SPEC.grid, SPEC.channels) == (224, 7, 1280)
    assert SPEC.locations == 49


def test_unknown_encoder_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet9000'; choose one of \["):
        get_encoder_spec("resnet9000")


def test_preprocess_shape_dtype_and_range() -> None:
    for image in _random_images(4):
        x = SPEC.preprocess(image)
        assert x.shape == (3, 224, 224)
        assert x.dtype == torch.float32
        assert x.is_contiguous()
    # (pixel - 127) / 128: white -> 1, black -> -127/128
    white = SPEC.preprocess(Image.new("RGB", (10, 20), (255, 255, 255)))
    black = SPEC.preprocess(Image.new("RGB", (10, 20), (0, 0, 0)))
    torch.testing.assert_close(white, torch.ones_like(white))
    torch.testing.assert_close(black, torch.full_like(black, -127 / 128))


def test_preprocess_converts_non_rgb() -> None:
    gray = Image.new("L", (30, 30), 127)
    x = SPEC.preprocess(gray)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x, torch.zeros_like(x))


def test_random_encoder_shape_and_nondegenerate_features() -> None:
    torch.manual_seed(0)
    model = SPEC.build(False)
    assert not model.training
    x = torch.stack([SPEC.preprocess(im) for im in _random_images(2)])
    with torch.no_grad():
        fmap = model(x)
    assert fmap.shape == (2, 1280, 7, 7)
    # The variance-preserving init keeps features O(1), so float16 does not flush them to 0.
    assert 0.1 < fmap.mean().item() < 6.0
    assert (fmap.half() != 0).float().mean().item() > 0.2


def test_random_encoder_is_seeded() -> None:
    torch.manual_seed(3)
    a = SPEC.build(False).state_dict()
    torch.manual_seed(3)
    b = SPEC.build(False).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_pretrained_encoder_shape(pretrained_encoder: torch.nn.Module) -> None:
    assert not pretrained_encoder.training
    x = torch.stack([SPEC.preprocess(im) for im in _random_images(2)])
    with torch.no_grad():
        fmap = pretrained_encoder(x)
    assert fmap.shape == (2, 1280, 7, 7)
    assert torch.isfinite(fmap).all()


def test_pretrained_weights_match_the_checkpoint_exactly(
    pretrained_encoder: torch.nn.Module,
) -> None:
    checkpoint = torch.load(
        efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True
    )
    loaded = pretrained_encoder.net.state_dict()
    assert set(loaded) == set(checkpoint)
    for name, tensor in checkpoint.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_normalisation_matches_the_stem_batch_norm_statistics(
    pretrained_encoder: torch.nn.Module,
) -> None:
    # The stem conv is linear: for an average ImageNet image (RGB mean 0.485, 0.456, 0.406)
    # normalised with the spec's mean/std, its per-channel output mean is sum(W) * input mean,
    # which must track the running mean the stem BN learned. With the ImageNet mean/std the
    # normalised input mean is 0, which predicts 0 everywhere and does not fit.
    net = pretrained_encoder.net
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406])
    input_mean = (imagenet_mean - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    with torch.no_grad():
        predicted = (net._conv_stem.weight.sum(dim=(2, 3)) * input_mean).sum(dim=1)
        running = net._bn0.running_mean
        corr = torch.corrcoef(torch.stack([predicted, running]))[0, 1].item()
        rmse = (predicted - running).pow(2).mean().sqrt().item()
    assert corr > 0.9
    assert rmse < 0.6 * running.pow(2).mean().sqrt().item()


def test_pretrained_classifies_a_known_photo(pretrained_encoder: torch.nn.Module) -> None:
    # matplotlib ships a portrait of Grace Hopper in uniform; ImageNet class 652 is
    # "military uniform". Checks weights + preprocessing end to end (the classifier head is
    # kept in the wrapped network, only the feature map is used by the pipeline).
    cbook = pytest.importorskip("matplotlib.cbook")
    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (FileNotFoundError, OSError):
        pytest.skip("matplotlib sample data not installed")
    image = Image.open(path).convert("RGB")
    with torch.no_grad():
        logits = pretrained_encoder.net(SPEC.preprocess(image)[None])
    assert logits.argmax(dim=1).item() == 652
