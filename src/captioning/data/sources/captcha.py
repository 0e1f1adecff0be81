"""The seed's CAPTCHA set: images of English words drawn by the ``captcha`` package.

As the assignment describes it: ``count`` images (140,000) of ``n_words`` (2,500) distinct
English words of 3-5 letters in four fonts, with coloured noise (dots, a curve). Written in the
internal layout, each image's caption being its word::

    out_dir/images/captcha_000001.png
    out_dir/captions.json      one caption (the word) per image; each image also has "font"
    out_dir/splits.json        in order: the first n_train, the next n_val, the rest test;
                               then n_test_seed images (test_seed) and n_test_oov (test_oov)
    out_dir/spec_train_val.txt "<image id>\\t<word>" for train + val, as the seed's label file
    out_dir/words.txt          the word list, one per line, in frequency order

Reproducible: ``captcha`` draws its randomness from ``secrets`` (unseedable), so every image is
drawn with ``captcha.image.secrets`` swapped for a ``random.Random`` seeded by (seed, index);
the word and font of an image come from the same generator. The ``test_seed`` images are drawn
the same way from ``test_seed``; the ``test_oov`` ones from their own generator, each word a
random string of min-max letters that is not in the word list (a reader that memorised the
list fails them). Two runs of one config give
byte-identical files, whatever the number of workers. Generation runs in chunks across
processes in a work directory beside ``out_dir``; a killed run resumes from its finished
chunks, and ``out_dir`` is replaced in one rename at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import shutil
import string
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tqdm import tqdm

from captioning.config import CaptchaConfig
from captioning.data.sources.common import SourceError
from captioning.io import read_json_object, replace_path, write_json, write_text
from captioning.processes import exclusive, run_each

logger = logging.getLogger(__name__)

CHUNK = 500  # images per unit of work (and of resume)
WORD_PATTERN = "[a-z]{{{lo},{hi}}}"
# wordfreq's candidates: the most frequent English words, more than enough 3-5 letter ones.
_CANDIDATES = 50_000
# Words nobody wants to see on a test image; the list is applied before taking n_words.
BLOCKLIST: frozenset[str] = frozenset(
    {"anal", "anus", "bitch", "boob", "boobs", "cock", "cocks", "cum", "cunt", "dick", "dicks"}
    | {"dildo", "fag", "fuck", "horny", "milf", "nazi", "nigga", "nude", "nudes", "penis"}
    | {"porn", "pussy", "rape", "raped", "sex", "sexy", "shit", "slut", "tits", "whore"}
)
SPLITS = ("train", "val", "test", "test_seed", "test_oov")
LABELS_FILE = "spec_train_val.txt"
WORDS_FILE = "words.txt"
_FORMAT = 1  # bump when the bytes a config produces change


def word_list(n_words: int, min_letters: int, max_letters: int) -> list[str]:
    """The ``n_words`` most frequent English words (wordfreq) of min-max lower-case letters
    that are also in the ``english-words`` web2 list (which keeps proper nouns capitalised, so
    names drop out), minus ``BLOCKLIST``; in frequency order. Data ship inside both wheels."""
    from english_words import get_english_words_set
    from wordfreq import top_n_list

    pattern = re.compile(WORD_PATTERN.format(lo=min_letters, hi=max_letters))
    dictionary = get_english_words_set(["web2"], lower=False, alpha=True)
    words = [
        w
        for w in top_n_list("en", _CANDIDATES)
        if pattern.fullmatch(w) and w in dictionary and w not in BLOCKLIST
    ]
    if len(words) < n_words:
        raise SourceError(
            f"fetch.captcha.n_words is {n_words}, only {len(words)} words of "
            f"{min_letters}-{max_letters} letters are available"
        )
    return words[:n_words]


def font_paths(names: Sequence[str]) -> list[Path]:
    """Font files by name: an absolute path, or a file shipped with ``captcha`` (its
    DroidSansMono.ttf) or with matplotlib (mpl-data/fonts/ttf), so a fresh venv has them."""
    import captcha
    import matplotlib

    places = [
        Path(captcha.__file__).parent / "data",
        Path(matplotlib.get_data_path()) / "fonts" / "ttf",
    ]
    paths = []
    for name in names:
        candidates = [Path(name)] if Path(name).is_absolute() else [p / name for p in places]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise SourceError(
                f"fetch.captcha.fonts: {name!r} not found (looked in {[str(p) for p in places]})"
            )
        paths.append(found)
    return paths


def total_images(cfg: CaptchaConfig) -> int:
    return cfg.count + cfg.n_test_seed + cfg.n_test_oov


def split_of(index: int, cfg: CaptchaConfig) -> str:
    """Split of the ``index``-th image (0-based): train, val, test, test_seed, test_oov."""
    if index < cfg.n_train:
        return "train"
    if index < cfg.n_train + cfg.n_val:
        return "val"
    if index < cfg.count:
        return "test"
    return "test_seed" if index < cfg.count + cfg.n_test_seed else "test_oov"


def split_count(split: str, cfg: CaptchaConfig) -> int:
    """Images of an extra split (0: the split is left out of splits.json)."""
    return {"test_seed": cfg.n_test_seed, "test_oov": cfg.n_test_oov}[split]


def oov_word(rng: random.Random, cfg: CaptchaConfig, vocabulary: frozenset[str]) -> str:
    """A random string of min-max lower-case letters that is not in ``vocabulary``."""
    while True:
        n = rng.randint(cfg.min_letters, cfg.max_letters)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        if word not in vocabulary:
            return word


def file_name(image_id: int) -> str:
    return f"captcha_{image_id:06d}.png"


def label_id(image_id: int) -> str:
    """The image's id in the label and answer files: its file name without the extension."""
    return Path(file_name(image_id)).stem


