"""The served model (`mlflow models serve`, --env-manager local): requests/s and latency.

A model at the default pipeline's sizes (params.yaml: EfficientNet-Lite0 with its bundled
ImageNet weights, the soft_attention decoder at train.model's dims with random weights, the
shapes vocabulary) is logged to a temporary SQLite store and served on 127.0.0.1. Random
weights rarely say <end>, so captions run to the model's max length: the upper end of a trained
model's work per image. For each server setting, clients (1, 4, 8) x images per request (1, 16)
are measured in turn: requests/s, images/s, p50 and p99 latency; then the settings side by
side: WxT = W uvicorn workers (`mlflow models serve --workers W`) of T torch threads each
(OMP_NUM_THREADS=T); the default compares one worker of 2 threads with 2 workers of one.

    python benchmarks/serving.py [--requests 24] [--settings 1x2 2x1] [--clients 1 4 8]
        [--images 1 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from machine import machine_line

REPO = Path(__file__).resolve().parents[1]


def build_model(model_dir: Path, params: Path) -> None:
    """A model directory as the train stage writes one, at the default sizes, random weights."""
    import torch
    from safetensors.torch import save_file

    from captioning.config import FeaturesConfig, TrainConfig, load_section, to_dict
    from captioning.data.sources.shapes import VOCABULARY
    from captioning.data.vocab import SPECIALS, Vocab
    from captioning.features.encoders import get_encoder_spec
    from captioning.models import build_decoder

    train = load_section(params, "train", TrainConfig)
    features = load_section(params, "features", FeaturesConfig)
    spec = get_encoder_spec(features.encoder)
    vocab = Vocab(itos=(*SPECIALS, *VOCABULARY), max_length=24)
    torch.manual_seed(0)
    grid, channels = spec.grid, spec.channels
    decoder = build_decoder(
        "soft_attention",
        train.model,
        vocab_size=len(vocab),
        feature_dim=channels,
        num_locations=grid * grid,
    )
    model_dir.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in decoder.state_dict().items()},
        str(model_dir / "decoder.safetensors"),
    )
    vocab.save(model_dir / "vocab.json")
    config = {
        "decoder": "soft_attention",
        "train": {"model": to_dict(train.model)},
        "seed": 0,
        "vocab_size": len(vocab),
        "encoder": {
            "encoder": spec.name,
            "input_size": spec.input_size,
            "grid": grid,
            "channels": channels,
        },
    }
    (model_dir / "config.json").write_text(json.dumps(config))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def post(port: int, body: bytes) -> float:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - start


class Server:
    """`mlflow models serve` in its own process group, stopped by its pid."""

    def __init__(self, uri: str, workers: int, threads: int, log: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "OMP_NUM_THREADS": str(threads),
        }
        mlflow = Path(sys.executable).parent / "mlflow"
        self.log = open(log, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(mlflow),
                "models",
                "serve",
                "-m",
                "models:/bench@champion",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("server did not start")

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def measure(port: int, images: list[str], per_request: int, clients: int, requests: int) -> dict:
    body = json.dumps(
        {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[image] for image in images[:per_request]],
            },
            "params": {"beam_size": 3},
        }
    ).encode()
    post(port, body)  # warm
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(lambda _: post(port, body), range(requests)))
    wall = time.perf_counter() - start
    return {
        "rps": requests / wall,
        "ips": requests * per_request / wall,
        "p50": float(np.percentile(latencies, 50)) * 1000,
        "p99": float(np.percentile(latencies, 99)) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--requests", type=int, default=24, help="requests per measurement")
    parser.add_argument(
        "--settings", nargs="+", default=["1x2", "2x1"], help="WxT: W workers of T threads"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    import mlflow

    from captioning.config import RegisterConfig, load_section
    from captioning.registry.pyfunc import log_captioner

    images = test_images(max(args.images))
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        build_model(root / "model", args.params)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run():
            beam_size = load_section(args.params, "register", RegisterConfig).beam_size
            info = log_captioner(root / "model", beam_size=beam_size, name="model")
        version = mlflow.register_model(info.model_uri, "bench")
        mlflow.MlflowClient().set_registered_model_alias("bench", "champion", version.version)

        results: dict[tuple[int, int, int], dict] = {}
        for setting in args.settings:
            workers, threads = map(int, setting.split("x"))
            server = Server(uri, workers, threads, root / f"serve-{setting}.log")
            try:
                for per_request in args.images:
                    for clients in args.clients:
                        n = (
                            max(args.requests // per_request * 4, clients * 2)
                            if per_request > 1
                            else args.requests * 4
                        )
                        results[setting, per_request, clients] = measure(
                            server.port, images, per_request, clients, n
                        )
                        r = results[setting, per_request, clients]
                        print(
                            f"{setting}, {per_request:2d} images/request, {clients} clients: "
                            f"{r['rps']:6.1f} req/s {r['ips']:6.1f} img/s p50 {r['p50']:7.0f} ms p99 {r['p99']:7.0f} ms",
                            flush=True,
                        )
            finally:
                server.close()

    print()
    print(machine_line(), "(client and server on the same cores)")
    head = "| images/request | clients | " + " | ".join(
        f"{setting} (workers x threads): req/s, img/s, p50 / p99 ms" for setting in args.settings
    )
    print(head + " |")
    print("|" + "---|" * (2 + len(args.settings)))
    for per_request in args.images:
        for clients in args.clients:
            cells = []
            for setting in args.settings:
                r = results[setting, per_request, clients]
                cells.append(f"{r['rps']:.1f}, {r['ips']:.1f}, {r['p50']:.0f} / {r['p99']:.0f}")
            print(f"| {per_request} | {clients} | " + " | ".join(cells) + " |")
    base = args.settings[0]
    for setting in args.settings[1:]:
        ratios = [
            results[setting, i, c]["ips"] / results[base, i, c]["ips"]
            for i in args.images
            for c in args.clients
        ]
        print(
            f"images/s {setting} / {base}: "
            + ", ".join(f"{x:.2f}x" for x in ratios)
            + f" (median {float(np.median(ratios)):.2f}x)"
        )


if __name__ == "__main__":
    main()
