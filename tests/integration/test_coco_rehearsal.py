"""A dress rehearsal of the COCO user's path: recipes/coco2017.yaml, as a GPU user applies it,
end to end on the mini COCO 2017 mirror that a local file server serves.

In a temporary copy of the repository: `captioning params apply recipes/coco2017.yaml` with
`--set` overrides of sizes and of what cannot be had here (the mirror and its checksums, random
ResNet-101 weights) and nothing else, then `dvc repro`: fetch from the mirror, shard, vocab,
ResNet-101 features, train, evaluate, register as `captioner-coco2017` in the copy's one MLflow
store, then `mlflow models serve` of that model captions a test image.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.integration.tiny_repo import init_repo, repo_env, run
from tiny_registry import free_port, running_server

from fake_datasets import COCO_HOST, COCO_SPLITS, KARPATHY_PATH, make_coco

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/coco2017.yaml"
MODEL = "captioner-coco2017"
DECODER = "soft_attention"
REPORTS = f"reports/decoders/{DECODER}"
SERVE_STARTUP_SECONDS = 180  # python + mlflow + torch imports and ResNet-101 built, 2 busy cores

# What the test changes of the recipe: the sizes (epochs, batches, widths, worker processes) and
# what this machine cannot have (the real download URLs, ResNet-101's published weights). The
# mirror and its checksums are added by the test. Every other key stays as the recipe has it.
SIZES = {
    "features.pretrained": "false",  # random weights from common.seed: no download here
    "features.batch_size": "8",
    "features.num_workers": "0",
    "shard.workers": "1",
    "train.epochs": "1",
    "train.batch_size": "8",
    "train.model.embed_dim": "16",
    "train.model.hidden_dim": "16",
    "train.model.attention_dim": "8",
    "train.model.feature_proj_dim": "16",
}
STAGES = [
    "fetch",
    "shard",
    "vocab",
    "features",
    f"train@{DECODER}",
    f"evaluate@{DECODER}",
    f"register@{DECODER}",
    "compare",
]


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def repo_copy(root: Path) -> dict[str, str]:
    """The code, the DAG, params.yaml and the recipes as the repository has them, in ``root`` (a
    git and DVC repository of its own); the environment its commands run in."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "stages", "recipes"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    env = repo_env(root)
    init_repo(root, env, "rehearsal")
    return env


def registered_versions(db: Path) -> dict[str, list[str]]:
    """Registered model name -> the aliases of its versions, read from the SQLite store."""
    with sqlite3.connect(db) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM registered_models")]
        aliases = connection.execute("SELECT name, alias FROM registered_model_aliases").fetchall()
    return {name: sorted(a for n, a in aliases if n == name) for name in names}


def post_image(port: int, image: Path) -> dict:
    payload = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(image.read_bytes()).decode("ascii")]],
        }
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.slow
def test_the_coco2017_recipe_end_to_end_on_the_mini_mirror(file_server, tmp_path):
    start = time.perf_counter()
    root = tmp_path / "repo"
    root.mkdir()
    env = repo_copy(root)
    assert (root / RECIPE).read_bytes() == (REPO / RECIPE).read_bytes()
    zips = make_coco(file_server.root, "2017")
    checksums = {name: sha256(path) for name, path in zips.items()}

    sets = {
        **SIZES,
        "fetch.mirror": file_server.url,
        "fetch.coco.checksums": json.dumps(checksums),
    }
    captioning = str(Path(sys.executable).parent / "captioning")
    set_args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    applied = run([captioning, "params", "apply", RECIPE, *set_args], root, env)
    assert applied.stdout.splitlines()[-1].startswith("same as: dvc exp run -S fetch.source=")

    recipe = yaml.safe_load((root / RECIPE).read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())

    def value(key: str):
        node = params
        for part in key.split("."):
            node = node[part]
        return node

    kept = {key: value(key) for key in recipe if key not in sets}
    assert kept == {key: recipe[key] for key in kept}, "a recipe key not written as is"
    assert value("register.model_name") == "" and value("vocab.min_freq") == 5

    repro_start = time.perf_counter()
    run([sys.executable, "-m", "dvc", "repro"], root, env)
    repro_seconds = time.perf_counter() - repro_start

    # fetch: every file from the mirror
    requested = {path for path, _ in file_server.requests}
    assert {
        f"/{COCO_HOST}/zips/train2017.zip",
        f"/{COCO_HOST}/zips/val2017.zip",
        f"/{COCO_HOST}/annotations/annotations_trainval2017.zip",
        f"/{KARPATHY_PATH}",
    } <= requested
    splits = json.loads((root / "data/raw/splits.json").read_text())
    assert splits == COCO_SPLITS  # Karpathy's split of the mirror's images
    # every stage ran and is recorded; nothing is out of date
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    status = run([sys.executable, "-m", "dvc", "status"], root, env).stdout
    assert "up to date" in status.lower()
    meta = json.loads((root / "data/features/meta.json").read_text())
    assert (meta["encoder"], meta["grid"], meta["channels"], meta["pretrained"]) == (
        "resnet101",
        14,
        2048,
        False,
    )
    log = (root / REPORTS / "train_log.csv").read_text().splitlines()
    assert "CIDEr" in log[0].split(",") and len(log) == 2  # early stopping's score, one epoch
    metrics = json.loads((root / REPORTS / "metrics.json").read_text())
    assert "CIDEr" in metrics["test"]["beam"]

    # registered under the COCO name in the copy's one store; the first model is champion
    registration = json.loads((root / REPORTS / "registration.json").read_text())
    assert registration["model_name"] == MODEL
    assert registered_versions(root / "mlflow.db") == {MODEL: ["challenger", "champion"]}
    assert registration["aliases"] == ["challenger", "champion"]
    assert sorted(p.relative_to(root) for p in root.rglob("mlflow.db")) == [Path("mlflow.db")]

    # served: a test image in, a caption out
    port = free_port()
    serve_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        *("models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local"),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]
    images = json.loads((root / "data/raw/captions.json").read_text())["images"]
    (name,) = [image["file_name"] for image in images if image["id"] == splits["test"][0]]
    test_image = root / "data/raw/images" / name
    serve_start = time.perf_counter()
    with running_server(
        command,
        root,
        serve_env,
        tmp_path / "serve.log",
        f"http://127.0.0.1:{port}/ping",
        SERVE_STARTUP_SECONDS,
    ):
        serve_seconds = time.perf_counter() - serve_start
        (prediction,) = post_image(port, test_image)["predictions"]
    vocab = json.loads((root / "data/vocab.json").read_text())
    assert isinstance(prediction["caption"], str) and prediction["caption"].strip()
    assert set(prediction["caption"].split()) <= set(vocab["itos"])
    print(
        f"rehearsal: dvc repro {repro_seconds:.0f} s, serve up {serve_seconds:.0f} s, "
        f"whole test {time.perf_counter() - start:.0f} s; caption {prediction['caption']!r}"
    )
