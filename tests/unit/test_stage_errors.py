"""A stage given bad input says what is wrong in one line and exits 2 (no traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_stage(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
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
# The stages run one after the other in one process (one torch import, not three), each as
# `python stages/<script>` runs it; each one's exit status goes to stdout.
RUN_EACH = """
import runpy, sys
for argv in {commands!r}:
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        print(exit.code)
    else:
        print(0)
"""


def test_a_demanded_cuda_device_that_is_not_there_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"common": {"device": "cuda"}}))
    commands = [
        [str(REPO / "stages" / script), "--params", str(params), *args.format(tmp=tmp_path).split()]
        for script, args in DEVICE_STAGES.items()
    ]
    result = subprocess.run(
        [sys.executable, "-c", RUN_EACH.format(commands=commands)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.stdout.split() == ["2", "2", "2"], result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(DEVICE_STAGES), result.stderr  # one line per stage
    for line in lines:
        assert "ERROR captioning: common.device: 'cuda' requested but CUDA is not available" in line
    assert [path.name for path in tmp_path.iterdir()] == ["params.yaml"]  # nothing written
