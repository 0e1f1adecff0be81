"""The CAPTCHA reader's task: a character-level model read on val and test, the answers written.

The reader spells each image's word one character per step. It is scored as the assignment
says: a word counts only if it matches exactly (``exact_match``), with the character accuracy
beside it; on the validation split (labels given), the generalisation sets (``test_seed``: words
of the list drawn with another seed; ``test_oov``: strings not in the list) and the test split. ``predictions.txt``
holds the test answers in the label file's format (``<image id>\\t<word>``), from beam search.
"""

from __future__ import annotations

from pathlib import Path

from captioning.evaluation.reading import DECODINGS, Rows, Scored, SplitReading
from captioning.io import write_text
from captioning.metrics.word_accuracy import word_scores

ANSWERS_FILE = "predictions.txt"


class ReaderTask:
    # test last: per_image.json, predictions.txt and the gate read the test split.
    splits = ("val", "test_seed", "test_oov", "test")
    gallery = False

    def check(self) -> None:
        pass  # word scores need no Java

    def score(self, reading: SplitReading) -> Scored:
        """Exact match and character accuracy against each image's word, and the image count."""
        words = _words(reading)
        scored = {name: word_scores(reading.predictions(name), words) for name in DECODINGS}
        for corpus, _ in scored.values():
            corpus["count"] = float(len(words))
        return scored

    def per_image(self, reading: SplitReading, scored: Scored) -> Rows:
        """The captioner's layout, so that the promotion gate reads [decoding][exact_match]."""
        words = _words(reading)
        rows: Rows = {}
        for image_id, name in zip(reading.image_ids, _names(reading), strict=True):
            rows[image_id] = {"file_name": name, "references": words[image_id]}
        for name in DECODINGS:
            for image_id, text in reading.predictions(name).items():
                rows[image_id][name] = {"caption": text, **scored[name][1][image_id]}
        return rows

    def write(self, out_dir: Path, reading: SplitReading, rows: Rows) -> None:
        """predictions.txt: ``<image file stem>\\t<beam reading>`` per line."""
        answers = reading.predictions("beam")
        lines = (
            f"{n}\t{answers[i]}\n" for i, n in zip(reading.image_ids, _names(reading), strict=True)
        )
        write_text(out_dir / ANSWERS_FILE, "".join(lines))


def _words(reading: SplitReading) -> dict[int, list[str]]:
    """Each image's word: its one label (the first caption)."""
    return {i: refs[:1] for i, refs in reading.references.items()}


def _names(reading: SplitReading) -> list[str]:
    return [Path(f).stem for f in reading.file_names]
