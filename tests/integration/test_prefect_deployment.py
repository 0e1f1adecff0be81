"""The Prefect flow on the tiny DAG: in-process (test harness), then through deployments.

One temporary repository: the flow builds the whole tiny DAG under prefect_test_harness; then a
real server on 127.0.0.1 with a process worker (scripts/prefect-local.sh) runs the `default`
deployment with `prefect deployment run --watch`. Everything started is stopped by its pid.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import TINY
from tests.integration.tiny_repo import merge, run

REPO = Path(__file__).resolve().parents[2]


def mlflow_flow_run_tags(root: Path) -> dict[str, set[str]]:
    """MLflow run name -> the Prefect flow-run ids it was tagged with."""
    with sqlite3.connect(root / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.name, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid"
            " WHERE t.key = 'prefect.flow_run_id'"
        ).fetchall()
    tags: dict[str, set[str]] = {}
    for name, value in rows:
        tags.setdefault(name, set()).add(value)
    return tags


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("prefect-repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "stages", "flows", "scripts"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("dvc.yaml", "prefect.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the repo's own sqlite:///<root>/mlflow.db
    run(["git", "init", "-q"], root, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny pipeline"], root, env)
    return root, env


@pytest.mark.slow
def test_flow_builds_the_tiny_dag_as_dvc_repro_would(tiny_repo, monkeypatch):
    import importlib.util

    from prefect.testing.utilities import prefect_test_harness

    root, env = tiny_repo
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    spec = importlib.util.spec_from_file_location("tiny_flow", root / "flows" / "pipeline.py")
    flows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flows)
    start = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        state = flows.captioning_pipeline(repo=str(root), return_state=True)
        assert state.is_completed(), state.message
        outcome = state.result()
        print(f"flow over the tiny DAG (test harness): {time.perf_counter() - start:.0f} s")
        stages = run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], root, env)
        assert list(outcome) == stages.stdout.split() and set(outcome.values()) == {"ran"}
        status = run([sys.executable, "-m", "dvc", "status"], root, env).stdout
        assert "up to date" in status.lower()
        assert (root / "reports/decoders/soft_attention/metrics.json").is_file()
        flow_run_id = str(state.state_details.flow_run_id)
        tags = mlflow_flow_run_tags(root)
        assert tags == {
            "train-soft_attention": {flow_run_id},
            "register-soft_attention": {flow_run_id},
        }

        # A decoder the DAG has no stages for: added to train.decoders, then trained,
        # evaluated and registered; the rest is up to date.
        added = flows.captioning_pipeline(repo=str(root), decoder="nic", targets=["register"])
    assert added == {
        "fetch": "skipped",
        "shard": "skipped",
        "vocab": "skipped",
        "features": "skipped",
        "train@nic": "ran",
        "evaluate@nic": "ran",
        "register@nic": "ran",
    }
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["decoders"] == [
        "soft_attention",
        "nic",
    ]
    assert (root / "reports/decoders/nic/registration.json").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_default_deployment_through_server_and_worker(tiny_repo):
    root, env = tiny_repo
    if not (root / "dvc.lock").is_file():
        pytest.fail("needs the DAG built by test_flow_builds_the_tiny_dag_as_dvc_repro_would")
    stack = root / "scripts" / "prefect-local.sh"
    env = {**env, "PREFECT_PORT": str(free_port()), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.update(PREFECT_WORKER_PREFETCH_SECONDS="1", PREFECT_RUNNER_POLL_FREQUENCY="1")
    prefect_env = dict(env)
    prefect_env.update(
        PREFECT_HOME=str(root / ".prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{env['PREFECT_PORT']}/api",
    )
    start = time.perf_counter()
    try:
        run([str(stack), "up"], root, env)
        up = time.perf_counter() - start
        # register's param changes: the worker's run re-runs register only, then all is clean.
        result = run(
            [
                str(Path(sys.executable).parent / "prefect"),
                "deployment",
                "run",
                "captioning-pipeline/default",
                "--watch",
                "-p",
                'overrides={"register.promote_metric": "BLEU-4"}',
            ],
            root,
            prefect_env,
        )
        print(
            f"stack up {up:.0f} s, deployment run --watch {time.perf_counter() - start - up:.0f} s"
        )
        assert "Flow run finished successfully in 'Completed'" in result.stdout
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)[1]
        status = run([sys.executable, "-m", "dvc", "status"], root, env).stdout
        assert "up to date" in status.lower()
        params = yaml.safe_load((root / "params.yaml").read_text())
        assert params["register"]["promote_metric"] == "BLEU-4"
        assert flow_run_id in mlflow_flow_run_tags(root)["register-soft_attention"]
        assert flow_run_id not in mlflow_flow_run_tags(root)["train-soft_attention"]
        schedules = run(
            ["prefect", "deployment", "schedule", "ls", "captioning-pipeline/retrain-and-evaluate"],
            root,
            prefect_env,
        ).stdout
        assert "0 2 * * *" in schedules and "False" in schedules  # the nightly one is paused
    finally:
        pidfiles = [root / ".prefect" / f"{name}.pid" for name in ("server", "worker")]
        pids = [int(path.read_text()) for path in pidfiles if path.is_file()]
        subprocess.run([str(stack), "down"], cwd=root, env=env, capture_output=True, timeout=120)
        for pid in pids:
            if alive(pid):  # the script failed to stop it: do it here, and fail the test
                os.killpg(pid, 9)
                pytest.fail(f"pid {pid} still running after `prefect-local.sh down`")
    assert not (root / ".prefect" / "server.pid").exists()
