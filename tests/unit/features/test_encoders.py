from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captioning.features.encoders import (
    ENCODERS,
    efficientnet_lite0_weights_path,
    get_encoder_spec,
    normalisation,
)
from captioning.features.weights import EncoderWeightsError

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


# The encoder table of docs/architecture.md: input size, grid, channels.
DOCUMENTED = {
    "efficientnet_lite0": (224, 7, 1280),
    "resnet101": (256, 14, 2048),
    "resnet50": (224, 7, 2048),
    "inception_v3": (299, 8, 2048),
    "vgg16": (224, 14, 512),
    "densenet201": (224, 1, 1920),
    "alexnet": (224, 1, 4096),
    "small_cnn": (224, 7, 256),
}
# Non-square ones: (input height, width), (grid height, width), channels.
DOCUMENTED_WIDE = {"captcha_cnn": ((60, 160), (4, 20), 128)}


def test_registry_is_the_documented_table() -> None:
    assert sorted(ENCODERS) == sorted({**DOCUMENTED, **DOCUMENTED_WIDE})
    for name, (input_hw, grid_hw, channels) in DOCUMENTED_WIDE.items():
        spec = ENCODERS[name]
        assert (spec.input_hw, spec.grid_hw, spec.channels) == (input_hw, grid_hw, channels)
        assert spec.locations == grid_hw[0] * grid_hw[1]
    for name, (size, grid, channels) in DOCUMENTED.items():
        spec = ENCODERS[name]
        assert (spec.input_size, spec.grid, spec.channels) == (size, grid, channels), name


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_encoder_gives_its_documented_shape(name: str) -> None:
    spec = get_encoder_spec(name)
    size, grid, channels = DOCUMENTED[name]
    encoder = spec.build(False, seed=0)
    assert not encoder.training
    x = torch.stack([spec.preprocess(im) for im in _random_images(2)])
    assert x.shape == (2, 3, size, size)
    with torch.inference_mode():
        fmap = encoder(x)
    assert fmap.shape == (2, channels, grid, grid)
    # Random weights still give float16-representable, non-degenerate features.
    half = fmap.half()
    assert torch.isfinite(half).all()
    assert 0.05 < fmap.abs().mean().item() < 50
    assert (half != 0).float().mean().item() > 0.2
    # The blocks partition the trunk: fine-tuning "the last N blocks" is well defined.
    in_blocks = [id(p) for block in encoder.blocks() for p in block.parameters()]
    assert len(in_blocks) == len(set(in_blocks))
    unused = set()
    if name == "efficientnet_lite0":  # the classifier is kept (and tested) but not used
        unused = {id(p) for p in encoder.net._fc.parameters()}
    assert set(in_blocks) == {id(p) for p in encoder.parameters()} - unused


def test_random_weights_from_a_seed_leave_the_global_rng_alone() -> None:
    spec = get_encoder_spec("small_cnn")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = spec.build(False, seed=11).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    b = spec.build(False, seed=11).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_offline_without_the_weights_file_names_it(tmp_path, monkeypatch) -> None:
    from urllib.error import URLError

    def no_network(url, dst, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    spec = get_encoder_spec("resnet101")
    with pytest.raises(EncoderWeightsError) as excinfo:
        spec.build(True)
    message = str(excinfo.value)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet101-cd907fc2.pth"
    assert f"Place the file resnet101-cd907fc2.pth at {expected}" in message
    assert "https://download.pytorch.org/models/resnet101-cd907fc2.pth" in message
    assert "features.weights_path" in message and "pretrained: false" in message


def test_small_cnn_has_no_published_weights() -> None:
    with pytest.raises(EncoderWeightsError, match="'small_cnn' has no published weights"):
        get_encoder_spec("small_cnn").build(True)


def test_pretrained_weights_from_the_hub_cache_or_a_file(tmp_path, monkeypatch) -> None:
    """DenseNet's torchvision checkpoint has old key names (norm.1): they are mapped."""
    from torchvision import models

    def no_network(*args, **kwargs):
        raise AssertionError("must not download a file that is in the cache")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    spec = get_encoder_spec("densenet201")
    torch.manual_seed(1)
    state = models.densenet201().state_dict()
    old_names = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in state.items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_names
    cached = spec.weights.cache_path()
    assert cached.parent == tmp_path / "torch" / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    torch.save(old_names, cached)
    from_cache = spec.build(True)
    probe = "net.features.denseblock4.denselayer32.conv2.weight"
    torch.testing.assert_close(from_cache.state_dict()[probe], state[probe[4:]])

    # weights_path: a torchvision checkpoint, or an encoder's own (e.g. fine-tuned) state.
    from_file = spec.build(True, weights_path=cached)
    torch.testing.assert_close(from_file.state_dict()[probe], state[probe[4:]])
    own = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in from_cache.state_dict().items()}, str(own))
    again = spec.build(True, weights_path=own)
    torch.testing.assert_close(again.state_dict()[probe], state[probe[4:]])


