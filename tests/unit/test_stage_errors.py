"""A stage given bad input says what is wrong in one line and exits 2 (no traceback)."""

import json
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
