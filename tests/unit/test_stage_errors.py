"""A stage given bad input says what is wrong in one line and exits 2 (no traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def run_stage(script: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_unknown_params_key_is_one_clear_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"vocab": {"min_frequency": 2}}))
    result = run_stage("vocab.py", "--params", str(params), "--shards", "x", "--out", "y")
    assert result.returncode == 2
    assert f"{params}: unknown key 'vocab.min_frequency'" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_in_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"shard": {"max_count": "many"}}))
    result = run_stage("shard.py", "--params", str(params), "--raw", "x", "--out", "y")
    assert result.returncode == 2
    assert "'shard.max_count': expected int, found str 'many'" in result.stderr


def test_malformed_annotations_name_file_and_place(tmp_path, tiny_layout):
    coco = json.loads((tiny_layout / "captions.json").read_text())
    del coco["annotations"][1]["caption"]
    (tiny_layout / "captions.json").write_text(json.dumps(coco))
    result = run_stage(
        "shard.py",
        "--params",
        str(REPO / "params.yaml"),
        "--raw",
        str(tiny_layout),
        "--out",
        str(tmp_path / "s"),
    )
    assert result.returncode == 2
    assert "captions.json: annotations[1]: missing key 'caption'" in result.stderr
    assert not (tmp_path / "s").exists()


# Each stage that computes, with CUDA demanded where torch sees none (CUDA_VISIBLE_DEVICES
# empty hides a GPU too): its arguments, none of which is read before the device is chosen.
DEVICE_STAGES = {
    "features.py": "--shards {tmp}/x --out {tmp}/y",
    "train.py": "--vocab {tmp}/v --decoder nic --model {tmp}/m --log {tmp}/l --checkpoints {tmp}/c",
    "evaluate.py": "--model {tmp}/m --shards {tmp}/x --out {tmp}/y",
}


@pytest.mark.parametrize("script", sorted(DEVICE_STAGES))
def test_a_demanded_cuda_device_that_is_not_there_is_one_line(tmp_path, script):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"common": {"device": "cuda"}}))
    args = DEVICE_STAGES[script].format(tmp=tmp_path).split()
    result = run_stage(script, "--params", str(params), *args, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ERROR captioning: common.device: 'cuda' requested but CUDA is not available" in lines[0]
    assert [path.name for path in tmp_path.iterdir()] == ["params.yaml"]  # nothing written
