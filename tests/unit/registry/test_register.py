"""Registration, the champion/challenger promotion rule and the pyfunc round trip.

The real ``Captioner`` needs a trained decoder and encoder weights; a stand-in module
``captioning.inference`` is put in ``sys.modules`` (in this process, and in a subprocess for the
"captioning not installed" check) so only the MLflow plumbing is under test here.
"""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from captioning.config import RegisterConfig
from captioning.registry.register import decide_promotion, lineage_stages, register_model

FAKE_INFERENCE = textwrap.dedent(
    """
    import json
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np


    @dataclass
    class CaptionResult:
        caption: str
        score: float
        attention: object = None


    class Captioner:
        def __init__(self, config):
            self.config = config

        @classmethod
        def load(cls, model_dir, device=None):
            model_dir = Path(model_dir)
            assert (model_dir / "decoder.safetensors").is_file(), model_dir
            return cls(json.loads((model_dir / "config.json").read_text()))

        def caption(self, images, beam_size=3, max_length=24):
            out = []
            for image in images:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))
                colour = ("red", "green", "blue")[int(rgb.argmax())]
                words = [self.config["decoder"], colour][:max_length]
                out.append(CaptionResult(" ".join(words), -1.0 / beam_size))
            return out
    """
)
CFG = RegisterConfig(model_name="captioner", experiment="captioning", promote_metric="CIDEr")


def fake_inference_module() -> types.ModuleType:
    module = types.ModuleType("captioning.inference")
    exec(compile(FAKE_INFERENCE, "fake_inference.py", "exec", dont_inherit=True), module.__dict__)
    return module


