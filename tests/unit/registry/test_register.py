"""Registration: what every version carries, the promotion gate at registration, the pyfunc.

The real ``Captioner`` needs a trained decoder and encoder weights; a stand-in module
``captioning.inference`` is put in ``sys.modules`` (in this process, and in a subprocess for the
"captioning not installed" check) so only the MLflow plumbing is under test here.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
import types
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from registry_helpers import N_IMAGES, champion_scores, make_model, shifted, write_store_root

from captioning.config import RegisterConfig
from captioning.registry.register import lineage_stages, register_model

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
        max_length = 24

        def __init__(self, config):
            # (imported here: in the "not installed" check, the package comes with the model)
            from captioning.decoding.limits import RequestLimits

            self.config = config
            self.limits = RequestLimits.from_env()

        def check_request(self, beam_size, max_length):
            from captioning.decoding.limits import check_decoding

            return check_decoding(
                beam_size, max_length, vocab_size=8, trained_length=self.max_length,
                max_beam=self.limits.max_beam,
            )

        def load_image(self, source, name):
            from captioning.data.images import load_rgb

            return load_rgb(source, name=name, max_pixels=self.limits.max_pixels)

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
# beam_size 2: the served model's beam for a request that gives none (the fake's score -1/beam)
CFG = RegisterConfig(
    model_name="captioner", experiment="captioning", promote_metric="CIDEr", beam_size=2
)


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


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """Three registrations: a -> champion (first), b (worse) -> refused, c (better) -> promoted."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("CAPTIONING_PREFECT_FLOW_RUN_ID", "flow-run-1234")
        mp.setitem(sys.modules, "captioning.inference", fake_inference_module())
        mp.setattr(sys, "path", list(sys.path))  # pyfunc.load_model prepends the model's code dir
        write_store_root(root)
        base = champion_scores()
        scores = {
            "a": base,
            "b": shifted(base, -0.3, 0.2, seed=1),
            "c": shifted(base, +0.6, 0.3, seed=2),
        }
        records = []
        for i, (decoder, values) in enumerate(scores.items()):
            paths = make_model(root, decoder, values, figures=2 if i == 0 else 0)
            out = root / "reports" / decoder / "registration.json"
            example = jpeg_bytes((200, 30, 30)) if i == 0 else None
            records.append(
                register_model(
                    **paths, cfg=CFG, out_path=out, example_image=example, data_source="shapes"
                )
            )
        yield root, records
        mlflow.set_tracking_uri(None)


def test_first_version_becomes_champion(registry):
    root, (first, _, _) = registry
    assert first["version"] == "1"
    assert first["decision"] == "promoted"
    assert first["champion_before"] is None and first["gate"] is None
    assert "no champion yet" in first["reason"]
    assert first["aliases"] == ["challenger", "champion"]
    assert json.loads((root / "reports" / "a" / "registration.json").read_text()) == first


def test_worse_version_is_refused_with_the_numbers(registry):
    _, (_, second, _) = registry
    assert second["decision"] == "refused"
    assert second["aliases"] == ["challenger"]
    gate = second["gate"]
    assert gate["passed"] is False and gate["n_images"] == N_IMAGES
    assert gate["mean_diff"] < 0 and gate["ci_high"] < 0
    version = mlflow.MlflowClient().get_model_version("captioner", second["version"])
    tags = version.tags
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.by"] == "register stage"
    assert tags["gate.vs_version"] == "1" and tags["gate.passed"] == "false"
    assert float(tags["gate.mean_diff"]) == pytest.approx(gate["mean_diff"], rel=1e-5)
    assert float(tags["gate.ci_low"]) == pytest.approx(gate["ci_low"], rel=1e-5)
    assert tags["gate.n_images"] == str(N_IMAGES)
    assert {"gate.p_value", "gate.win_fraction", "gate.confidence", "gate.resamples"} <= set(tags)
    assert f"{gate['mean_diff']:+.4f}" in tags["promotion.reason"]
    assert "refused" in version.description.split("## Registry log")[1]


def test_better_version_is_promoted(registry):
    _, (first, _, third) = registry
    assert third["decision"] == "promoted"
    assert third["champion_before"] == "1"
    assert third["gate"]["passed"] and third["gate"]["ci_low"] > 0
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("captioner", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("captioner", "challenger").version) == "3"
    old = client.get_model_version("captioner", first["version"])
    assert old.aliases == [] and old.tags["champion.replaced_by"] == "3"


