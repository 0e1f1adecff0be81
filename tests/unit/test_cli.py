"""``captioning predict`` with the real Captioner on a tiny hand-built decoder.

The decoder's output layer is rigged (zero weights, one large bias) so that it always says
"circle": captions are exact, and the pretrained encoder still runs for real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captioning.cli import main
from captioning.config import DecoderConfig, RegisterConfig, to_dict
from captioning.data.vocab import SPECIALS, Vocab
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


def test_predict_from_registered_champion(workspace, capsys):
    from captioning.registry.register import register_model

    root, model_dir, images = workspace
    metrics = root / "metrics.json"
    metrics.write_text(json.dumps({"test": {"beam": {"CIDEr": 0.1}}}))
    record = register_model(
        model_dir, metrics, RegisterConfig(), out_path=root / "registered.json", root=root
    )
    assert record["aliases"] == ["challenger", "champion"]

    assert main(["predict", str(images[1]), "--model", str(model_dir), "--scores"]) == 0
    from_dir, _ = capsys.readouterr()
    code = main(["predict", str(images[1]), "--scores"])  # default: models:/captioner@champion
    from_registry, err = capsys.readouterr()
    assert code == 0, err
    assert from_registry == from_dir
    assert from_registry.startswith(f"{images[1]}\tcircle")


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
