"""`mlflow models serve -m models:/captioner@champion --env-manager local` answers over HTTP.

A tiny captioner is trained through the pipeline's code and registered in a temporary SQLite
store; the server runs on a free 127.0.0.1 port and is stopped by its PID (its process group:
uvicorn's worker is its child), also when the test fails.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from tiny_registry import free_port, register, running_server, train_tiny_captioner

STARTUP_SECONDS = 120  # python + mlflow + torch imports and the model load, on 2 busy cores


def mlflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(sys, "path", list(sys.path))
        model_dir = train_tiny_captioner(root)
        record = register(root, model_dir, cider=0.1)
        assert record["aliases"] == ["challenger", "champion"]
        mlflow.set_tracking_uri(None)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [
        *mlflow_command(),
        "models",
        "serve",
        "-m",
        "models:/captioner@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with running_server(
        command, root, env, root / "serve.log", f"http://127.0.0.1:{port}/ping", STARTUP_SECONDS
    ):
        yield root, port


def post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_champion_captions_a_test_image(served):
    root, port = served
    test_image = sorted((root / "raw" / "images").glob("*.jpg"))[-1]  # the test split's last
    image = base64.b64encode(test_image.read_bytes()).decode("ascii")
    status, body = post(
        port,
        {"dataframe_split": {"columns": ["image"], "data": [[image]]}, "params": {"beam_size": 2}},
    )
    assert status == 200, body
    (prediction,) = body["predictions"]
    assert isinstance(prediction["caption"], str) and prediction["caption"].strip()
    assert set(prediction["caption"].split()) <= {"a", "picture", "number", "0", "1"}
    assert isinstance(prediction["score"], float) and prediction["score"] <= 0.0
    # The `inputs` form (a column dict) gives the same answer.
    status, again = post(port, {"inputs": {"image": [image]}, "params": {"beam_size": 2}})
    assert status == 200 and again["predictions"] == body["predictions"]


def test_served_model_names_a_bad_image(served):
    _, port = served
    bad = base64.b64encode(b"not an image").decode("ascii")
    status, body = post(port, {"dataframe_split": {"columns": ["image"], "data": [[bad]]}})
    assert status >= 400
    assert "row 0: not a decodable image" in json.dumps(body)