def test_weights_that_do_not_fit_are_refused(tmp_path) -> None:
    path = tmp_path / "small.pt"
    torch.save(get_encoder_spec("small_cnn").build(False, seed=0).net.state_dict(), path)
    with pytest.raises(EncoderWeightsError, match=rf"{path}: the weights do not fit"):
        get_encoder_spec("efficientnet_lite0").build(True, weights_path=path)
    with pytest.raises(EncoderWeightsError, match="weights file not found"):
        get_encoder_spec("small_cnn").build(True, weights_path=tmp_path / "nope.pt")
    with pytest.raises(EncoderWeightsError, match="given with pretrained: false"):
        get_encoder_spec("small_cnn").build(False, weights_path=path)
    # a trained small CNN loads from its file
    encoder = get_encoder_spec("small_cnn").build(True, weights_path=path)
    assert encoder.net.features[0][0].weight.shape == (32, 3, 3, 3)


def test_workers_pixels_normalised_in_a_batch_equal_preprocess_exactly() -> None:
    images = _random_images(4)
    pixels = torch.stack([SPEC.pixels(im) for im in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 224, 224, 3)
    batch = SPEC.normalize(pixels)
    assert batch.is_contiguous(memory_format=torch.channels_last)  # no copy before the encoder
    for i, image in enumerate(images):
        assert torch.equal(batch[i], SPEC.preprocess(image))


def test_captcha_cnn_reads_wide_images_into_a_wide_grid() -> None:
    spec = get_encoder_spec("captcha_cnn")
    assert spec.weights is None  # trained from scratch only
    images = _random_images(2) + [Image.new("RGB", (160, 60), (200, 30, 30))]
    x = torch.stack([spec.preprocess(im) for im in images])
    assert x.shape == (3, 3, 60, 160)  # resized to 160 wide, 60 high
    encoder = spec.build(False, seed=0)
    with torch.inference_mode():
        fmap = encoder(x)
    assert fmap.shape == (3, 128, 4, 20)
    assert torch.isfinite(fmap).all() and fmap.abs().mean().item() > 0.05
    # Grayscale: an image and its channel-permuted copy (same mean) give the same features.
    swapped = x[:, [2, 0, 1]]
    with torch.inference_mode():
        torch.testing.assert_close(encoder(swapped), fmap)
    blocks = [p for block in encoder.blocks() for p in block.parameters()]
    assert len(encoder.blocks()) == 6 and len(blocks) == len(list(encoder.parameters()))
    assert 0.3e6 < sum(p.numel() for p in encoder.parameters()) < 0.4e6


def test_the_normalisation_is_built_once_per_device(monkeypatch) -> None:
    pixels = torch.stack([SPEC.pixels(im) for im in _random_images(2)])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (SPEC.mean, SPEC.std))
    expected = (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    first = SPEC.normalize(pixels)
    torch.testing.assert_close(first, expected)
    scale, _ = normalisation(SPEC.mean, SPEC.std, pixels.device)
    assert normalisation(SPEC.mean, SPEC.std, pixels.device)[0] is scale  # the same tensors
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: pytest.fail("built from lists again"))
    assert torch.equal(SPEC.normalize(pixels), first)
