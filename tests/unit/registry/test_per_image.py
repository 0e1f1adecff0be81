"""Reading per_image.json for the gate, and pairing two models' scores image by image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning.registry.per_image import DifferentTestSets, paired_arrays, read_per_image


def write(path: Path, scores: dict[int, float], refs: str = "a red circle") -> Path:
    entries = [
        {"image_id": i, "references": [refs], "beam": {"caption": "x", "CIDEr": s}}
        for i, s in scores.items()
    ]
    path.write_text(json.dumps(entries))
    return path


def test_pairs_by_image_id_whatever_the_order(tmp_path: Path):
    a = read_per_image(write(tmp_path / "a.json", {3: 0.3, 1: 0.1, 2: 0.2}), "beam", "CIDEr")
    b = read_per_image(write(tmp_path / "b.json", {1: 1.0, 2: 2.0, 3: 3.0}), "beam", "CIDEr")
    x, y = paired_arrays(a, b)
    assert x.tolist() == [0.1, 0.2, 0.3] and y.tolist() == [1.0, 2.0, 3.0]
    assert a.test_set == b.test_set and len(a.test_set) == 16


def test_other_images_or_references_are_not_comparable(tmp_path: Path):
    a = read_per_image(write(tmp_path / "a.json", {1: 0.1, 2: 0.2}), "beam", "CIDEr")
    fewer = read_per_image(write(tmp_path / "b.json", {1: 0.1}), "beam", "CIDEr")
    with pytest.raises(
        DifferentTestSets, match=r"different test sets: .* scored on 2 test images, .* on 1, 1 in"
    ):
        paired_arrays(a, fewer)
    other = read_per_image(write(tmp_path / "c.json", {1: 0.1, 2: 0.2}, "x"), "beam", "CIDEr")
    with pytest.raises(DifferentTestSets, match="the same 2 test images with different references"):
        paired_arrays(a, other)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[]", "non-empty list"),
        ("{", "not valid JSON"),
        ('[{"references": []}]', r"entry \[0\]: expected an object with 'image_id'"),
        ('[{"image_id": 1, "greedy": {"CIDEr": 1}}]', r"no decoding 'beam'; found \['greedy'\]"),
        ('[{"image_id": 1, "beam": {"CIDEr": "high"}}]', r"\[0\]\.beam: expected a number"),
        (
            '[{"image_id": 1, "beam": {"CIDEr": 1}}, {"image_id": 1, "beam": {"CIDEr": 1}}]',
            r"entry \[1\]: image_id 1 appears twice",
        ),
    ],
)
def test_bad_files_name_the_file_and_entry(tmp_path: Path, content: str, match: str):
    path = tmp_path / "per_image.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        read_per_image(path, "beam", "CIDEr")
    assert str(path) in str(info.value)