def jpeg_bytes(colour: tuple[int, int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 10, size=(32, 32, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_model(root: Path, decoder: str, cider: float) -> tuple[Path, Path]:
    model_dir = root / "models" / decoder
    model_dir.mkdir(parents=True)
    (model_dir / "decoder.safetensors").write_bytes(b"stand-in weights")
    (model_dir / "vocab.json").write_text(json.dumps({"itos": ["<pad>", "a"]}))
    config = {
        "decoder": decoder,
        "seed": 42,
        "train": {"epochs": 3, "model": {"hidden_dim": 8}},
        "encoder": {"encoder": "efficientnet_lite0", "grid": 7, "channels": 320},
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    metrics_path = root / "reports" / decoder / "metrics.json"
    metrics_path.parent.mkdir(parents=True)
    scores = {"BLEU-4": 0.3, "CIDEr": cider, "object_accuracy": 0.9}
    metrics = {"test": {"greedy": scores, "beam": scores}, "val": {"beam": scores}}
    metrics_path.write_text(json.dumps(metrics))
    return model_dir, metrics_path


@pytest.mark.parametrize(
    ("new", "champion", "promoted"),
    [
        (0.5, None, True),
        (0.5, 0.4, True),
        (0.5, 0.5, False),  # strictly greater
        (0.4, 0.5, False),
        (0.0, math.nan, True),  # a champion without a usable value is beaten
        (math.nan, None, False),  # a NaN never becomes champion
        (math.nan, 0.1, False),
    ],
)
def test_decide_promotion(new, champion, promoted):
    decision, reason = decide_promotion(new, champion)
    assert decision is promoted
    assert reason
    if champion is not None and not math.isnan(champion) and not math.isnan(new):
        assert f"{new:.6g}" in reason and f"{champion:.6g}" in reason


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """Three registrations: first (0.5) -> champion, worse (0.4) -> kept, better (0.6) -> promoted."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setitem(sys.modules, "captioning.inference", fake_inference_module())
        mp.setattr(sys, "path", list(sys.path))  # pyfunc.load_model prepends the model's code dir
        (root / "dvc.yaml").write_text("stages: {}\n")
        (root / "dvc.lock").write_text(
            "schema: '2.0'\nstages:\n  fetch:\n    cmd: x\n    outs:\n"
            "    - path: data/raw\n      hash: md5\n      md5: abc.dir\n"
            "  train@a:\n    cmd: x\n    outs:\n"
            "    - path: models/a\n      hash: md5\n      md5: def.dir\n"
        )
        records = []
        for i, (decoder, cider) in enumerate([("a", 0.5), ("b", 0.4), ("c", 0.6)]):
            model_dir, metrics_path = make_model(root, decoder, cider)
            out = root / "reports" / decoder / "registered.json"
            example = jpeg_bytes((200, 30, 30)) if i == 0 else None
            records.append(
                register_model(model_dir, metrics_path, CFG, out_path=out, example_image=example)
            )
        yield root, records
        mlflow.set_tracking_uri(None)


def test_first_version_becomes_champion(registry):
    root, (first, _, _) = registry
    assert first["version"] == "1"
    assert first["decision"] == "promoted"
    assert first["champion_value"] is None
    assert first["aliases"] == ["challenger", "champion"]
    assert json.loads((root / "reports" / "a" / "registered.json").read_text()) == first


def test_worse_version_stays_challenger(registry):
    _, (_, second, _) = registry
    assert second["decision"] == "kept"
    assert (second["new_value"], second["champion_value"]) == (0.4, 0.5)
    assert second["aliases"] == ["challenger"]
    version = mlflow.MlflowClient().get_model_version("captioner", second["version"])
    assert version.tags["promotion.decision"] == "kept"
    assert "0.4" in version.tags["promotion.reason"] and "0.5" in version.tags["promotion.reason"]
    assert version.tags["test.beam.CIDEr"] == "0.4"


def test_better_version_is_promoted(registry):
    _, (first, _, third) = registry
    assert third["decision"] == "promoted"
    assert (third["new_value"], third["champion_value"]) == (0.6, 0.5)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("captioner", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("captioner", "challenger").version) == "3"
    assert client.get_model_version("captioner", first["version"]).aliases == []


def test_run_carries_params_metrics_tags_and_reports(registry):
    _, (first, _, _) = registry
    client = mlflow.MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.info.run_name == "register-a"
    assert client.get_experiment(run.info.experiment_id).name == "captioning"
    assert run.data.params["train.model.hidden_dim"] == "8"
    assert run.data.params["encoder.grid"] == "7"
    assert run.data.metrics["test.beam.CIDEr"] == 0.5
    assert run.data.metrics["val.beam.BLEU-4"] == 0.3
    tags = run.data.tags
    assert tags["decoder"] == "a" and tags["encoder"] == "efficientnet_lite0"
    assert len(tags["dvc.fetch.outs"]) == 12
    assert len(tags["dvc.train:a.outs"]) == 12  # foreach stage train@a in dvc.lock
    assert tags["dvc.evaluate.outs"] == tags["dvc.shard.outs"] == "missing"
    assert {"git.commit", "git.dirty", "promotion.decision"} <= set(tags)
    reports = {f.path for f in client.list_artifacts(first["run_id"], "reports")}
    assert reports == {"reports/metrics.json", "reports/config.json"}


def test_pyfunc_round_trip_from_champion(registry):
    model = mlflow.pyfunc.load_model("models:/captioner@champion")
    images = [base64.b64encode(jpeg_bytes(c)).decode() for c in [(20, 20, 220), (20, 220, 20)]]
    out = model.predict(pd.DataFrame({"image": images}), params={"beam_size": 4})
    assert list(out.columns) == ["caption", "score"]
    assert out["caption"].tolist() == ["c blue", "c green"]
    assert out["score"].tolist() == [-0.25, -0.25]
    # Raw bytes reach the python model too (the signature only admits strings).
    python_model = model.unwrap_python_model()
    raw = python_model.predict(None, pd.DataFrame({"image": [jpeg_bytes((220, 20, 20))]}))
    assert raw["caption"].tolist() == ["c red"]
    assert raw["score"].tolist() == [-1.0 / 3]


def test_pyfunc_names_the_bad_row(registry):
    model = mlflow.pyfunc.load_model("models:/captioner@champion")
    good = base64.b64encode(jpeg_bytes((20, 20, 220))).decode()
    not_image = base64.b64encode(b"hello, not an image").decode()
    with pytest.raises(Exception, match=r"row 1: not a decodable image"):
        model.predict(pd.DataFrame({"image": [good, not_image]}))
    with pytest.raises(Exception, match=r"row 0: not valid base64"):
        model.predict(pd.DataFrame({"image": ["***"]}))


def test_model_loads_without_captioning_installed(registry):
    """The logged code/ copy of the package is enough: drop the installed one from sys.path."""
    root, _ = registry
    import captioning

    installed = str(Path(captioning.__file__).resolve().parents[1])
    image = base64.b64encode(jpeg_bytes((20, 220, 20))).decode()
    script = textwrap.dedent(
        f"""
        import sys, types
        sys.path = [p for p in sys.path if p.rstrip("/") != {installed!r}]
        try:
            import captioning
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("captioning is still importable from " + captioning.__file__)
        fake = types.ModuleType("captioning.inference")
        exec({FAKE_INFERENCE!r}, fake.__dict__)
        sys.modules["captioning.inference"] = fake
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/captioner@champion")
        out = model.predict(pd.DataFrame({{"image": [{image!r}]}}))
        import captioning
        print(captioning.__file__)
        print(out["caption"][0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    module_file, caption = result.stdout.strip().splitlines()[-2:]
    assert "/code/captioning/__init__.py" in module_file and installed not in module_file
    assert caption == "c green"


def test_lineage_stages_follow_dvc_lock(tmp_path: Path):
    assert lineage_stages(tmp_path, "a")[-2:] == ("train", "evaluate")
    (tmp_path / "dvc.lock").write_text("stages:\n  train@a: {}\n  evaluate: {}\n")
    assert lineage_stages(tmp_path, "a") == (
        "fetch",
        "shard",
        "vocab",
        "features",
        "train@a",
        "evaluate",
    )


def test_missing_promote_metric_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model_dir, metrics_path = make_model(tmp_path, "a", 0.5)
    metrics_path.write_text(json.dumps({"test": {"greedy": {"CIDEr": 0.5}}}))
    with pytest.raises(ValueError, match=r"test\.beam\.CIDEr"):
        register_model(model_dir, metrics_path, CFG, out_path=tmp_path / "r.json", root=tmp_path)
