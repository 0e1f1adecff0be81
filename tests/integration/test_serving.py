"""The served model under load and hostile requests (`mlflow models serve`, --env-manager local).

For each registered kind of model, a captioner (words) and a CAPTCHA-style reader (letters): a
tiny model is trained through the pipeline's code and registered in a temporary SQLite store;
`mlflow models serve -m models:/<name>@champion` runs on a free 127.0.0.1 port with small
request caps (CAPTIONING_MAX_ROWS, CAPTIONING_MAX_PIXELS) and is stopped by its PID (its
process group: uvicorn is its child), also when a test fails. Bounded in count and time: each
request has a 60 s client timeout, the load is 240 requests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from PIL import Image
from tiny_registry import free_port, register, running_server, train_tiny_captioner

from captioning.config import RegisterConfig
from captioning.data.vocab import Vocab

STARTUP_SECONDS = 120  # python + mlflow + torch imports and the model load, on 2 busy cores
MAX_ROWS, MAX_PIXELS = 8, 200_000  # the caps the served model runs under here
SIGTERM_SECONDS = 20  # a served model stops within this after SIGTERM
LOAD_REQUESTS, LOAD_CLIENTS = 240, 8


def mlflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@dataclass
class Served:
    root: Path
    port: int
    server: object  # subprocess.Popen
    vocab: Vocab
    image: str  # base64 of a test image


@pytest.fixture(scope="module", params=["word", "char"], ids=["captioner", "reader"])
def served(request, tmp_path_factory: pytest.TempPathFactory):
    level = request.param
    name = "captioner" if level == "word" else "captcha-reader"
    root = tmp_path_factory.mktemp(f"serving-{level}")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(sys, "path", list(sys.path))
        model_dir = train_tiny_captioner(root, level=level)
        record = register(root, model_dir, cider=0.1, cfg=RegisterConfig(model_name=name))
        assert record["aliases"] == ["challenger", "champion"]
        mlflow.set_tracking_uri(None)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "CAPTIONING_MAX_ROWS": str(MAX_ROWS),
        "CAPTIONING_MAX_PIXELS": str(MAX_PIXELS),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [
        *mlflow_command(),
        *("models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    test_image = sorted((root / "raw" / "images").glob("*.jpg"))[-1]  # the test split's last
    image = base64.b64encode(test_image.read_bytes()).decode("ascii")
    with running_server(
        command, root, env, root / "serve.log", f"http://127.0.0.1:{port}/ping", STARTUP_SECONDS
    ) as server:
        yield Served(root, port, server, Vocab.load(model_dir / "vocab.json"), image)


def post(port: int, payload: dict | bytes) -> tuple[int, dict | str]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            return exc.code, json.loads(body)
        except json.JSONDecodeError:
            return exc.code, body


def images(*values: str, params: dict | None = None) -> dict:
    payload: dict = {"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}}
    if params is not None:
        payload["params"] = params
    return payload


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_served_model_captions_a_test_image(served):
    status, body = post(served.port, images(served.image, params={"beam_size": 2}))
    assert status == 200, body
    (prediction,) = body["predictions"]
    assert isinstance(prediction["caption"], str) and prediction["caption"].strip()
    if served.vocab.level == "word":
        assert set(prediction["caption"].split()) <= {"a", "picture", "number", "0", "1"}
    else:
        assert " " not in prediction["caption"]  # a reader spells one word
    assert isinstance(prediction["score"], float) and prediction["score"] <= 0.0
    # The `inputs` form (a column dict) gives the same answer.
    status, again = post(
        served.port, {"inputs": {"image": [served.image]}, "params": {"beam_size": 2}}
    )
    assert status == 200 and again["predictions"] == body["predictions"]


# Refused by MLflow's scoring server before the model runs: a body that is not JSON, and a
# parameter of the wrong JSON type (its signature check). Still a 400 without a trace, but
# MLflow's message quotes the input and spans lines.
MLFLOW_REFUSES = {"not json", "beam not a number"}


def hostile_cases(served: Served) -> list[tuple[str, dict | bytes, str]]:
    """(case, request body, the message's expected fragment)."""
    vocab, length = len(served.vocab), served.vocab.max_length
    beam_cap = min(vocab, 10)
    image = served.image
    return [
        (
            "huge beam",
            images(image, params={"beam_size": 100000}),
            f"beam_size=100000 is out of range: allowed 1..{beam_cap}",
        ),
        (
            "zero beam",
            images(image, params={"beam_size": 0}),
            f"beam_size=0 is out of range: allowed 1..{beam_cap}",
        ),
        ("negative beam", images(image, params={"beam_size": -3}), "beam_size=-3 is out of range"),
        (
            "huge length",
            images(image, params={"max_length": 100000}),
            f"max_length=100000 is out of range: allowed 1..{length}",
        ),
        ("zero length", images(image, params={"max_length": 0}), "max_length=0 is out of range"),
        ("beam not a number", images(image, params={"beam_size": "wide"}), "beam_size"),
        ("not base64", images("not base64 at all!"), "image row 0: not valid base64"),
        (
            "not an image",
            images(base64.b64encode(b"<html>hi</html>").decode()),
            "image row 0: not a decodable image",
        ),
        (
            "second row bad",
            images(image, base64.b64encode(b"\xff\xd8\xff").decode()),
            "image row 1: not a decodable image",
        ),
        ("wrong column", {"dataframe_split": {"columns": ["picture"], "data": [[image]]}}, "image"),
        (
            "too many rows",
            images(*[image] * (MAX_ROWS + 1)),
            f"{MAX_ROWS + 1} images in one request: allowed 1..{MAX_ROWS} (CAPTIONING_MAX_ROWS)",
        ),
        (
            "too many pixels",
            images(png(500, 500)),
            "image row 0: 500x500 pixels, more than the 200,000 allowed per image (CAPTIONING_MAX_PIXELS)",
        ),
        ("not json", b"{this is not json", ""),
    ]


def test_hostile_requests_get_a_4xx_with_one_line_and_no_trace(served):
    failures = []
    for case, payload, fragment in hostile_cases(served):
        status, body = post(served.port, payload)
        text = json.dumps(body)
        message = body.get("message", "") if isinstance(body, dict) else body
        problems = []
        if not 400 <= status < 500:
            problems.append(f"status {status}")
        if fragment not in message:
            problems.append(f"message lacks {fragment!r}")
        if "Traceback" in text or "stack_trace" in text:
            problems.append("a trace")
        if case not in MLFLOW_REFUSES and "\n" in message:
            problems.append("not one line")
        if str(Path(mlflow.__file__).parents[1]) in text or str(served.root) in text:
            problems.append("a server path")
        if problems:
            failures.append(f"{case}: {', '.join(problems)}: {status} {text[:400]}")
    assert not failures, "\n".join(failures)


def test_load_of_concurrent_clients_has_no_error_and_the_server_still_answers(served):
    _, before = post(served.port, images(served.image))
    batch = images(*[served.image] * 4, params={"beam_size": 3})
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        results = list(pool.map(lambda _: post(served.port, batch), range(LOAD_REQUESTS)))
    statuses = [status for status, _ in results]
    assert statuses == [200] * LOAD_REQUESTS, sorted(set(statuses))
    assert all(len(body["predictions"]) == 4 for _, body in results)
    status, after = post(served.port, images(served.image))
    assert status == 200 and after == before  # same answer after the load and the hostile ones


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_server_within_its_bound_even_mid_request(served):
    """SIGTERM to `mlflow models serve` (uvicorn, its child, gets it too): the whole process
    group is gone within SIGTERM_SECONDS while two of the largest allowed requests run."""
    server = served.server
    busy = images(*[served.image] * MAX_ROWS, params={"beam_size": 10})
    with ThreadPoolExecutor(2) as pool:
        in_flight = [pool.submit(post, served.port, busy) for _ in range(2)]
        time.sleep(0.5)  # the requests are being decoded
        start = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        while time.monotonic() - start < SIGTERM_SECONDS + 30:
            server.poll()  # reaps mlflow (a zombie still counts in its group)
            if not group_alive(server.pid):
                break
            time.sleep(0.1)
        stopped = time.monotonic() - start
        for future in in_flight:
            future.exception()  # answered or refused; either way the client is released
    assert stopped < SIGTERM_SECONDS, f"the server's processes stopped after {stopped:.1f} s"
    print(f"SIGTERM to gone: {stopped:.1f} s")
