"""Hostile images and archives through the stage CLIs and ``captioning predict``.

The corpus (tests/reliability/corpus.py) says what each file must get: images are kept,
converted or skipped and counted by kind (shard stage), or named in one line with exit 2
(predict); archives are refused with one line naming the archive and the entry, and nothing
is written outside the stage's outputs (fetch stage).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.reliability.conftest import (
    assert_one_line_error,
    run_cli,
    run_fetch,
    run_shard,
    tree_digest,
)
from tests.reliability.corpus import ARCHIVE_CASES, CONVERTED, IMAGE_CASES, KEPT, SKIPPED


def write_layout(root: Path) -> None:
    """One training image per corpus case (plus one plain val and test image)."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    cases = [*IMAGE_CASES, IMAGE_CASES[0], IMAGE_CASES[0]]
    for image_id, case in enumerate(cases, start=1):
        name = f"{image_id:03d}_{case.name}.jpg"
        (root / "images" / name).write_bytes(case.make())
        images.append({"id": image_id, "file_name": name})
        annotations.append({"id": image_id, "image_id": image_id, "caption": f"a {case.name}"})
    n = len(IMAGE_CASES)
    splits = {"train": list(range(1, n + 1)), "val": [n + 1], "test": [n + 2]}
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (root / "splits.json").write_text(json.dumps(splits))


def test_shard_stage_keeps_converts_or_skips_each_image_by_kind(tmp_path: Path):
    raw, out = tmp_path / "raw", tmp_path / "shards"
    write_layout(raw)
    before = tree_digest(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"shard": {"workers": 1}}))
    result = run_shard(params, raw, out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {
        entry["file_name"].split("_", 1)[1][:-4]: entry["kind"] for entry in manifest["skipped"]
    }
    expected_skips = {c.name: c.kind for c in IMAGE_CASES if c.treatment == SKIPPED}
    assert skipped == expected_skips
    train = manifest["splits"]["train"]
    assert train["skipped"] == len(expected_skips)
    assert train["reencoded"] == sum(c.treatment == CONVERTED for c in IMAGE_CASES)
    assert train["count"] == sum(c.treatment in (CONVERTED, KEPT) for c in IMAGE_CASES)
    # Each reported skip is also in the log, and the inputs are untouched.
    for name in expected_skips:
        assert name in result.stderr
    after = tree_digest(tmp_path, exclude=(out, params))
    assert after == {k: v for k, v in before.items() if k != "params.yaml"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.test_cli import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "soft_attention")


@pytest.mark.parametrize(
    "case", [c for c in IMAGE_CASES if c.treatment == SKIPPED], ids=lambda c: c.name
)
def test_predict_names_an_unusable_image_in_one_line(tmp_path: Path, tiny_model: Path, case):
    bad = tmp_path / f"{case.name}.jpg"
    bad.write_bytes(case.make())
    result = run_cli("predict", str(bad), "--model", str(tiny_model), "--max-length", "2")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: ")


def test_predict_captions_every_convertible_image(tmp_path: Path, tiny_model: Path):
    paths = []
    for case in IMAGE_CASES:
        if case.treatment != SKIPPED:
            paths.append(tmp_path / f"{case.name}.jpg")
            paths[-1].write_bytes(case.make())
    result = run_cli("predict", *map(str, paths), "--model", str(tiny_model), "--max-length", "2")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == list(map(str, paths))


@pytest.mark.parametrize("case", ARCHIVE_CASES, ids=lambda c: c.name)
def test_fetch_refuses_a_hostile_archive_in_one_line(tmp_path: Path, case):
    given = tmp_path / "given"
    given.mkdir()
    archive = case.write(given)
    params = tmp_path / "params.yaml"
    source = {"source": "flickr8k", "flickr8k": {"files": [str(archive)]}}
    params.write_text(yaml.safe_dump({"fetch": source}))
    out, downloads = tmp_path / "data" / "raw", tmp_path / "data" / "downloads"  # run_fetch's
    before = tree_digest(tmp_path)
    result = run_fetch(tmp_path, params)
    assert_one_line_error(result, str(archive), case.message)
    assert not out.exists()
    # Nothing anywhere but the downloads folder (the stage's cache of what it fetched).
    assert tree_digest(tmp_path, exclude=(downloads,)) == before
    if downloads.exists():
        assert not [p for p in downloads.rglob("*") if "planted" in p.name]
    assert not Path("/tmp/planted.txt").exists()