class _SeededSecrets:
    """The three ``secrets`` functions ``captcha.image`` calls, drawn from a seeded Random."""

    def __init__(self, rng: random.Random) -> None:
        self.randbelow = rng.randrange  # randbelow(n): 0 <= k < n
        self.randbits = rng.getrandbits
        self.choice = rng.choice


@contextlib.contextmanager
def seeded_captcha(rng: random.Random) -> Iterator[None]:
    """``captcha.image`` draws from ``rng`` inside (one process draws one image at a time)."""
    import captcha.image

    original = captcha.image.secrets
    captcha.image.secrets = _SeededSecrets(rng)  # type: ignore[assignment]
    try:
        yield
    finally:
        captcha.image.secrets = original


@cache
def _generators(fonts: tuple[str, ...], width: int, height: int, sizes: tuple[int, ...]) -> list:
    """One ``ImageCaptcha`` per font (an image is in one font), built once per process."""
    from captcha.image import ImageCaptcha

    return [
        ImageCaptcha(width=width, height=height, fonts=[str(p)], font_sizes=sizes)
        for p in font_paths(fonts)
    ]


def draw(index: int, cfg: CaptchaConfig, words: Sequence[str]) -> tuple[Any, str, str]:
    """The ``index``-th image (PIL), its word and its font name, all from (seed, index); the
    generalisation sets' from (test_seed, index within the set)."""
    split = split_of(index, cfg)
    if split == "test_oov":
        rng = random.Random(f"captcha-oov/{cfg.test_seed}/{index - cfg.count - cfg.n_test_seed}")
        word = oov_word(rng, cfg, _vocabulary(tuple(words)))
    else:
        seed, at = (cfg.test_seed, index - cfg.count) if split == "test_seed" else (cfg.seed, index)
        rng = random.Random(f"captcha/{seed}/{at}")  # str seeds hash with SHA-512: stable
        word = words[rng.randrange(len(words))]
    font = rng.randrange(len(cfg.fonts))
    generator = _generators(tuple(cfg.fonts), cfg.width, cfg.height, tuple(cfg.font_sizes))[font]
    with seeded_captcha(rng):
        image = generator.generate_image(word)
    return image, word, cfg.fonts[font]


