"""The whole DAG (`dvc repro`) on a tiny config in a temporary repository."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.integration.tiny_repo import merge, run

REPO = Path(__file__).resolve().parents[2]
REPORTS = "reports/decoders/soft_attention"

# A decoder that reports no attention (as nic and mrnn do), registered in the temporary copy of
# the code: the foreach, evaluate's figures and the comparison must cope with it. It goes into
# DECODERS before the registry's import-time check, and its name into config.DECODER_NAMES.
REGISTRY_CHECK = 'check_registry("decoder", DECODERS, DECODER_NAMES, "DECODER_NAMES")\n'
PLAIN_TEST_NAME = """

# Added by tests/integration/test_pipeline.py
DECODER_NAMES = (*DECODER_NAMES, "plain_test")
"""
PLAIN_TEST_DECODER = """

# Added by tests/integration/test_pipeline.py
import torch as _torch

from captioning.models.base import DecoderOutput as _Output
from captioning.models.soft_attention import SoftAttentionDecoder as _Attending


class _PlainTestDecoder(_Attending):
    def step(self, tokens, state):
        logits, state, _ = super().step(tokens, state)
        return logits, state, None

    def forward(self, features, captions, rows=None, *, sample_prob=0.0):
        state = self.start(features, rows)
        logits, step_logits = [], None
        for t in range(captions.size(1) - 1):
            tokens = self.next_input(captions, t, step_logits, sample_prob)
            step_logits, state, _ = self.step(tokens, state)
            logits.append(step_logits)
        return _Output(_torch.stack(logits, dim=1), None, features.new_zeros(()))


DECODERS["plain_test"] = _PlainTestDecoder