def test_run_carries_params_metrics_tags_and_reports(registry):
    _, (first, _, _) = registry
    client = mlflow.MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.info.run_name == "register-a"
    assert client.get_experiment(run.info.experiment_id).name == "captioning"
    assert run.data.params["train.model.hidden_dim"] == "8"
    assert run.data.params["encoder.grid"] == "7"
    assert run.data.params["register.gate.resamples"] == str(CFG.gate.resamples)
    assert run.data.metrics["test.beam.CIDEr"] == pytest.approx(float(champion_scores().mean()))
    assert run.data.metrics["val.loss_best"] == 0.7 and run.data.metrics["val.best_epoch"] == 2
    assert run.data.metrics["val.loss_last"] == 0.75
    tags = run.data.tags
    assert tags["decoder"] == "a" and tags["encoder"] == "efficientnet_lite0"
    assert len(tags["dvc.fetch.outs"]) == len(tags["dvc.features.outs"]) == 12
    assert len(tags["dvc.train:a.outs"]) == 12  # foreach stage train@a in dvc.lock
    assert tags["dvc.evaluate.outs"] == tags["dvc.shard.outs"] == "missing"
    assert tags["prefect.flow_run_id"] == "flow-run-1234"
    assert {"git.commit", "git.dirty", "promotion.decision"} <= set(tags)
    reports = {f.path for f in client.list_artifacts(first["run_id"], "reports")}
    assert reports == {
        "reports/metrics.json",
        "reports/config.json",
        "reports/per_image.json",
        "reports/train_log.csv",
    }
    figures = {f.path for f in client.list_artifacts(first["run_id"], "figures/attention")}
    assert figures == {"figures/attention/0.png", "figures/attention/1.png"}


def test_version_carries_lineage_card_signature_and_example(registry):
    root, (first, _, _) = registry
    client = mlflow.MlflowClient()
    version = client.get_model_version("captioner", first["version"])
    tags = version.tags
    assert tags["git.commit"] and tags["encoder"] == "efficientnet_lite0" and tags["decoder"] == "a"
    assert len(tags["dvc.features.outs"]) == 12 and tags["prefect.flow_run_id"] == "flow-run-1234"
    assert tags["gate.score"] == "beam.CIDEr" and tags["test_set.n_images"] == str(N_IMAGES)
    card = version.description
    for heading in ("## Data", "## Training", "## Metrics", "## Figures", "## Limitations"):
        assert heading in card
    assert "source: `shapes`" in card and "| val | loss_best | 0.7000 |" in card
    assert "figures/attention/0.png" in card and "object_accuracy_3obj" in card
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{first['run_id']}/model_card.md"))
    assert local.read_text() == card.split("\n\n## Registry log")[0]
    info = mlflow.models.get_model_info("models:/captioner/1")
    assert info.signature.inputs.input_names() == ["image"]
    assert [c.name for c in info.signature.outputs.inputs] == ["caption", "score"]
    defaults = {param.name: param.default for param in info.signature.params.params}
    assert defaults["beam_size"] == CFG.beam_size == 2
    model_dir = Path(
        mlflow.artifacts.download_artifacts("models:/captioner/1", dst_path=str(root / "dl"))
    )
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    assert list(example) == ["dataframe_split"]
    assert example["dataframe_split"]["columns"] == ["image"]


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
    assert raw["score"].tolist() == [-1.0 / CFG.beam_size]  # register.beam_size, not 3
    served = model.predict(pd.DataFrame({"image": images[:1]}))
    assert served["score"].tolist() == [-1.0 / CFG.beam_size]


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
        import os, sys, types
        # Every copy goes: this checkout's and an editable install's (a .pth path).
        sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p, "captioning"))]
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
    paths = make_model(tmp_path, "a", champion_scores())
    paths["metrics_path"].write_text(json.dumps({"test": {"greedy": {"CIDEr": 0.5}}}))
    with pytest.raises(ValueError, match=r"test\.beam\.CIDEr"):
        register_model(**paths, cfg=CFG, out_path=tmp_path / "r.json", root=tmp_path)


