"""The embedded shapes dataset: layout, determinism, geometry and caption truthfulness."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from captioning.config import ShapesConfig
from captioning.data.sources import shapes
from captioning.data.sources.shapes import COLOURS, SHAPES, SIZES, VOCABULARY, generate_shapes
from captioning.metrics.shapes_accuracy import parse_objects

CFG = ShapesConfig(n_train=8, n_val=2, n_test=2, image_size=224, captions_per_image=5, seed=3)
# Many small images for the statistical checks (geometry scales with image_size).
MANY = ShapesConfig(n_train=240, n_val=5, n_test=5, image_size=64, captions_per_image=5, seed=11)

RELATION_PHRASES = {
    ("to", "the", "left", "of"): "left",
    ("to", "the", "right", "of"): "right",
    ("above",): "above",
    ("below",): "below",
}


def _load(root: Path) -> tuple[dict, dict]:
    captions = json.loads((root / "captions.json").read_text(encoding="utf-8"))
    splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
    return captions, splits


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _captions_by_image(data: dict) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "small"
    generate_shapes(root, CFG)
    return root


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("shapes") / "many"
    generate_shapes(root, MANY)
    data, splits = _load(root)
    return root, data, splits


def _mentions(caption: str) -> list[tuple[int, int, tuple[str, str]]]:
    """(first word index of the noun phrase incl. article, index of the shape word, pair)."""
    words = caption.split()
    out = []
    for i in range(len(words) - 1):
        if words[i] in COLOURS and words[i + 1] in SHAPES:
            start = i - 1 if i >= 1 and words[i - 1] in SIZES else i
            start = start - 1 if start >= 1 and words[start - 1] in ("a", "an") else start
            out.append((start, i + 1, (words[i], words[i + 1])))
    return out


def _relations(caption: str) -> list[tuple[tuple[str, str], str, tuple[str, str]]]:
    """Every stated ``P <relation> Q``: the phrases right before and right after the relation."""
    words = caption.split()
    mentions = _mentions(caption)
    out = []
    i = 0
    while i < len(words):
        for phrase, rel in RELATION_PHRASES.items():
            if tuple(words[i : i + len(phrase)]) == phrase:
                before = [m for m in mentions if m[1] == i - 1]
                after = [m for m in mentions if m[0] == i + len(phrase)]
                assert before and after, f"relation without two objects around it: {caption!r}"
                out.append((before[0][2], rel, after[0][2]))
                i += len(phrase) - 1
                break
        i += 1
    return out


def _holds(p: dict, rel: str, q: dict) -> bool:
    """The relation is well defined: 2:1 dominant axis and a clear gap between the boxes."""
    dx, dy = q["x"] - p["x"], q["y"] - p["y"]
    if rel == "left":
        return dx >= 2 * abs(dy) and q["box"][0] > p["box"][2]
    if rel == "right":
        return -dx >= 2 * abs(dy) and p["box"][0] > q["box"][2]
    if rel == "above":
        return dy >= 2 * abs(dx) and q["box"][1] > p["box"][3]
    if rel == "below":
        return -dy >= 2 * abs(dx) and p["box"][1] > q["box"][3]
    raise AssertionError(rel)


def test_same_config_gives_byte_identical_files(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_shapes(again, CFG)
    assert _digest(again) == _digest(small)


def test_another_seed_gives_other_images(small: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_shapes(other, ShapesConfig(**{**CFG.__dict__, "seed": CFG.seed + 1}))
    a, b = _digest(small), _digest(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_images_do_not_depend_on_other_split_sizes(small: Path, tmp_path: Path) -> None:
    bigger = tmp_path / "bigger"
    generate_shapes(bigger, ShapesConfig(**{**CFG.__dict__, "n_train": CFG.n_train + 3}))
    data_a, splits_a = _load(small)
    data_b, splits_b = _load(bigger)
    by_id_a = {im["id"]: im for im in data_a["images"]}
    by_id_b = {im["id"]: im for im in data_b["images"]}
    for split in ("val", "test"):
        for id_a, id_b in zip(splits_a[split], splits_b[split], strict=True):
            im_a, im_b = by_id_a[id_a], by_id_b[id_b]
            assert im_a["objects"] == im_b["objects"]
            assert (small / "images" / im_a["file_name"]).read_bytes() == (
                bigger / "images" / im_b["file_name"]
            ).read_bytes()


def test_summary_and_split_sizes(tmp_path: Path) -> None:
    summary = generate_shapes(tmp_path / "d", CFG)
    assert summary == {"train": 8, "val": 2, "test": 2, "images": 12, "annotations": 60}
    data, splits = _load(tmp_path / "d")
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 2, "test": 2}
    all_ids = [i for ids in splits.values() for i in ids]
    assert len(set(all_ids)) == len(all_ids) == 12
    assert set(all_ids) == {im["id"] for im in data["images"]}


def test_coco_format_and_files(small: Path) -> None:
    data, _ = _load(small)
    assert set(data) == {"info", "images", "annotations"}
    ids = [im["id"] for im in data["images"]]
    assert len(set(ids)) == len(ids) == 12
    for im in data["images"]:
        assert set(im) >= {"id", "file_name", "width", "height", "objects"}
        assert im["width"] == im["height"] == CFG.image_size
        assert im["file_name"] == f"shapes_{im['id']:012d}.jpg"
        with Image.open(small / "images" / im["file_name"]) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (CFG.image_size, CFG.image_size)
            img.load()
    assert sorted(p.name for p in (small / "images").iterdir()) == sorted(
        im["file_name"] for im in data["images"]
    )
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert set(per_image) == set(ids)
    assert set(per_image.values()) == {CFG.captions_per_image}
    for ann in data["annotations"]:
        assert set(ann) == {"id", "image_id", "caption"}
        assert isinstance(ann["caption"], str) and ann["caption"]


def test_no_half_written_dataset_when_killed(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "d"
    generate_shapes(out, CFG)
    before = _digest(out)
    calls = 0
    real = shapes.render_scene

    def dying(rng, size):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return real(rng, size)

    monkeypatch.setattr(shapes, "render_scene", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(out, ShapesConfig(**{**CFG.__dict__, "seed": 99}))
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_objects_are_valid_and_distinct(many) -> None:
    _, data, _ = many
    counts = Counter()
    for im in data["images"]:
        objects = im["objects"]
        counts[len(objects)] += 1
        assert 1 <= len(objects) <= 3
        pairs = [(o["colour"], o["shape"]) for o in objects]
        assert len(set(pairs)) == len(pairs), f"repeated (colour, shape) in image {im['id']}"
        for o in objects:
            assert o["colour"] in COLOURS and o["shape"] in SHAPES and o["size"] in SIZES
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= im["width"] and 0 <= y0 < y1 <= im["height"]
            assert x1 - x0 == y1 - y0
            assert x0 <= o["x"] < x1 and y0 <= o["y"] < y1
    n = sum(counts.values())
    assert set(counts) == {1, 2, 3}
    assert all(0.2 < counts[k] / n < 0.47 for k in (1, 2, 3)), counts


def test_object_sizes_scale_with_the_image(many, small: Path) -> None:
    data_small, _ = _load(small)
    for data, size in ((many[1], MANY.image_size), (data_small, CFG.image_size)):
        for im in data["images"]:
            for o in im["objects"]:
                side = (o["box"][2] - o["box"][0]) / size
                lo, hi = shapes.SIZE_RANGE[o["size"]]
                assert lo - 1.0 / size <= side <= hi + 1.0 / size, (o, size)


def test_objects_do_not_overlap(many) -> None:
    _, data, _ = many
    for im in data["images"]:
        boxes = [o["box"] for o in im["objects"]]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                apart = a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
                assert apart, f"image {im['id']}: boxes {a} and {b} overlap or touch"


def test_every_caption_names_exactly_the_objects(many, small: Path) -> None:
    for data in (many[1], _load(small)[0]):
        captions = _captions_by_image(data)
        for im in data["images"]:
            truth = Counter((o["colour"], o["shape"]) for o in im["objects"])
            for caption in captions[im["id"]]:
                assert parse_objects(caption) == truth, (caption, im["objects"])


def test_sizes_in_captions_are_true(many) -> None:
    _, data, _ = many
    captions = _captions_by_image(data)
    for im in data["images"]:
        size_of = {(o["colour"], o["shape"]): o["size"] for o in im["objects"]}
        for caption in captions[im["id"]]:
            words = caption.split()
            for start, end, pair in _mentions(caption):
                stated = [w for w in words[start:end] if w in SIZES]
                assert stated in ([], [size_of[pair]]), caption


def test_stated_relations_hold(many) -> None:
    _, data, _ = many
    captions = _captions_by_image(data)
    stated = 0
    for im in data["images"]:
        by_pair = {(o["colour"], o["shape"]): o for o in im["objects"]}
        for caption in captions[im["id"]]:
            for p, rel, q in _relations(caption):
                stated += 1
                assert _holds(by_pair[p], rel, by_pair[q]), (caption, im["objects"])
    assert stated > 100


def test_multi_object_scenes_state_a_relation(many) -> None:
    _, data, _ = many
    captions = _captions_by_image(data)
    for im in data["images"]:
        n_relational = sum(bool(_relations(c)) for c in captions[im["id"]])
        if len(im["objects"]) == 1:
            assert n_relational == 0
        else:
            assert n_relational >= 2, captions[im["id"]]
        if len(im["objects"]) == 2:
            p, q = im["objects"]
            assert any(_holds(p, r, q) for r in ("left", "right", "above", "below"))


def test_captions_are_distinct_plain_words_from_a_small_vocabulary(many) -> None:
    _, data, _ = many
    captions = _captions_by_image(data)
    used: set[str] = set()
    for image_captions in captions.values():
        assert len(set(image_captions)) == len(image_captions), image_captions
        for caption in image_captions:
            assert caption == caption.strip() and "  " not in caption
            words = caption.split(" ")
            assert all(w.isalpha() and w.islower() for w in words), caption
            used.update(words)
    assert used <= VOCABULARY
    assert len(VOCABULARY) <= 45
    # Relation words, sizes and every colour and shape do occur.
    assert {"left", "right", "above", "below", "small", "large"} <= used
    assert set(COLOURS) | set(SHAPES) <= used


def test_articles_agree(many) -> None:
    _, data, _ = many
    for ann in data["annotations"]:
        words = ann["caption"].split()
        for article, following in zip(words, words[1:], strict=False):
            if article == "a":
                assert following[0] not in "aeiou", ann["caption"]
            if article == "an":
                assert following[0] in "aeiou", ann["caption"]


def test_object_pixels_show_the_object_colour(small: Path) -> None:
    data, _ = _load(small)
    for im in data["images"]:
        with Image.open(small / "images" / im["file_name"]) as img:
            pixels = img.convert("RGB").load()
        for o in im["objects"]:
            # The box centre is inside every shape (the star's inner radius included).
            cx, cy = (o["box"][0] + o["box"][2]) // 2, (o["box"][1] + o["box"][3]) // 2
            got = [pixels[cx + dx, cy + dy] for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
            mean = [sum(c[k] for c in got) / len(got) for k in range(3)]
            expected = shapes.COLOUR_RGB[o["colour"]]
            assert max(abs(m - e) for m, e in zip(mean, expected, strict=True)) < 40, (o, mean)
