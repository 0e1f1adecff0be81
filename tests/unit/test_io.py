"""Reading a JSON file a step needs: a missing or invalid one fails naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning.errors import BadInputError, CaptioningError, MissingFileError
from captioning.io import read_json_input


class _StageError(CaptioningError):
    pass


def test_reads_the_json(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"splits": [1, 2]}', encoding="utf-8")
    assert read_json_input(path, "not found") == {"splits": [1, 2]}


def test_a_missing_file_says_what_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    with pytest.raises(MissingFileError, match=r"a\.json: not found; run the x stage$"):
        read_json_input(path, "not found; run the x stage")
    with pytest.raises(_StageError, match="run the x stage"):
        read_json_input(path, "not found; run the x stage", _StageError)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"a\.json: not valid JSON \(Expecting"):
        read_json_input(path, "not found")
    with pytest.raises(_StageError, match="not valid JSON"):
        read_json_input(path, "not found", _StageError)
