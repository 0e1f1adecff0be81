"""``captioning registry compare | promote | rollback`` on a temporary SQLite MLflow store.

The store is built once (v1 champion; v2 worse, v3 better and v4 on other references, all left
as challengers for review); every test works on its own copy of the database, so the tests do
not depend on each other's alias moves.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from registry_helpers import N_IMAGES, champion_scores, make_model, shifted, write_store_root

from captioning.cli import main
from captioning.config import GateConfig, RegisterConfig
from captioning.registry.register import register_model

CFG = RegisterConfig(gate=GateConfig(resamples=2000))
PARAMS = "register:\n  gate:\n    resamples: 2000\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("review")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setattr(sys, "path", list(sys.path))
        write_store_root(root)
        base = champion_scores()
        models = [
            ("a", base, CFG, {}),
            ("b", shifted(base, -0.3, 0.2, seed=1), replace(CFG, auto_promote=False), {}),
            ("c", shifted(base, +0.6, 0.3, seed=2), replace(CFG, auto_promote=False), {}),
            (
                "d",
                shifted(base, +0.6, 0.3, seed=3),
                replace(CFG, auto_promote=False),
                {"references": ("other references",)},
            ),
        ]
        for name, scores, cfg, extra in models:
            paths = make_model(root, name, scores, **extra)
            out = root / f"{name}.json"
            # cfg.model_name "": the shapes run's name, "captioner", as the CLI finds it below
            record = register_model(**paths, cfg=cfg, out_path=out, root=root, data_source="shapes")
            assert record["decision"] == ("promoted" if name == "a" else "pending review")
        mlflow.set_tracking_uri(None)
    return root


@pytest.fixture
def registry(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of the store's database (the artifacts are only read)."""
    shutil.copy(store / "mlflow.db", tmp_path / "mlflow.db")
    (tmp_path / "params.yaml").write_text(PARAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("USER", "tester")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def champion(client) -> str:
    return str(client.get_model_version_by_alias("captioner", "champion").version)


def test_pending_versions_carry_the_gate_numbers(registry):
    tags = registry.get_model_version("captioner", "3").tags
    assert tags["promotion.decision"] == "pending review"
    assert tags["gate.passed"] == "true" and tags["gate.vs_version"] == "1"
    assert champion(registry) == "1"


def test_compare_prints_the_bootstrap_numbers(registry, capsys):
    assert main(["registry", "compare", "3", "champion"]) == 0
    out = capsys.readouterr().out
    assert f"version 3 vs version 1 on {N_IMAGES} test images, per-image beam.CIDEr" in out
    for label in ("mean difference", "95% CI", "p (gain <= 0)", "win fraction", "2000 resamples"):
        assert label in out
    assert "gate              PASS" in out
    assert main(["registry", "compare", "2", "1", "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["passed"] is False and numbers["n_images"] == N_IMAGES
    assert numbers["mean_diff"] < 0 and numbers["ci_high"] < 0 < numbers["p_value"]
    assert champion(registry) == "1"  # comparing moves nothing


def test_promoting_a_worse_version_is_refused_with_the_numbers(registry, capsys):
    assert main(["registry", "promote", "2"]) == 1
    out = capsys.readouterr().out
    assert "gate              FAIL" in out and "version 2: refused" in out
    assert champion(registry) == "1"
    tags = registry.get_model_version("captioner", "2").tags
    assert tags["promotion.decision"] == "refused" and tags["promotion.by"] == "tester"
    assert float(tags["gate.ci_high"]) < 0
    assert f"{float(tags['gate.mean_diff']):+.4f}" in out


def test_promoting_a_better_version_moves_champion(registry, capsys):
    assert main(["registry", "promote"]) == 1  # default: the challenger, v4 (other test set)
    assert "different test sets" in capsys.readouterr().out
    assert main(["registry", "promote", "3"]) == 0
    out = capsys.readouterr().out
    assert "version 3: promoted" in out and "champion: 1 -> 3" in out
    assert champion(registry) == "3"
    tags = registry.get_model_version("captioner", "3").tags
    assert tags["promotion.decision"] == "promoted" and "champion.since" in tags
    assert "promote by tester: promoted" in registry.get_model_version("captioner", "3").description
    assert main(["registry", "promote", "3"]) == 0
    assert "already champion" in capsys.readouterr().out


def test_other_test_set_is_refused_in_one_line_that_says_what_to_do(registry, capsys, caplog):
    assert main(["registry", "promote", "4"]) == 1
    (line,) = capsys.readouterr().out.splitlines()  # no bootstrap table: nothing was compared
    assert line.startswith("captioner version 4: refused (vs champion 1: cannot compare: ")
    assert "different test sets: the same 40 test images with different references" in line
    assert 'register.model_name: "" names it captioner-<fetch.source>' in line
    assert "`captioning registry promote 4 --force --reason '<why>'`" in line
    assert main(["registry", "compare", "4", "1"]) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "different test sets" in error and "\n" not in error
    assert "registry promote 4 --force" in error
    assert champion(registry) == "1"


def test_force_needs_a_reason_and_records_it(registry, capsys, caplog):
    assert main(["registry", "promote", "2", "--force"]) == 2
    assert "--force needs --reason" in caplog.text
    assert champion(registry) == "1"
    reason = "hotfix: v1 captions leak a test caption"
    assert main(["registry", "promote", "2", "--force", "--reason", reason, "--by", "ana"]) == 0
    assert champion(registry) == "2"
    tags = registry.get_model_version("captioner", "2").tags
    assert tags["promotion.decision"] == "forced" and tags["promotion.note"] == reason
    assert (
        tags["promotion.by"] == "ana" and "gate: vs champion 1: refused" in tags["promotion.reason"]
    )


def test_rollback_to_a_former_champion_records_who_and_why(registry, capsys, caplog):
    assert main(["registry", "promote", "3"]) == 0
    capsys.readouterr()
    assert main(["registry", "rollback", "2", "--reason", "try it"]) == 2
    assert "version 2 was never champion" in caplog.text
    reason = "v3 misnames colours on photos"
    assert main(["registry", "rollback", "1", "--reason", reason, "--by", "ana"]) == 0
    assert "champion 3 -> 1" in capsys.readouterr().out
    assert champion(registry) == "1"
    back = registry.get_model_version("captioner", "1").tags
    assert back["rollback.by"] == "ana" and back["rollback.reason"] == reason
    assert back["rollback.from_version"] == "3"
    left = registry.get_model_version("captioner", "3")
    assert left.tags["rolled_back.reason"] == reason
    assert f"rollback by ana: champion 3 -> 1; {reason}" in left.tags["registry.log"]
    assert main(["registry", "rollback", "1", "--reason", "again"]) == 2  # already champion


def test_unknown_version_and_missing_reason_are_usage_errors(registry, caplog):
    assert main(["registry", "compare", "9", "1"]) == 2
    assert "captioner: no version '9'" in caplog.text
    assert main(["registry", "rollback", "1"]) == 2  # --reason is required
    assert main(["registry", "promote", "3", "--name", "nobody"]) == 2
    assert champion(registry) == "1"


def test_generic_over_model_name_and_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A CAPTCHA reader: exact match (0/1) per image, greedy decoding, its own model name."""
    import numpy as np

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_store_root(tmp_path)
    cfg = RegisterConfig(
        model_name="captcha-reader",
        promote_metric="exact_match",
        decoding="greedy",
        gate=GateConfig(resamples=2000),
    )
    rng = np.random.default_rng(0)
    first = (rng.random(N_IMAGES) < 0.5).astype(float)
    better = np.maximum(first, (rng.random(N_IMAGES) < 0.6).astype(float))  # never worse
    records = []
    for name, scores in (("reader1", first), ("reader2", first), ("reader3", better)):
        paths = make_model(tmp_path, name, scores, metric="exact_match", decoding="greedy")
        records.append(
            register_model(**paths, cfg=cfg, out_path=tmp_path / f"{name}.json", root=tmp_path)
        )
    assert [r["decision"] for r in records] == ["promoted", "refused", "promoted"]
    assert (
        records[1]["gate"]["mean_diff"] == 0 and records[1]["metric"] == "test.greedy.exact_match"
    )
    assert records[2]["gate"]["n_better"] > 0 and records[2]["gate"]["n_worse"] == 0
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("captcha-reader", "champion").version) == "3"
    assert (
        client.get_model_version("captcha-reader", "3").tags["gate.score"] == "greedy.exact_match"
    )
    mlflow.set_tracking_uri(None)


def test_a_champion_set_by_hand_is_named_in_the_next_record(registry, capsys):
    """Moving the alias in the UI bypasses the gate; the next promotion says so."""
    registry.set_registered_model_alias("captioner", "champion", "2")
    assert main(["registry", "promote", "3"]) == 0
    assert "(champion 2 was set outside `captioning registry`)" in capsys.readouterr().out
    reason = registry.get_model_version("captioner", "3").tags["promotion.reason"]
    assert "vs champion 2: passes" in reason and "set outside" in reason
