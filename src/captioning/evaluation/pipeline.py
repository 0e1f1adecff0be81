"""evaluate: decode each split the task scores greedily and with beam search, score it, and write
what the last one shows. The model's vocabulary chooses the task (``choose_task``).

Every task writes to the report directory: metrics.json ({split: {greedy|beam: corpus scores}}),
per_image.json (per image: its references and, per decoding, the text and every score: for error
analysis and the promotion gate) and attention/ (per-token heat-maps, when the decoder attends).
A captioner (``captions``) adds results.json (beam captions in the COCO results format), the
beam's n-best to per_image.json and gallery.html; the CAPTCHA reader (``reader``) reads val,
the generalisation sets the shards hold (test_seed, test_oov) and test, and adds predictions.txt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from captioning.config import (
    DECODING_NAMES,
    PER_IMAGE_SCORE_NAMES,
    EvaluateConfig,
    check_registry,
)
from captioning.data.layout import EXTRA_SPLITS
from captioning.data.shards import read_manifest
from captioning.data.vocab import Vocab
from captioning.devices import autocast, choose_device, resolve_precision
from captioning.evaluation.captions import CaptionTask, WordTask
from captioning.evaluation.reader import ReaderTask
from captioning.evaluation.reading import (
    DECODINGS,
    Rows,
    Scored,
    SplitReading,
    attention_figures,
    read_images,
    read_split,
    split_features,
)
from captioning.features.encoders import grid_shape
from captioning.io import write_json
from captioning.metrics import coco_eval, word_accuracy
from captioning.metrics.shapes_relations import RELATION_SCORE_NAMES
from captioning.models.saved import load_decoder
from captioning.viz.gallery import GalleryEntry, write_gallery

logger = logging.getLogger(__name__)

# Every per-image score evaluate can write: register.promote_metric is one of them.
PER_IMAGE_SCORES = (
    *coco_eval.SCORE_NAMES,
    "object_accuracy",
    *word_accuracy.SCORE_NAMES,
)
check_registry("decoding", DECODINGS, DECODING_NAMES, "DECODING_NAMES")
check_registry("per-image score", PER_IMAGE_SCORES, PER_IMAGE_SCORE_NAMES, "PER_IMAGE_SCORE_NAMES")
GALLERY_FILE, ATTENTION_DIR = "gallery.html", "attention"
# The beam scores the gallery shows beside each image.
GALLERY_SCORES = ("CIDEr", "SPICE", "object_accuracy", "exact_match", "char_accuracy")


class Task(Protocol):
    """What differs between a captioner's evaluation and a reader's."""

    splits: tuple[str, ...]  # decoded and scored in turn; the report files show the last
    gallery: bool  # whether gallery.html is written

    def check(self) -> None: ...  # fail before decoding if scoring cannot run (no Java)
    def score(self, reading: SplitReading) -> Scored: ...
    def per_image(self, reading: SplitReading, scored: Scored) -> Rows: ...  # rows by image id
    def write(self, out_dir: Path, reading: SplitReading, rows: Rows) -> None: ...  # own files


def choose_task(vocab: Vocab, cfg: EvaluateConfig, split: str = "test") -> Task:
    """A character vocabulary spells words: the reader's task, whatever ``evaluate.task`` says.
    A word vocabulary writes captions, scored by the COCO metrics or (task: word) as words."""
    if vocab.level == "char":
        return ReaderTask()
    if cfg.task == "word":
        return WordTask(cfg, split)
    return CaptionTask(cfg, split)


def evaluate_model(
    model_dir: str | Path,
    features_dir: str | Path | None,
    shards_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    *,
    split: str = "test",
    precision: str = "auto",
    device: str = "auto",
) -> dict[str, Any]:
    """Decode, score and write the report files (see the module docstring); returns the metrics.

    ``split`` is the captioner's; the reader always reads val and test. Decoding (and a
    fine-tuned encoder) computes in ``precision`` (``common.precision``), whatever the model
    was trained in, on ``device`` (``common.device``).
    """
    out_dir = Path(out_dir)
    device = choose_device(device)
    precision = resolve_precision(precision, device)
    decoder, vocab, config = load_decoder(model_dir, device)
    task = choose_task(vocab, cfg, split)
    task.check()
    metrics: dict[str, Any] = {}
    held = read_manifest(shards_dir)["splits"]
    for name in task.splits:
        if name in EXTRA_SPLITS and name not in held:
            continue  # shards made before the generalisation sets, or with none of them
        cache = split_features(model_dir, config, features_dir, shards_dir, name, device, precision)
        with autocast(device, precision):
            reading = read_split(decoder, vocab, cache, cfg, name)
        scored = task.score(reading)
        metrics[name] = {decoding: scored[decoding][0] for decoding in DECODINGS}
        for decoding in DECODINGS:
            logger.info("%s %s: %s", name, decoding, _summary(metrics[name][decoding]))

    rows = task.per_image(reading, scored)
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "per_image.json", [{"image_id": i, **rows[i]} for i in reading.image_ids])
    task.write(out_dir, reading, rows)
    n_gallery = cfg.n_gallery if task.gallery else 0
    wanted = reading.image_ids[: max(n_gallery, cfg.n_attention_figures)]
    images = read_images(shards_dir, reading.split, set(wanted))
    if task.gallery:
        _gallery(out_dir / GALLERY_FILE, reading, images, rows, model_dir, n_gallery)
    attention_figures(
        out_dir / ATTENTION_DIR,
        {i: images[i] for i in reading.image_ids[: cfg.n_attention_figures] if i in images},
        {i: hyps[0] for i, hyps, _ in reading.n_best("beam")},
        vocab,
        grid=grid_shape(config["encoder"]),
        decoder_name=config["decoder"],
        references=reading.references,
    )
    return metrics


def _summary(corpus: dict[str, float]) -> str:
    keys = (
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
        "SPICE",
        "object_accuracy",
        *RELATION_SCORE_NAMES,
    )
    return ", ".join(
        f"{k} {corpus[k]:.3f}" for k in (*keys, *word_accuracy.SCORE_NAMES) if k in corpus
    )


def _gallery(path: Path, reading: SplitReading, images, rows, model_dir, count: int) -> None:
    entries = [
        GalleryEntry(
            image_id=i,
            image=images[i],
            generated={name: rows[i][name]["caption"] for name in DECODINGS},
            references=rows[i]["references"],
            scores={f"beam {k}": v for k, v in rows[i]["beam"].items() if k in GALLERY_SCORES},
        )
        for i in reading.image_ids[:count]
        if i in images
    ]
    write_gallery(entries, path, title=f"{Path(model_dir).name}: {reading.split} images")
