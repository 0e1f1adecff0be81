import json
from collections import Counter

import pytest

from captioning.data.layout import (
    MAX_CAPTION_CHARS,
    AnnotationError,
    UnsafePathError,
    inside,
    keep_captions,
    load_dataset,
    name_problem,
    read_json,
    read_utf8,
    skip_counts,
)
from captioning.errors import CaptioningError


def test_loads_records_per_split_in_order(tiny_layout):
    data = load_dataset(tiny_layout)
    assert {k: len(v) for k, v in data.items()} == {"train": 6, "val": 2, "test": 2}
    first = data["train"][0]
    assert first.image_id == 1 and first.file_name == "img_0001.jpg"
    assert first.captions == ("a picture number 0", "a picture number 1")
    assert first.extra == {"width": 64, "height": 64}


def test_dangling_blank_and_long_captions_are_skipped_and_counted(tiny_layout):
    path = tiny_layout / "captions.json"
    coco = json.loads(path.read_text())
    coco["annotations"][3]["image_id"] = 999  # image 2's second caption
    coco["annotations"][0]["caption"] = "   "
    coco["annotations"][1]["caption"] = "x" * (MAX_CAPTION_CHARS + 1)
    coco["annotations"][2]["caption"] = " " + "y" * MAX_CAPTION_CHARS + " "  # at the limit: kept
    path.write_text(json.dumps(coco))
    skipped: Counter[str] = Counter()
    data = load_dataset(tiny_layout, skipped)
    assert skipped == {"dangling": 1, "blank": 1, "too long": 1}
    assert data["train"][0].captions == ()
    assert data["train"][1].captions == ("y" * MAX_CAPTION_CHARS,)


def test_wrong_type_in_captions_json(tiny_layout):
    path = tiny_layout / "captions.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["caption"] = 42
    path.write_text(json.dumps(coco))
    with pytest.raises(
        AnnotationError, match=r"annotations\[0\]\.caption: expected str, found int 42"
    ):
        load_dataset(tiny_layout)


def test_invalid_json_reports_line(tiny_layout):
    (tiny_layout / "captions.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(AnnotationError, match=r"line 2 column"):
        load_dataset(tiny_layout)


def test_split_with_unknown_image(tiny_layout):
    path = tiny_layout / "splits.json"
    splits = json.loads(path.read_text())
    splits["test"].append(12345)
    path.write_text(json.dumps(splits))
    with pytest.raises(AnnotationError, match=r"test\[2\]: image id 12345"):
        load_dataset(tiny_layout)


def test_read_utf8_names_the_line_and_byte_offset_of_latin1(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes("first line\nun caf\xe9\n".encode("latin-1"))
    with pytest.raises(AnnotationError) as err:
        read_utf8(path)
    assert str(err.value) == (
        f"{path}: line 2, byte offset 17: byte 0xe9 is not valid UTF-8; expected UTF-8 text "
        "(re-save the file as UTF-8)"
    )
    path.write_text("un café\r\nsans souci\n", encoding="utf-8")
    assert read_utf8(path) == "un café\r\nsans souci\n"  # as written: no newline translation
    with pytest.raises(AnnotationError, match="file not found"):
        read_utf8(tmp_path / "absent.json")


def test_read_json_refuses_latin1(tmp_path):
    path = tmp_path / "captions.json"
    path.write_bytes('{"caption": "café"}'.encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"line 1, byte offset 16: byte 0xe9"):
        read_json(path)


@pytest.mark.parametrize(
    "name,problem",
    [
        ("a.jpg", None),
        ("train2017/a.jpg", None),
        ("a..b.jpg", None),
        ("../a.jpg", "escapes the target directory (..)"),
        ("train/../../a.jpg", "escapes the target directory (..)"),
        ("..\\a.jpg", "escapes the target directory (..)"),
        ("/etc/hostname", "has an absolute path"),
        ("\\a.jpg", "has an absolute path"),
        ("C:/a.jpg", "has an absolute path"),
        ("a\0.jpg", "has a NUL byte in its name"),
    ],
)
def test_name_problem(name, problem):
    assert name_problem(name) == problem


def test_inside_joins_names_that_stay_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "sub" / "a.jpg")  # a link that stays inside
    assert inside(tmp_path, "sub/a.jpg", "f: images[0]") == tmp_path / "sub" / "a.jpg"
    assert inside(tmp_path, "link.jpg", "f: images[0]") == tmp_path / "link.jpg"  # not resolved
    assert inside(tmp_path, "missing.jpg", "f: images[0]") == tmp_path / "missing.jpg"


@pytest.mark.parametrize(
    "name,reason",
    [
        ("../a.jpg", "escapes the target directory"),
        ("/etc/hostname", "has an absolute path"),
        ("", "is empty"),
        ("./", "is empty"),
        ("out.jpg", "resolves outside"),  # a link to a file outside
        ("outdir/a.jpg", "resolves outside"),  # through a linked folder
        ("loop.jpg", "cannot be resolved"),
    ],
)
def test_inside_refuses_names_that_lead_out(tmp_path, name, reason):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "a.jpg").write_bytes(b"x")
    (root / "out.jpg").symlink_to(tmp_path / "secret" / "a.jpg")
    (root / "outdir").symlink_to(tmp_path / "secret")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    with pytest.raises(UnsafePathError, match=reason) as err:
        inside(root, name, "captions.json: images[3].file_name")
    assert str(err.value).startswith(f"captions.json: images[3].file_name: {name!r} ")
    assert isinstance(err.value, CaptioningError)


def test_keep_captions_strips_and_counts_blank_and_too_long():
    skipped: Counter[str] = Counter()
    captions = [" a dog ", "   ", "", "x" * MAX_CAPTION_CHARS, "y" * (MAX_CAPTION_CHARS + 1)]
    assert keep_captions(captions, skipped) == ["a dog", "x" * MAX_CAPTION_CHARS]
    assert skipped == {"blank": 2, "too long": 1}
    assert skip_counts(skipped) == {"blank": 2, "dangling": 0, "too long": 1}
    assert skip_counts(Counter()) == {}  # nothing skipped: nothing to add to the outputs
