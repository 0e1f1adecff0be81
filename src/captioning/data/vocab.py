"""Word vocabulary with a frequency threshold and a maximum caption length."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.config import VocabConfig
from captioning.io import write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def tokenize(caption: str) -> list[str]:
    """Lower-case, drop punctuation, split on whitespace."""
    return _NON_WORD.sub(" ", caption.lower()).split()


@dataclass(frozen=True)
class Vocab:
    itos: tuple[str, ...]
    max_length: int

    @property
    def stoi(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.itos)}

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        """<start> w1 .. wn <end>, truncated to max_length words."""
        stoi = self.stoi
        words = tokenize(caption)[: self.max_length]
        return [self.start_id, *(stoi.get(w, self.unk_id) for w in words), self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <end>, skipping <start>/<pad>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def to_json(self) -> dict[str, Any]:
        return {"itos": list(self.itos), "max_length": self.max_length}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        itos = data.get("itos")
        if not isinstance(itos, list) or tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"{path}: expected 'itos' starting with {list(SPECIALS)}")
        return cls(itos=tuple(itos), max_length=int(data["max_length"]))


def build_vocab(captions: Iterable[str], cfg: VocabConfig) -> tuple[Vocab, dict[str, Any]]:
    """Keep words seen at least ``cfg.min_freq`` times; return the vocab and a summary."""
    counts: Counter[str] = Counter()
    lengths: list[int] = []
    for caption in captions:
        words = tokenize(caption)
        counts.update(words)
        lengths.append(len(words))
    kept = sorted(
        (w for w, c in counts.items() if c >= cfg.min_freq), key=lambda w: (-counts[w], w)
    )
    vocab = Vocab(itos=(*SPECIALS, *kept), max_length=cfg.max_length)
    summary = {
        "size": len(vocab),
        "words_seen": len(counts),
        "words_dropped": len(counts) - len(kept),
        "captions": len(lengths),
        "captions_truncated": sum(1 for n in lengths if n > cfg.max_length),
        "max_caption_words": max(lengths, default=0),
    }
    return vocab, summary
