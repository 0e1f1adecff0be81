import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from captioning.config import CaptchaConfig, ConfigError, FetchConfig, from_dict
from captioning.data.layout import load_dataset
from captioning.data.sources import captcha
from captioning.data.sources import registry as sources
from captioning.data.sources.common import SourceError

SMALL = CaptchaConfig(
    count=20, n_train=12, n_val=4, n_words=50, n_test_seed=0, n_test_oov=0, workers=1
)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_word_list_is_fixed_frequent_short_english_words():
    words = captcha.word_list(2500, 3, 5)
    assert len(words) == len(set(words)) == 2500
    assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 5 for w in words)
    assert not set(words) & captcha.BLOCKLIST
    assert words[:3] == ["the", "and", "for"]  # frequency order
    assert "paris" not in words  # a proper noun (capitalised in the dictionary)
    assert captcha.word_list(2500, 3, 5) == words
    with pytest.raises(SourceError, match="only .* words of 3-5 letters"):
        captcha.word_list(10**6, 3, 5)


def test_fonts_ship_with_the_packages_and_a_missing_one_is_named():
    paths = captcha.font_paths(CaptchaConfig().fonts)
    assert len({p.name for p in paths}) == 4 and all(p.is_file() for p in paths)
    with pytest.raises(SourceError, match="'NoSuchFont.ttf' not found"):
        captcha.font_paths(["NoSuchFont.ttf"])


def test_layout_splits_labels_and_images(tmp_path):
    summary = sources.fetch(FetchConfig(source="captcha", captcha=SMALL), tmp_path / "raw")
    assert summary == {
        "train": 12,
        "val": 4,
        "test": 4,
        "images": 20,
        "words": 50,
        "words_used": summary["words_used"],
    }
    root = tmp_path / "raw"
    dataset = load_dataset(root)
    ids = [r.image_id for s in ("train", "val", "test") for r in dataset[s]]
    assert ids == list(range(1, 21))  # in order: train, then val, then test
    words = (root / "words.txt").read_text().split()
    assert len(words) == 50
    labels = [line.split("\t") for line in (root / "spec_train_val.txt").read_text().splitlines()]
    assert len(labels) == 16  # train + val only, as the seed's label file
    for record, (label_id, word) in zip(dataset["train"] + dataset["val"], labels, strict=True):
        assert label_id == Path(record.file_name).stem and record.captions == (word,)
        assert word in words and record.extra["font"] in SMALL.fonts
    with Image.open(root / "images" / dataset["test"][0].file_name) as image:
        assert image.size == (160, 60) and image.mode == "RGB"
    assert not (tmp_path / ".raw.partial").exists()


def test_two_runs_and_any_number_of_workers_give_identical_files(tmp_path):
    captcha.generate_captcha(tmp_path / "a", SMALL)
    captcha.generate_captcha(tmp_path / "b", SMALL)
    parallel = CaptchaConfig(**{**SMALL.__dict__, "workers": 2})
    captcha.generate_captcha(tmp_path / "c", parallel)
    a = digest(tmp_path / "a")
    assert a == digest(tmp_path / "b")
    c = digest(tmp_path / "c")
    assert {k: v for k, v in c.items() if k != "captions.json"} == {
        k: v for k, v in a.items() if k != "captions.json"
    }
    # Another seed draws other images.
    other = CaptchaConfig(**{**SMALL.__dict__, "seed": 1, "test_seed": 2})
    captcha.generate_captcha(tmp_path / "d", other)
    assert digest(tmp_path / "d")["images/captcha_000001.png"] != a["images/captcha_000001.png"]


def test_seeding_does_not_leak_into_captcha_outside(tmp_path):
    import secrets

    import captcha.image as image_module

    captcha.draw(0, SMALL, ["word"])
    assert image_module.secrets is secrets


def test_a_killed_run_resumes_from_its_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(captcha, "CHUNK", 8)  # 20 images: chunks of 8, 8, 4
    out = tmp_path / "raw"
    real = captcha._write_chunk

    def killed_at_chunk_2(chunk, *args):
        if chunk == 2:
            raise KeyboardInterrupt
        return real(chunk, *args)

    monkeypatch.setattr(captcha, "_write_chunk", killed_at_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        captcha.generate_captcha(out, SMALL)
    work = tmp_path / ".raw.partial"
    assert not out.exists() and sorted(p.name for p in (work / "chunks").iterdir()) == [
        "00000.json",
        "00001.json",
    ]
    first = work / "images" / "captcha_000001.png"
    stamp = first.stat().st_mtime_ns

    drawn = []
    monkeypatch.setattr(captcha, "_write_chunk", lambda c, *a: drawn.append(c) or real(c, *a))
    captcha.generate_captcha(out, SMALL)
    assert drawn == [0, 1, 2]
    assert (out / "images" / "captcha_000001.png").stat().st_mtime_ns == stamp  # kept
    monkeypatch.setattr(captcha, "CHUNK", 500)
    captcha.generate_captcha(tmp_path / "fresh", SMALL)
    assert digest(out) == digest(tmp_path / "fresh")


def test_config_checks_the_split_sizes():
    with pytest.raises(ConfigError, match=r"fetch\.captcha\.count.*> n_train \+ n_val"):
        from_dict(
            CaptchaConfig,
            {"count": 10, "n_train": 8, "n_val": 2},
            path="params.yaml",
            prefix="fetch.captcha.",
        )
    captions = json.dumps(CaptchaConfig().__dict__)
    assert "STIXGeneralItalic.ttf" in captions


def test_generalisation_sets_other_seed_and_words_outside_the_list(tmp_path):
    cfg = CaptchaConfig(
        count=6, n_train=3, n_val=1, n_words=50, n_test_seed=4, n_test_oov=30, workers=1
    )
    summary = sources.fetch(FetchConfig(source="captcha", captcha=cfg), tmp_path / "raw")
    assert (summary["test_seed"], summary["test_oov"], summary["images"]) == (4, 30, 40)
    dataset = load_dataset(tmp_path / "raw")
    words = set((tmp_path / "raw" / "words.txt").read_text().split())
    seed_words = [r.captions[0] for r in dataset["test_seed"]]
    oov = [r.captions[0] for r in dataset["test_oov"]]
    assert set(seed_words) <= words
    assert not set(oov) & words and all(w.isalpha() and 3 <= len(w) <= 5 for w in oov)
    # Another seed: the other-seed images are not the training images of the same index.
    first = {r.image_id: r for s in dataset.values() for r in s}
    assert [first[i].captions for i in (1, 2, 3)] != [first[i].captions for i in (7, 8, 9)]
    # Reproducible, and the extra sets do not change the images before them.
    again = sources.fetch(FetchConfig(source="captcha", captcha=cfg), tmp_path / "again")
    assert again == summary and digest(tmp_path / "raw") == digest(tmp_path / "again")
    small = CaptchaConfig(count=6, n_train=3, n_val=1, n_words=50, n_test_seed=0, n_test_oov=0)
    sources.fetch(FetchConfig(source="captcha", captcha=small), tmp_path / "plain")
    plain = digest(tmp_path / "plain")
    assert all(digest(tmp_path / "raw")[k] == v for k, v in plain.items() if k.startswith("images"))
    assert "test_oov" not in json.loads((tmp_path / "plain" / "splits.json").read_text())


def test_oov_word_avoids_the_list():
    import random

    cfg = CaptchaConfig(min_letters=1, max_letters=1)
    letters = frozenset("abcdefghijklmnopqrstuvwxy")
    assert {captcha.oov_word(random.Random(i), cfg, letters) for i in range(20)} == {"z"}
