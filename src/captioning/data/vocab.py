"""Word (or character) vocabulary with a frequency threshold and a maximum caption length.

At level ``char`` the tokens of a caption are its characters (spaces dropped) and decoding
joins them without spaces: the CAPTCHA reader spells its word one letter per step.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from captioning.config import VocabConfig
from captioning.errors import BadInputError
from captioning.io import write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def tokenize(caption: str, level: str = "word") -> list[str]:
    """Lower-case, drop punctuation, split on whitespace (level char: into characters)."""
    words = _NON_WORD.sub(" ", caption.lower()).split()
    return [c for w in words for c in w] if level == "char" else words


@dataclass(frozen=True)
class Vocab:
    itos: tuple[str, ...]
    max_length: int
    level: str = "word"  # or "char"

    @property
    def stoi(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.itos)}

    # Every vocabulary starts with SPECIALS, so their ids are fixed.
    pad_id: ClassVar[int] = SPECIALS.index(PAD)
    start_id: ClassVar[int] = SPECIALS.index(START)
    end_id: ClassVar[int] = SPECIALS.index(END)
    unk_id: ClassVar[int] = SPECIALS.index(UNK)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        """<start> w1 .. wn <end>, truncated to max_length tokens."""
        stoi = self.stoi
        words = tokenize(caption, self.level)[: self.max_length]
        return [self.start_id, *(stoi.get(w, self.unk_id) for w in words), self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids as text, the one way every caller turns tokens into text: up to the first
        <end>, skipping <start>/<pad>; words separated by spaces, characters run together."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i])
        return ("" if self.level == "char" else " ").join(words)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"itos": list(self.itos), "max_length": self.max_length}
        if self.level != "word":  # word vocabularies keep their earlier, level-less file
            data["level"] = self.level
        return data

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        itos = data.get("itos")
        if not isinstance(itos, list) or tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise BadInputError(f"{path}: expected 'itos' starting with {list(SPECIALS)}")
        level = data.get("level", "word")
        if level not in ("word", "char"):
            raise BadInputError(f"{path}: 'level' must be 'word' or 'char', found {level!r}")
        return cls(itos=tuple(itos), max_length=int(data["max_length"]), level=level)


def build_vocab(captions: Iterable[str], cfg: VocabConfig) -> tuple[Vocab, dict[str, Any]]:
    """Keep tokens seen at least ``cfg.min_freq`` times; return the vocab and a summary."""
    counts: Counter[str] = Counter()
    lengths: list[int] = []
    for caption in captions:
        words = tokenize(caption, cfg.level)
        counts.update(words)
        lengths.append(len(words))
    kept = sorted(
        (w for w, c in counts.items() if c >= cfg.min_freq), key=lambda w: (-counts[w], w)
    )
    vocab = Vocab(itos=(*SPECIALS, *kept), max_length=cfg.max_length, level=cfg.level)
    summary = {
        "size": len(vocab),
        "words_seen": len(counts),
        "words_dropped": len(counts) - len(kept),
        "captions": len(lengths),
        "captions_truncated": sum(1 for n in lengths if n > cfg.max_length),
        "max_caption_words": max(lengths, default=0),
    }
    return vocab, summary
