"""``captioning predict`` with the real Captioner on a tiny hand-built decoder.

The decoder's output layer is rigged (zero weights, one large bias) so that it always says
"circle": captions are exact, and the pretrained encoder still runs for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captioning.cli import main
from captioning.config import ConfigError, DecoderConfig, RegisterConfig, to_dict
from captioning.data.vocab import SPECIALS, Vocab
from captioning.inference import ENV_DEVICE, Captioner
from captioning.models import build_decoder

WORDS = ("a", "red", "circle")


def make_tiny_model(model_dir: Path) -> Path:
    torch.manual_seed(0)
    cfg = DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, feature_proj_dim=8)
    vocab = Vocab(itos=(*SPECIALS, *WORDS), max_length=24)
    grid, channels = 7, 1280
    decoder = build_decoder(
        "soft_attention", cfg, vocab_size=len(vocab), feature_dim=channels, num_locations=grid**2
    )
    with torch.no_grad():
        decoder.out.weight.zero_()
        decoder.out.bias.fill_(-10.0)
        decoder.out.bias[vocab.stoi["circle"]] = 10.0
    model_dir.mkdir(parents=True)
    weights = {k: v.detach().contiguous() for k, v in decoder.state_dict().items()}
    save_file(weights, str(model_dir / "decoder.safetensors"))
    vocab.save(model_dir / "vocab.json")
    config = {
        "decoder": "soft_attention",
        "train": {"model": to_dict(cfg)},
        "seed": 0,
        "vocab_size": len(vocab),
        "encoder": {
            "encoder": "efficientnet_lite0",
            "input_size": 224,
            "grid": grid,
            "channels": channels,
        },
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def is_circles(caption: str) -> bool:
    # Only the word is checked: the length limit belongs to the decoding tests.
    return bool(caption) and set(caption.split()) == {"circle"}


def write_jpeg(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).save(path, "JPEG")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setattr(sys, "path", list(sys.path))
        model_dir = make_tiny_model(root / "models" / "soft_attention")
        images = [write_jpeg(root / f"img{i}.jpg", seed=i) for i in range(2)]
        (root / "notes.txt").write_text("this is not an image\n")
        yield root, model_dir, images
        mlflow.set_tracking_uri(None)


def test_predict_with_model_directory(workspace, capsys):
    root, model_dir, images = workspace
    code = main(["predict", *map(str, images), "--model", str(model_dir), "--max-length", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [path for path, _ in lines] == [str(images[0]), str(images[1])]
    assert all(is_circles(caption) for _, caption in lines)


def test_predict_scores(workspace, capsys):
    root, model_dir, images = workspace
    code = main(["predict", str(images[0]), "--model", str(model_dir), "--beam", "1", "--scores"])
    out, _ = capsys.readouterr()
    assert code == 0
    path, caption, score = out.strip().split("\t")
    assert path == str(images[0])
    assert is_circles(caption)
    assert float(score) <= 0  # a log-probability (~0 here: the rigged decoder is certain)


def test_predict_non_image_exits_2_and_still_captions_the_rest(workspace, capsys):
    root, model_dir, images = workspace
    text = root / "notes.txt"
    code = main(
        ["predict", str(text), str(images[0]), "--model", str(model_dir), "--max-length", "2"]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert f"error: {text}: not a decodable image (" in err
    (line,) = out.splitlines()
    assert line.split("\t")[0] == str(images[0]) and is_circles(line.split("\t")[1])


def test_predict_from_registered_champion(workspace, capsys, monkeypatch):
    """Without --model: the champion of the registered model of the project's params.yaml
    (fetch.source coco2017: captioner-coco2017), in the project's one store (no
    MLFLOW_TRACKING_URI), found from a subdirectory of the project too."""
    from captioning.registry.register import register_model

    root, model_dir, images = workspace
    project = root / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "params.yaml").write_text("fetch:\n  source: coco2017\n")
    (project / "reports").mkdir()
    metrics = project / "reports" / "metrics.json"
    metrics.write_text(json.dumps({"test": {"beam": {"CIDEr": 0.1}}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(project)
    record = register_model(
        model_dir, metrics, RegisterConfig(), out_path=project / "r.json", data_source="coco2017"
    )
    assert record["model_name"] == "captioner-coco2017"
    assert record["aliases"] == ["challenger", "champion"]
    assert (project / "mlflow.db").is_file() and (project / "mlartifacts").is_dir()

    assert main(["predict", str(images[1]), "--model", str(model_dir), "--scores"]) == 0
    from_dir, _ = capsys.readouterr()
    monkeypatch.chdir(project / "reports")
    code = main(["predict", str(images[1]), "--scores"])  # models:/captioner-coco2017@champion
    from_registry, err = capsys.readouterr()
    assert code == 0, err
    assert from_registry == from_dir
    assert from_registry.startswith(f"{images[1]}\tcircle")
    mlflow.set_tracking_uri(None)


def test_registry_commands_read_the_nearest_pipelines_params(monkeypatch):
    from captioning.registry.commands import registered_model

    repo = Path(__file__).resolve().parents[2]
    for cwd, name in (
        (repo, "captioner"),
        (repo / "src", "captioner"),
        (repo / "pipelines" / "captcha", "captcha-reader"),
        (repo / "pipelines" / "captcha" / "reports", "captcha-reader"),
    ):
        monkeypatch.chdir(cwd)
        cfg, found = registered_model()
        assert found == name, cwd
    assert cfg.promote_metric == "exact_match"  # the reader's whole register section


def test_unloadable_model_is_an_error_not_a_traceback(workspace, capsys):
    root, _, images = workspace
    code = main(["predict", str(images[0]), "--model", str(root / "no-such-model")])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith(f"error: cannot load model {root / 'no-such-model'}:")


def test_usage_errors_return_2(capsys):
    assert main([]) == 2
    assert main(["predict"]) == 2
    assert main(["predict", "x.jpg", "--beam", "0"]) == 2
    assert "usage:" in capsys.readouterr().err


# --- every kind of image file, a non-image, attention heat-maps ---


def write_image_kind(directory: Path, kind: str) -> Path:
    """A 64 (wide) x 48 (high) picture saved as ``kind``."""
    rng = np.random.default_rng(len(kind))
    rgb = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))
    path = directory / f"{kind}.{'png' if 'png' in kind else 'jpg'}"
    if kind == "rgb_jpeg":
        rgb.save(path, "JPEG")
    elif kind == "grayscale_jpeg":
        rgb.convert("L").save(path, "JPEG")
    elif kind == "cmyk_jpeg":
        rgb.convert("CMYK").save(path, "JPEG")
    elif kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        rgb.save(path, "JPEG", exif=exif.tobytes())
    elif kind == "rgb_png":
        rgb.save(path, "PNG")
    elif kind == "rgba_png":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, size=(48, 64), dtype=np.uint8)))
        rgba.save(path, "PNG")
    elif kind == "palette_png":
        rgb.convert("P").save(path, "PNG")
    else:
        raise ValueError(kind)
    return path


IMAGE_KINDS = [
    "rgb_jpeg",
    "grayscale_jpeg",
    "cmyk_jpeg",
    "exif_rotated_jpeg",
    "rgb_png",
    "rgba_png",
    "palette_png",
]


@pytest.fixture
def seen_images(monkeypatch):
    """Records the (mode, size) of every image the Captioner encodes."""
    from captioning.inference import Captioner

    seen: list[tuple[str, tuple[int, int]]] = []
    encode = Captioner.encode

    def spy(self, images):
        seen.extend((image.mode, image.size) for image in images)
        return encode(self, images)

    monkeypatch.setattr(Captioner, "encode", spy)
    return seen


def test_predict_every_image_kind_in_one_call(workspace, tmp_path, capsys, seen_images):
    root, model_dir, _ = workspace
    paths = [write_image_kind(tmp_path, kind) for kind in IMAGE_KINDS]
    code = main(["predict", *map(str, paths), "--model", str(model_dir), "--max-length", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [p for p, _ in lines] == [str(p) for p in paths]  # one line each, in order
    assert all(is_circles(caption) for _, caption in lines)
    assert all(mode == "RGB" for mode, _ in seen_images)
    sizes = dict(zip(IMAGE_KINDS, (size for _, size in seen_images), strict=True))
    assert sizes.pop("exif_rotated_jpeg") == (48, 64)  # turned upright: now 48 wide, 64 high
    assert set(sizes.values()) == {(64, 48)}


@pytest.mark.parametrize("content", [b"this is not an image\n", b"", b"\xff\xd8\xff\xe0trunc"])
def test_a_non_image_is_named_with_what_was_expected(workspace, tmp_path, capsys, content):
    root, model_dir, _ = workspace
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(content)
    code = main(["predict", str(bad), "--model", str(model_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"error: {bad}: ") and line.endswith("expected a JPEG or PNG image")
    assert "Traceback" not in err


def test_a_missing_file_is_named(workspace, tmp_path, capsys):
    _, model_dir, _ = workspace
    code = main(["predict", str(tmp_path / "nowhere.png"), "--model", str(model_dir)])
    _, err = capsys.readouterr()
    assert (
        code == 2
        and err
        == f"error: {tmp_path / 'nowhere.png'}: file not found; expected a JPEG or PNG image\n"
    )


def test_predict_draws_attention_for_one_and_for_several_images(workspace, tmp_path, capsys):
    _, model_dir, images = workspace
    one = tmp_path / "one.png"
    args = ["--model", str(model_dir), "--max-length", "3"]
    assert main(["predict", str(images[0]), *args, "--attention", str(one)]) == 0
    assert one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    several = tmp_path / "maps" / "att.png"
    several.parent.mkdir()
    assert main(["predict", *map(str, images), *args, "--attention", str(several)]) == 0
    assert sorted(p.name for p in several.parent.iterdir()) == ["att-1-img0.png", "att-2-img1.png"]
    capsys.readouterr()


def test_attention_without_an_attending_decoder_is_a_note(workspace, tmp_path, capsys, monkeypatch):
    from captioning.models.soft_attention import SoftAttentionDecoder

    step = SoftAttentionDecoder.step

    def no_attention(self, tokens, state):  # as nic or mrnn: step() returns alpha None
        logits, state, _ = step(self, tokens, state)
        return logits, state, None

    monkeypatch.setattr(SoftAttentionDecoder, "step", no_attention)
    _, model_dir, images = workspace
    target = tmp_path / "att.png"
    code = main(["predict", str(images[0]), "--model", str(model_dir), "--attention", str(target)])
    out, err = capsys.readouterr()
    assert code == 0 and is_circles(out.split("\t")[1].strip())
    assert err == (
        f"note: decoder soft_attention does not attend: no heat-map written to {target}\n"
    )
    assert not target.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--beam", "100000"], "error: beam_size=100000 is out of range: allowed 1..7"),
        (["--beam", "0"], "error: beam_size=0 is out of range"),
        (["--max-length", "25"], "error: max_length=25 is out of range: allowed 1..24"),
    ],
)
def test_predict_bounds_the_decoding_like_the_served_model(workspace, capsys, args, expected):
    root, model_dir, images = workspace
    code = main(["predict", str(images[0]), "--model", str(model_dir), *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().startswith(expected) and "Traceback" not in err


def test_predict_refuses_an_image_past_the_pixel_cap(workspace, tmp_path, capsys, monkeypatch):
    root, model_dir, _ = workspace
    monkeypatch.setenv("CAPTIONING_MAX_PIXELS", "1000")
    big = write_jpeg(tmp_path / "big.jpg", seed=3)  # 64 x 48 = 3,072 pixels
    code = main(["predict", str(big), "--model", str(model_dir)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == (
        f"error: {big}: 64x48 pixels, more than the 1,000 allowed per image (CAPTIONING_MAX_PIXELS)"
    )


# --- the device: --device, else $CAPTIONING_DEVICE (the served model's too), else auto ---


def test_a_demanded_cuda_device_that_is_not_there_is_one_line(workspace):
    _, model_dir, images = workspace
    command = [sys.executable, "-m", "captioning.cli", "predict", str(images[0])]
    result = subprocess.run(
        [*command, "--model", str(model_dir), "--device", "cuda"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, even where there is one
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stdout) == (2, "")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ERROR captioning: --device: 'cuda' requested but CUDA is not available" in lines[0]


def test_the_device_flag_and_the_environment_choose_where_predict_runs(
    workspace, capsys, monkeypatch
):
    """With CUDA said to be there, auto would take it (and fail: there is none): --device cpu
    and CAPTIONING_DEVICE=cpu keep predict and the served model's Captioner on the CPU."""
    _, model_dir, images = workspace
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(ENV_DEVICE, raising=False)
    assert main(["predict", str(images[0]), "--model", str(model_dir), "--device", "cpu"]) == 0
    assert is_circles(capsys.readouterr().out.split("\t")[1])
    monkeypatch.setenv(ENV_DEVICE, "cpu")
    assert main(["predict", str(images[0]), "--model", str(model_dir)]) == 0
    assert Captioner.load(model_dir).device == torch.device("cpu")
    monkeypatch.setenv(ENV_DEVICE, "gpu")
    with pytest.raises(ConfigError, match="^CAPTIONING_DEVICE: expected auto, cpu, cuda or cuda:N"):
        Captioner.load(model_dir)
