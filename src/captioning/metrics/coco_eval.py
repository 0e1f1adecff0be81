"""BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (+ SPICE when its jars exist) through pycocoevalcap.

pycocoevalcap is the COCO caption evaluation code; its ``Cider`` scorer is CIDEr-D (clipped,
length-penalised), reported as "CIDEr" as the COCO server does.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from captioning.errors import CaptioningError
from captioning.metrics.spice import spice_available, spice_scores

logger = logging.getLogger(__name__)


class JavaMissingError(CaptioningError, RuntimeError):
    """pycocoevalcap's tokenizer and METEOR run on Java."""


def require_java() -> None:
    if shutil.which("java") is None:
        raise JavaMissingError(
            "pycocoevalcap needs Java for its PTB tokenizer and METEOR, and no `java` is on PATH: "
            "install a JRE (Debian: apt-get install default-jre-headless) and re-run"
        )


Scores = tuple[dict[str, float], dict[int, dict[str, float]]]
BLEU_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
# Every score coco_scores can give, per image and for the corpus (METEOR unless meteor=False,
# SPICE only with its jars).
SCORE_NAMES = (*BLEU_NAMES, "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def coco_scores(
    predictions: Mapping[int, str],
    references: Mapping[int, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
) -> Scores:
    """Corpus scores and per-image scores, keyed by image id.

    Both mappings must have the same image ids; captions are tokenised with the PTB tokenizer
    as in the COCO evaluation server. ``spice`` adds SPICE when its CoreNLP jars are installed
    (``metrics.spice``); otherwise one log line says why it is missing.
    """
    return coco_scores_many({"": predictions}, references, meteor=meteor, spice=spice)[""]


def coco_scores_many(
    predictions: Mapping[str, Mapping[int, str]],
    references: Mapping[int, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
) -> dict[str, Scores]:
    """``coco_scores`` for several decodings of the same images (name -> predictions).

    The references are tokenised once, all predictions in one tokenizer run, and one METEOR
    JVM scores every decoding: each Java start costs seconds.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    for name, captions in predictions.items():
        missing = set(references) ^ set(captions)
        if missing:
            raise ValueError(
                f"predictions {name!r} and references differ on image ids {sorted(missing)[:5]}"
            )
    require_java()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    ids = list(gts)
    every = tokenizer.tokenize(
        {
            (name, i): [{"caption": captions[i]}]
            for name, captions in predictions.items()
            for i in ids
        }
    )
    scorers: list[tuple[Any, list[str]]] = [
        (Bleu(4), list(BLEU_NAMES)),
        (Rouge(), ["ROUGE-L"]),
        (Cider(), ["CIDEr"]),
    ]
    if meteor:
        scorers.insert(1, (Meteor(), ["METEOR"]))
    spice = spice and spice_available()  # logs why not, once
    out: dict[str, Scores] = {}
    for name in predictions:
        # The tokenizer drops a trailing empty caption's line: an empty caption stays empty.
        res = {i: every.get((name, i), [""]) for i in ids}
        out[name] = _score(scorers, gts, res, ids, spice)
    return out


def _score(scorers, gts, res, ids, spice: bool) -> Scores:
    from pycocoevalcap.bleu.bleu import Bleu

    corpus: dict[str, float] = {}
    per_image: dict[int, dict[str, float]] = {i: {} for i in ids}
    for scorer, names in scorers:
        if isinstance(scorer, Bleu):
            score, scores = scorer.compute_score(gts, res, verbose=0)
        else:
            score, scores = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, value, values in zip(names, score, scores, strict=True):
            corpus[name] = float(value)
            for image_id, v in zip(ids, values, strict=True):
                per_image[image_id][name] = float(v)
    if spice and (found := spice_scores(gts, res)) is not None:
        corpus["SPICE"] = found[0]
        for image_id in ids:
            per_image[image_id]["SPICE"] = found[1][image_id]
    return corpus, per_image
