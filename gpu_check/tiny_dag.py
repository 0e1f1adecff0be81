"""The DAG end to end on CUDA: ``dvc repro`` in a temporary repository holding this checkout's
code and the tiny config of tests/integration/test_pipeline.py (48 shapes scenes, 2 epochs).

The stages choose CUDA themselves (``common.device: cuda`` where the params know it, else
auto); the train stage must log that it trained on CUDA. Without Java (the evaluate stage's
caption metrics) the DAG runs up to the train stage, and says so.

    python -m gpu_check.tiny_dag
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from tests.integration.test_pipeline import TINY
from tests.integration.tiny_repo import init_repo, merge, repo_env

from captioning.config import CommonConfig

REPO = Path(__file__).resolve().parents[1]
DECODER = "soft_attention"
# What training.loop logs when it starts on a GPU ("... trained parameters on cuda:0 in bf16").
TRAINED_ON_CUDA = "trained parameters on cuda"


def tiny_params() -> dict:
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    if "device" in {f.name for f in dataclasses.fields(CommonConfig)}:
        params["common"]["device"] = "cuda"  # demanded: no CUDA fails the stage
    return params


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gpu-check-dag-") as tmp:
        root = Path(tmp)
        for name in ("src", "stages"):
            shutil.copytree(
                REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
        env = repo_env(root)
        env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])
        init_repo(root, env, "tiny pipeline")
        java = shutil.which("java") is not None
        target = [] if java else [f"train@{DECODER}"]
        if not java:
            print("no java on the PATH: the DAG up to the train stage (evaluate needs Java)")
        command = [sys.executable, "-m", "dvc", "repro", *target]
        print(" ".join(command), flush=True)
        on_cuda = False
        with subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:  # passed on as it comes: a killed run still shows it
                print(line, end="", flush=True)
                on_cuda |= TRAINED_ON_CUDA in line
        if process.returncode != 0:
            print(f"FAILED dvc repro exited {process.returncode}")
            return 1
        if not on_cuda:
            print(f"FAILED the train stage did not log {TRAINED_ON_CUDA!r}: it ran on the CPU")
            return 1
        return verify(root, java)


def verify(root: Path, evaluated: bool) -> int:
    features = json.loads((root / "data/features/meta.json").read_text()).get("precision")
    trained = json.loads((root / f"models/{DECODER}/config.json").read_text()).get("precision")
    if evaluated:
        metrics = json.loads((root / f"reports/decoders/{DECODER}/metrics.json").read_text())
        scores = {
            k: round(v["CIDEr"], 3)
            for k, v in metrics["test"].items()
            if isinstance(v, dict) and "CIDEr" in v
        }
        print(f"test CIDEr: {scores}")
    done = "fetch .. compare" if evaluated else "fetch .. train (no Java: no evaluate)"
    print(f"dvc repro {done} on CUDA: features {features}, training {trained}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