"""

TINY = {
    "fetch": {"shapes": {"n_train": 48, "n_val": 8, "n_test": 8}},
    "shard": {"max_count": 20},
    "features": {"batch_size": 16, "num_workers": 1},
    "train": {"epochs": 2, "batch_size": 16, "warmup_steps": 2},
    "evaluate": {"n_attention_figures": 2},
}


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("repo")
    for name in ("src", "stages"):
        shutil.copytree(
            REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    registry = root / "src/captioning/models/__init__.py"
    code = registry.read_text()
    assert code.count(REGISTRY_CHECK) == 1, f"{registry}: no {REGISTRY_CHECK!r} to insert before"
    registry.write_text(code.replace(REGISTRY_CHECK, PLAIN_TEST_DECODER + REGISTRY_CHECK))
    with (root / "src/captioning/config.py").open("a") as handle:
        handle.write(PLAIN_TEST_NAME)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),  # the stages run the copied code
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run(["git", "init", "-q"], root, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # custom plot templates
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny pipeline"], root, env)
    run([sys.executable, "-m", "dvc", "repro"], root, env)
    return root, env


@pytest.mark.slow
def test_repro_produces_metrics_model_and_registration(pipeline_repo):
    root, env = pipeline_repo
    metrics = json.loads((root / REPORTS / "metrics.json").read_text())
    for decoding in ("greedy", "beam"):
        scores = metrics["test"][decoding]
        for key in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "object_accuracy"):
            assert 0.0 <= scores[key] <= 10.0, (decoding, key, scores)
        for key in ("relation_precision", "relation_coverage"):
            assert 0.0 <= scores[key] <= 1.0, (decoding, key, scores)
    results = json.loads((root / REPORTS / "results.json").read_text())
    assert len(results) == 8 and set(results[0]) == {"image_id", "caption"}
    assert len(list((root / REPORTS / "attention").glob("*.png"))) == 2
    log = (root / REPORTS / "train_log.csv").read_text().splitlines()
    # shapes' val images carry their objects: validation scores the captions' object accuracy
    # and the relations they state too
    assert log[0] == (
        "epoch,train_loss,val_loss,lr,sample_prob,BLEU-1,BLEU-2,BLEU-3,BLEU-4,CIDEr,"
        "object_accuracy,relation_precision,relation_coverage"
    )
    assert len(log) == 3
    summary = json.loads((root / REPORTS / "train_summary.json").read_text())
    assert summary["decoder"] == "soft_attention" and summary["best_epoch"] in (1, 2)
    registration = json.loads((root / REPORTS / "registration.json").read_text())
    assert registration["model_name"] == "captioner" and "champion" in registration["aliases"]
    comparison = json.loads((root / "reports/comparison.json").read_text())
    assert list(comparison) == ["soft_attention"]
    assert comparison["soft_attention"]["beam"]["CIDEr"] == metrics["test"]["beam"]["CIDEr"]
    assert "| `soft_attention` |" in (root / "reports/comparison.md").read_text()
    shown = run([sys.executable, "-m", "dvc", "metrics", "show"], root, env).stdout
    assert "CIDEr" in shown and "object_accuracy" in shown and "comparison.json" in shown
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "--json"], root, env).stdout
    assert "loss curves" in plots and "test CIDEr (beam) per decoder" in plots


@pytest.mark.slow
def test_second_repro_does_nothing(pipeline_repo):
    root, env = pipeline_repo
    lock = (root / "dvc.lock").read_text()
    out = run([sys.executable, "-m", "dvc", "repro"], root, env).stdout
    assert "up to date" in out.lower()
    status = run([sys.executable, "-m", "dvc", "status"], root, env).stdout
    assert "up to date" in status.lower()
    assert (root / "dvc.lock").read_text() == lock


def predict_one(root: Path, env: dict[str, str], model: str, *options: str):
    """Run the `captioning predict` CLI on the first raw image; return the image and the result."""
    image = next((root / "data/raw/images").glob("*.jpg"))
    command = [str(Path(sys.executable).parent / "captioning"), "predict", str(image)]
    return image, run([*command, "--model", model, *options], root, env)


@pytest.mark.slow
def test_predict_with_registered_champion(pipeline_repo):
    root, env = pipeline_repo
    image, result = predict_one(root, env, "models:/captioner@champion", "--beam", "3")
    line = result.stdout.strip().splitlines()[-1]
    path, caption = line.split("\t")
    assert path == str(image) and len(caption.split()) >= 1


def load_flow_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "captioning_flows", REPO / "flows" / "pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_prefect_flow_runs_stages_through_dvc(pipeline_repo, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    root, env = pipeline_repo
    for key in ("MLFLOW_TRACKING_URI", "PATH", "PYTHONPATH"):
        monkeypatch.setenv(key, env[key])
    flows = load_flow_module()
    params = root / "params.yaml"
    original = params.read_text()
    with prefect_test_harness():
        outcome = flows.captioning_pipeline(repo=str(root))
        assert set(outcome.values()) == {"skipped"}
        assert any(stage.startswith("register") for stage in outcome)
        # A broken stage fails the flow run with the stage's own message.
        broken = yaml.safe_load(original)
        broken["vocab"]["min_freq"] = 0
        params.write_text(yaml.safe_dump(broken, sort_keys=False))
        try:
            with pytest.raises(
                flows.StageFailed, match=r"'vocab.min_freq': expected >= 1, found 0"
            ):
                flows.captioning_pipeline(repo=str(root))
        finally:
            params.write_text(original)
        # DVC removed the failed stage's output before running it; the next run restores it
        # and leaves everything up to date.
        outcome = flows.captioning_pipeline(repo=str(root))
        assert outcome["fetch"] == "skipped" and outcome["features"] == "skipped"
    status = run([sys.executable, "-m", "dvc", "status"], root, env).stdout
    assert "up to date" in status.lower()


@pytest.mark.slow
def test_experiment_with_another_encoder(pipeline_repo):
    """`dvc exp run -S features.encoder=resnet101 -S features.pretrained=false`: the whole DAG
    with ResNet-101's 14x14x2048 features (random weights: none can be downloaded here)."""
    root, env = pipeline_repo
    params, lock = (root / "params.yaml").read_text(), (root / "dvc.lock").read_text()
    start = time.perf_counter()
    run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-n",
            "resnet101-random",
            "-S",
            "features.encoder=resnet101",
            "-S",
            "features.pretrained=false",
        ],
        root,
        env,
    )
    seconds = time.perf_counter() - start
    print(f"dvc exp run with resnet101: {seconds:.0f} s")
    try:
        meta = json.loads((root / "data/features/meta.json").read_text())
        assert (meta["encoder"], meta["input_size"], meta["grid"], meta["channels"]) == (
            "resnet101",
            256,
            14,
            2048,
        )
        assert meta["pretrained"] is False and meta["init_seed"] == 42
        config = json.loads((root / "models/soft_attention/config.json").read_text())
        assert config["encoder"]["grid"] == 14 and config["encoder"]["channels"] == 2048
        metrics = json.loads((root / REPORTS / "metrics.json").read_text())
        assert "CIDEr" in metrics["test"]["beam"]
        shown = run([sys.executable, "-m", "dvc", "exp", "show", "--csv"], root, env).stdout
        assert "resnet101-random" in shown
        # Prediction rebuilds the same random encoder from the recorded seed (digest checked).
        image, predicted = predict_one(root, env, "models/soft_attention")
        assert predicted.stdout.strip().startswith(str(image))
    finally:
        # Back to the baseline for any test that runs after this one.
        (root / "params.yaml").write_text(params)
        (root / "dvc.lock").write_text(lock)
        run([sys.executable, "-m", "dvc", "checkout", "-q"], root, env)


