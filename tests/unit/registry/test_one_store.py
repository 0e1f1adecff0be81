"""One MLflow store per project, whichever way the CAPTCHA DAG is started: `make captcha`,
`cd pipelines/captcha && dvc repro`, and the `captcha-reader` Prefect deployment's flow run.

A toy repository with the real layout (``.dvc/`` at the root, its own DAG in
pipelines/captcha/dvc.yaml) whose CAPTCHA DAG is one stage, ``register``, that writes down the
tracking URI the register stage resolves there (``configure_mlflow`` from the stage's working
directory, with no MLFLOW_TRACKING_URI). Each way must give ``sqlite:///<repo root>/mlflow.db``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PROBE = "from captioning.registry.tracking import configure_mlflow as c; print(c(), file=open("
CAPTCHA_DAG = {
    "stages": {
        "register": {
            "cmd": f"python -c \"{PROBE}'store.txt', 'w'))\"",
            "outs": [{"store.txt": {"cache": False}}],
            "always_changed": True,  # each way below runs it again
        }
    }
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    captcha = root / "pipelines" / "captcha"
    captcha.mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("{}\n")
    (captcha / "dvc.yaml").write_text(yaml.safe_dump(CAPTCHA_DAG))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))  # the stages import this checkout
    # `dvc` in the make recipe: this interpreter's
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    return root.resolve()


def run(command: list[str] | str, cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"


def store_after(project: Path) -> str:
    path = project / "pipelines" / "captcha" / "store.txt"
    store = path.read_text().strip()
    path.unlink()
    return store


def make_captcha_recipe() -> list[str]:
    """The commands of the Makefile's `captcha` target that run the DAG, as make would run them."""
    result = subprocess.run(
        ["make", "-n", "captcha"], cwd=REPO, capture_output=True, text=True, check=True
    )
    lines = [line for line in result.stdout.splitlines() if "dvc repro" in line]
    assert lines, result.stdout
    return lines


def test_the_three_ways_of_running_the_captcha_dag_use_the_root_store(project: Path):
    root_store = f"sqlite:///{project / 'mlflow.db'}"

    # 1. make captcha (its recipe, run in the toy repository)
    for line in make_captcha_recipe():
        run(["bash", "-c", line], project)
    assert store_after(project) == root_store

    # 2. cd pipelines/captcha && dvc repro
    run([sys.executable, "-m", "dvc", "repro"], project / "pipelines" / "captcha")
    assert store_after(project) == root_store

    # 3. the captcha-reader deployment: the flow with that deployment's parameters
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    (reader,) = [d for d in deployments if d["name"] == "captcha-reader"]
    flow = load_flow()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        state = flow.captioning_pipeline(
            repo=str(project), **reader["parameters"], return_state=True
        )
    assert state.is_completed(), state.message
    assert state.result() == {"pipelines/captcha/dvc.yaml:register": "ran"}
    assert store_after(project) == root_store
    assert not (project / "pipelines" / "captcha" / "mlflow.db").exists()


def load_flow():
    spec = importlib.util.spec_from_file_location("pipeline_flow", REPO / "flows" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
