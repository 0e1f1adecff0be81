import json

import pytest

from captioning.data.layout import AnnotationError, load_dataset


def test_loads_records_per_split_in_order(tiny_layout):
    data = load_dataset(tiny_layout)
    assert {k: len(v) for k, v in data.items()} == {"train": 6, "val": 2, "test": 2}
    first = data["train"][0]
    assert first.image_id == 1 and first.file_name == "img_0001.jpg"
    assert first.captions == ("a picture number 0", "a picture number 1")
    assert first.extra == {"width": 64, "height": 64}


def test_caption_for_unknown_image_names_the_place(tiny_layout):
    path = tiny_layout / "captions.json"
    coco = json.loads(path.read_text())
    coco["annotations"][3]["image_id"] = 999
    path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError) as err:
        load_dataset(tiny_layout)
    assert str(path) in str(err.value) and "annotations[3]" in str(err.value)
    assert "999" in str(err.value)


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