def test_malformed_per_image_file_fails_before_anything_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    paths = make_model(tmp_path, "a", champion_scores())
    entries = json.loads(paths["per_image_path"].read_text())
    del entries[3]["beam"]["CIDEr"]
    paths["per_image_path"].write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"per_image\.json: entry \[3\]\.beam: expected a number"):
        register_model(**paths, cfg=CFG, out_path=tmp_path / "r.json", root=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_registering_the_same_inputs_again_reuses_the_version(registry):
    """A re-run of the stage (e.g. after it was killed past creating the version) registers
    nothing new; other inputs (here another metrics file) do get a version of their own."""
    root, (_, second, third) = registry
    paths = registered_paths(root, "b")
    client = mlflow.MlflowClient()
    before = len(client.search_model_versions("name = 'captioner'"))
    again = register_model(
        **paths, cfg=CFG, out_path=tmp_out(root), example_image=None, data_source="shapes"
    )
    assert again["version"] == second["version"] and again["run_id"] == second["run_id"]
    assert again["aliases"] == ["challenger"] and again["decision"] == "refused"
    assert len(client.search_model_versions("name = 'captioner'")) == before

    metrics = json.loads(paths["metrics_path"].read_text())
    metrics["test"]["greedy"]["BLEU-4"] = 0.31
    other = root / "reports" / "b-other-metrics.json"
    other.write_text(json.dumps(metrics))
    changed = register_model(
        **{**paths, "metrics_path": other},
        cfg=CFG,
        out_path=tmp_out(root),
        example_image=None,
        data_source="shapes",
    )
    assert int(changed["version"]) == before + 1
    # the champion stays where the fixture's registrations left it
    champion = client.get_model_version_by_alias("captioner", "champion")
    assert str(champion.version) == third["version"]


def registered_paths(root: Path, decoder: str) -> dict[str, Path]:
    """The register_model paths of a model the fixture registered (as make_model gave them)."""
    reports = root / "reports" / decoder
    return {
        "model_dir": root / "models" / decoder,
        "metrics_path": reports / "metrics.json",
        "per_image_path": reports / "per_image.json",
        "figures_dir": reports / "attention",
        "train_log": reports / "train_log.csv",
    }


def tmp_out(root: Path) -> Path:
    return root / "reports" / "b" / "registration-again.json"


def test_registered_name_is_one_per_dataset_unless_set():
    from captioning.config import load_params

    default = RegisterConfig()
    assert default.model_name == ""
    assert default.registered_name("shapes") == "captioner"
    assert default.registered_name("coco2017") == "captioner-coco2017"
    assert default.registered_name("flickr8k") == "captioner-flickr8k"
    assert RegisterConfig(model_name="mine").registered_name("coco2017") == "mine"
    repo = Path(__file__).resolve().parents[3]
    for params, name in (
        (repo / "params.yaml", "captioner"),
        (repo / "pipelines/captcha/params.yaml", "captcha-reader"),
    ):
        loaded = load_params(params)
        assert loaded.register.registered_name(loaded.fetch.source) == name


def test_a_coco_model_does_not_meet_the_shapes_champion(tmp_path, monkeypatch):
    """With register.model_name "" (the default), a COCO model, scored on another test set,
    starts its own line (captioner-coco2017) instead of being refused by the shapes champion."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setitem(sys.modules, "captioning.inference", fake_inference_module())
    monkeypatch.setattr(sys, "path", list(sys.path))
    write_store_root(tmp_path)
    cfg = RegisterConfig(beam_size=2)
    shapes = make_model(tmp_path, "a", champion_scores())
    coco = make_model(tmp_path, "b", champion_scores(N_IMAGES // 2), references=("a dog",))
    records = [
        register_model(**paths, cfg=cfg, out_path=tmp_path / f"{source}.json", data_source=source)
        for source, paths in (("shapes", shapes), ("coco2017", coco))
    ]
    assert [(r["model_name"], r["decision"]) for r in records] == [
        ("captioner", "promoted"),
        ("captioner-coco2017", "promoted"),
    ]
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("captioner", "champion").version == 1
    champion = client.get_model_version_by_alias("captioner-coco2017", "champion")
    assert champion.tags["model_name"] == "captioner-coco2017"
    assert champion.description.startswith("# captioner-coco2017: b decoder")

    # Under one name (set by hand) the gate refuses, and says why and what to do.
    same_name = register_model(
        **coco,
        cfg=RegisterConfig(model_name="captioner", beam_size=2),
        out_path=tmp_path / "same-name.json",
        data_source="coco2017",
    )
    assert same_name["decision"] == "refused"
    reason = same_name["reason"]
    assert "different test sets: version 2 was scored on 20 test images, version 1 on 40" in reason
    assert "registry promote 2 --force" in reason
    mlflow.set_tracking_uri(None)


def test_the_default_name_spelled_out_registers_nothing_new(registry):
    """model_name "" and "captioner" name the same model on shapes: a re-run after params.yaml
    changed from one to the other reuses the version."""
    root, (first, _, _) = registry
    paths = registered_paths(root, "a")
    example = jpeg_bytes((200, 30, 30))
    for cfg in (CFG, replace(CFG, model_name="")):
        again = register_model(
            **paths, cfg=cfg, out_path=tmp_out(root), example_image=example, data_source="shapes"
        )
        assert again["version"] == first["version"] and again["model_name"] == "captioner"