@contextlib.contextmanager
def undone(root: Path, env: dict[str, str], name: str):
    """Put params.yaml, dvc.lock and the workspace back after an experiment that made the
    outputs of ``name`` (reports/decoders/<name>, models/<name>)."""
    params, lock = (root / "params.yaml").read_text(), (root / "dvc.lock").read_text()
    try:
        yield
    finally:
        (root / "params.yaml").write_text(params)
        (root / "dvc.lock").write_text(lock)
        for leftover in (f"reports/decoders/{name}", f"models/{name}"):
            shutil.rmtree(root / leftover, ignore_errors=True)
        run([sys.executable, "-m", "dvc", "checkout", "-q"], root, env)


@pytest.mark.slow
def test_experiment_adding_a_decoder_trains_only_that_one(pipeline_repo):
    """`dvc exp run -S 'train.decoders=[soft_attention,plain_test]'`: train@, evaluate@ and
    register@plain_test run, soft_attention's stages do not, and the comparison has both."""
    root, env = pipeline_repo
    with undone(root, env, "plain_test"):
        exp = [sys.executable, "-m", "dvc", "exp", "run", "-n", "two-decoders"]
        out = run([*exp, "-S", "train.decoders=[soft_attention,plain_test]"], root, env).stdout
        assert "Running stage 'train@plain_test'" in out
        assert "Running stage 'train@soft_attention'" not in out
        assert "Running stage 'evaluate@soft_attention'" not in out
        comparison = json.loads((root / "reports/comparison.json").read_text())
        assert sorted(comparison) == ["plain_test", "soft_attention"]  # JSON keys are sorted
        table = (root / "reports/comparison.md").read_text()
        assert table.index("| `soft_attention` |") < table.index("| `plain_test` |")
        plain = root / "reports/decoders/plain_test"
        # it does not attend: no heat-maps, a note saying so
        assert [p.name for p in (plain / "attention").iterdir()] == ["README.txt"]
        registration = json.loads((plain / "registration.json").read_text())
        assert registration["model_name"] == "captioner"
        with (root / "reports/loss_curves.csv").open() as handle:
            decoders = {line.split(",")[0] for line in handle.read().splitlines()[1:]}
        assert decoders == {"soft_attention", "plain_test"}


@pytest.mark.slow
def test_experiment_adding_a_self_critical_phase(pipeline_repo):
    """`dvc exp run -S 'scst.decoders=[soft_attention]'`: scst@, evaluate_scst@ and
    register_scst@soft_attention run from the trained model (train@ does not run again), the
    log has the reward, and the comparison lists soft_attention_scst after soft_attention."""
    root, env = pipeline_repo
    exp = [sys.executable, "-m", "dvc", "exp", "run", "-n", "scst"]
    with undone(root, env, "soft_attention_scst"):
        out = run([*exp, "-S", "scst.decoders=[soft_attention]"], root, env).stdout
        for stage in ("scst", "evaluate_scst", "register_scst"):
            assert f"Running stage '{stage}@soft_attention'" in out
        assert "Running stage 'train@soft_attention'" not in out
        scst = root / "reports/decoders/soft_attention_scst"
        log = (scst / "train_log.csv").read_text().splitlines()
        assert "reward" in log[0].split(",") and len(log) == 2
        assert json.loads((scst / "metrics.json").read_text())["test"]["beam"]["CIDEr"] >= 0
        config = json.loads((root / "models/soft_attention_scst/config.json").read_text())
        assert config["decoder"] == "soft_attention" and config["scst"]["samples_per_image"] == 5
        table = (root / "reports/comparison.md").read_text()
        assert table.index("| `soft_attention` |") < table.index("| `soft_attention_scst` |")
