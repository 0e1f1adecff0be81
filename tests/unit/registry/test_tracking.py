"""MLflow configuration and lineage tags (git commit, dvc.lock outs hashes, Prefect run id)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest

from captioning.registry.tracking import (
    artifact_location,
    configure_mlflow,
    get_or_create_experiment,
    lineage_tags,
    pipeline_dir,
    project_root,
    stage_tag,
)

DVC_LOCK = """\
schema: '2.0'
stages:
  fetch:
    cmd: python stages/fetch.py
    outs:
    - path: data/raw
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
      size: 1000
      nfiles: 10
  features:
    cmd: python stages/features.py
    deps:
    - path: data/shards
      hash: md5
      md5: aaaa.dir
    outs:
    - path: data/features/train.npy
      hash: md5
      md5: {train_md5}
      size: 10
    - path: data/features/val.npy
      hash: md5
      md5: 22222222222222222222222222222222
      size: 10
  train@soft_attention:
    cmd: python stages/train.py soft_attention
    params:
      params.yaml:
        train.epochs: 3
    outs:
    - path: models/soft_attention
      hash: md5
      md5: 33333333333333333333333333333333.dir
"""
STAGES = ("fetch", "features", "train@soft_attention", "evaluate@soft_attention")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for var in ("CAPTIONING_PREFECT_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    yield
    mlflow.set_tracking_uri(None)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def _git_repo(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "test@example.com")
    _git(path, "config", "user.name", "test")
    (path / "README.md").write_text("hello\n")
    _git(path, "add", "README.md")
    _git(path, "commit", "-q", "-m", "init")
    return _git(path, "rev-parse", "HEAD")


def test_lineage_tags_from_git_and_dvc_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "repo"
    commit = _git_repo(root)
    (root / "dvc.lock").write_text(DVC_LOCK.format(train_md5="1" * 32))
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "flow-123")

    tags = lineage_tags(root, STAGES)

    assert tags["git.commit"] == commit
    assert tags["git.dirty"] == "false"  # untracked dvc.lock does not count, as in git describe
    assert tags["prefect.flow_run_id"] == "flow-123"
    for stage in ("fetch", "features", "train:soft_attention"):
        assert len(tags[f"dvc.{stage}.outs"]) == 12
    assert tags["dvc.evaluate:soft_attention.outs"] == "missing"
    assert len({tags[stage_tag(s)] for s in STAGES[:3]}) == 3

    # Stable across calls; changes when an output's md5 changes, and only for that stage.
    assert lineage_tags(root, STAGES) == tags
    (root / "dvc.lock").write_text(DVC_LOCK.format(train_md5="9" * 32))
    changed = lineage_tags(root, STAGES)
    assert changed["dvc.features.outs"] != tags["dvc.features.outs"]
    assert changed["dvc.fetch.outs"] == tags["dvc.fetch.outs"]

    (root / "README.md").write_text("edited\n")
    assert lineage_tags(root, STAGES)["git.dirty"] == "true"


def test_outs_hash_ignores_order_of_outs(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    text = DVC_LOCK.format(train_md5="1" * 32)
    (a / "dvc.lock").write_text(text)
    # Swap the two outs of the features stage.
    first = (
        "    - path: data/features/train.npy\n      hash: md5\n      md5: "
        + "1" * 32
        + "\n      size: 10\n"
    )
    second = (
        "    - path: data/features/val.npy\n      hash: md5\n      md5: "
        + "2" * 32
        + "\n      size: 10\n"
    )
    assert first + second in text
    (b / "dvc.lock").write_text(text.replace(first + second, second + first))
    assert lineage_tags(a, ["features"]) == lineage_tags(b, ["features"])


def test_lineage_tags_without_git_or_dvc_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CAPTIONING_PREFECT_FLOW_RUN_ID", "ours")
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "theirs")
    tags = lineage_tags(tmp_path, ["fetch", "train@soft_attention"])
    assert tags == {
        "git.commit": "unknown",
        "git.dirty": "unknown",
        "dvc.fetch.outs": "missing",
        "dvc.train:soft_attention.outs": "missing",
        "prefect.flow_run_id": "ours",
    }


def test_lineage_tags_with_garbage_dvc_lock(tmp_path: Path):
    (tmp_path / "dvc.lock").write_text("stages: [not, a, mapping\n")
    assert lineage_tags(tmp_path, ["fetch"])["dvc.fetch.outs"] == "missing"


def test_pipeline_dir_finds_dvc_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert pipeline_dir(deep) == tmp_path.resolve()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-no-dvc"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert pipeline_dir(elsewhere) == elsewhere.resolve()


def _project(root: Path) -> Path:
    """A DVC repository with a pipeline of its own in pipelines/captcha (its own dvc.yaml)."""
    (root / ".dvc").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "pipelines" / "captcha" / "reports").mkdir(parents=True)
    (root / "pipelines" / "captcha" / "dvc.yaml").write_text("stages: {}\n")
    return root.resolve()


def test_project_root_is_the_dvc_repository_not_the_nearest_pipeline(tmp_path: Path):
    root = _project(tmp_path / "project")
    captcha = root / "pipelines" / "captcha"
    for start in (root, root / "pipelines", captcha, captcha / "reports"):
        assert project_root(start) == root, start
    assert pipeline_dir(captcha / "reports") == captcha  # the lineage still reads its dvc.lock


def test_project_root_of_an_experiment_workspace_inside_dvc_tmp(tmp_path: Path):
    root = _project(tmp_path / "project")
    # `dvc exp run --temp` and queued experiments run in a copy of the repository here.
    copy = _project(root / ".dvc" / "tmp" / "exps" / "tmpab12cd")
    assert project_root(copy / "pipelines" / "captcha") == root


def test_project_root_without_dvc(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    assert project_root(tmp_path / "sub") == tmp_path.resolve()
    bare = tmp_path.parent / f"{tmp_path.name}-bare"
    bare.mkdir()
    assert project_root(bare) == bare.resolve()


def test_one_store_from_every_directory_of_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    root = _project(tmp_path / "project")
    store = f"sqlite:///{root}/mlflow.db"
    for cwd in (root, root / "pipelines" / "captcha", root / "pipelines" / "captcha" / "reports"):
        monkeypatch.chdir(cwd)
        assert configure_mlflow() == store, cwd
    assert artifact_location(store) == (root / "mlartifacts").as_uri()


def test_configure_mlflow_default_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    assert configure_mlflow(first) == f"sqlite:///{first.resolve()}/mlflow.db"
    assert mlflow.get_tracking_uri() == f"sqlite:///{first.resolve()}/mlflow.db"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    # MLflow exported our default URI to the environment; another root still gets its own.
    assert configure_mlflow(second) == f"sqlite:///{second.resolve()}/mlflow.db"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert configure_mlflow(first) == "sqlite:///elsewhere.db"


def test_stage_tag_is_a_valid_mlflow_name():
    assert stage_tag("fetch") == "dvc.fetch.outs"
    assert stage_tag("train@soft_attention") == "dvc.train:soft_attention.outs"
    assert stage_tag("odd$name") == "dvc.odd_name.outs"


def test_artifact_location():
    assert artifact_location("sqlite:////data/x/mlflow.db") == "file:///data/x/mlartifacts"
    assert artifact_location("http://127.0.0.1:5000") is None
    assert artifact_location("databricks") is None


def test_get_or_create_experiment_puts_artifacts_next_to_db(tmp_path: Path):
    experiment_id = get_or_create_experiment("captioning", tmp_path)
    assert get_or_create_experiment("captioning", tmp_path) == experiment_id
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