@cache
def _vocabulary(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(words)


def _write_chunk(chunk: int, cfg: CaptchaConfig, words: Sequence[str], work: Path) -> list:
    """Images of one chunk into ``work/images``; its labels to ``work/chunks/<n>.json`` last,
    so a chunk with its json file is complete."""
    record_path = work / "chunks" / f"{chunk:05d}.json"
    done = read_json_object(record_path)
    if done.get("labels"):
        return done["labels"]
    labels = []
    for index in range(chunk * CHUNK, min((chunk + 1) * CHUNK, total_images(cfg))):
        image, word, font = draw(index, cfg, words)
        target = work / "images" / file_name(index + 1)
        tmp = target.with_suffix(".png.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
        labels.append([index + 1, word, font])
    write_json(record_path, {"labels": labels})
    return labels


def generate_captcha(out_dir: Path, cfg: CaptchaConfig) -> dict[str, int]:
    """Write the dataset to ``out_dir`` (replaced atomically); return counts per split."""
    out_dir = Path(out_dir)
    words = word_list(cfg.n_words, cfg.min_letters, cfg.max_letters)
    font_paths(cfg.fonts)  # fail here, not in a worker
    work = out_dir.with_name(f".{out_dir.name}.partial")
    # One run at a time, and not while a killed run's workers may still write (processes.py).
    with exclusive(work):
        return _generate(out_dir, work, cfg, words)


def _generate(out_dir: Path, work: Path, cfg: CaptchaConfig, words: list[str]) -> dict[str, int]:
    fingerprint = {"format": _FORMAT, "config": dataclasses.asdict(cfg), "words": words}
    if read_json_object(work / "fingerprint.json") != fingerprint and work.exists():
        logger.info("captcha: discarding %s (made with another config)", work)
        shutil.rmtree(work)
    (work / "images").mkdir(parents=True, exist_ok=True)
    (work / "chunks").mkdir(exist_ok=True)
    write_json(work / "fingerprint.json", fingerprint)

    chunks = range((total_images(cfg) + CHUNK - 1) // CHUNK)
    resumed = sum((work / "chunks" / f"{c:05d}.json").is_file() for c in chunks)
    if resumed:
        logger.info("captcha: resuming, %d of %d chunks already done", resumed, len(chunks))
    workers = min(cfg.workers or len(os.sched_getaffinity(0)), len(chunks))
    logger.info(
        "captcha: %d images of %d words in %d fonts at %dx%d, %d workers",
        total_images(cfg),
        len(words),
        len(cfg.fonts),
        cfg.width,
        cfg.height,
        workers,
    )
    labels: dict[int, list] = {}
    with tqdm(total=total_images(cfg), desc="captcha", unit="img") as bar:
        for c, chunk_labels in run_each(_write_chunk, chunks, (cfg, words, work), workers):
            labels[c] = chunk_labels
            bar.update(len(chunk_labels))
    rows = [row for c in chunks for row in labels[c]]
    summary = _write_layout(work, rows, cfg, words)
    shutil.rmtree(work / "chunks")
    (work / "fingerprint.json").unlink()
    replace_path(work, out_dir)
    logger.info("captcha: %s", summary)
    return summary


def _write_layout(work: Path, rows: list, cfg: CaptchaConfig, words: list[str]) -> dict:
    images, annotations = [], []
    splits: dict[str, list[int]] = {s: [] for s in SPLITS if s in ("train", "val", "test")}
    splits.update({s: [] for s in SPLITS if s not in splits and split_count(s, cfg)})
    label_lines = []
    for index, (image_id, word, font) in enumerate(rows):
        images.append(
            {
                "id": image_id,
                "file_name": file_name(image_id),
                "width": cfg.width,
                "height": cfg.height,
                "font": font,
            }
        )
        annotations.append({"id": image_id, "image_id": image_id, "caption": word})
        split = split_of(index, cfg)
        splits[split].append(image_id)
        if split in ("train", "val"):
            label_lines.append(f"{label_id(image_id)}\t{word}\n")
    info = {
        "source": "captcha",
        "description": "CAPTCHA images of English words (captcha 0.7.1), one word per image",
        "generator": __name__,
        "config": dataclasses.asdict(cfg),
        "words": len(words),
    }
    write_json(work / "captions.json", {"info": info, "images": images, "annotations": annotations})
    write_json(work / "splits.json", splits)
    write_text(work / LABELS_FILE, "".join(label_lines))
    write_text(work / WORDS_FILE, "".join(f"{w}\n" for w in words))
    return {
        **{s: len(ids) for s, ids in splits.items()},
        "images": len(images),
        "words": len(words),
        "words_used": len({row[1] for row in rows}),
    }
