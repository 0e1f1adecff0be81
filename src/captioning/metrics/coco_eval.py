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
from captioning.metrics.spice import spice_scores

logger = logging.getLogger(__name__)


class JavaMissingError(CaptioningError, RuntimeError):
    """pycocoevalcap's tokenizer and METEOR run on Java."""


def require_java() -> None:
    if shutil.which("java") is None:
        raise JavaMissingError(
            "pycocoevalcap needs Java for its PTB tokenizer and METEOR, and no `java` is on PATH: "
            "install a JRE (Debian: apt-get install default-jre-headless) and re-run"
        )


def coco_scores(
    predictions: Mapping[int, str],
    references: Mapping[int, Sequence[str]],
    *,
    meteor: bool = True,
    spice: bool = False,
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Corpus scores and per-image scores, keyed by image id.

    Both mappings must have the same image ids; captions are tokenised with the PTB tokenizer
    as in the COCO evaluation server. ``spice`` adds SPICE when its CoreNLP jars are installed
    (``metrics.spice``); otherwise one log line says why it is missing.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = set(references) ^ set(predictions)
    if missing:
        raise ValueError(f"predictions and references differ on image ids {sorted(missing)[:5]}")
    require_java()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    ids = list(gts)
    scorers: list[tuple[Any, list[str]]] = [
        (Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]),
        (Rouge(), ["ROUGE-L"]),
        (Cider(), ["CIDEr"]),
    ]
    if meteor:
        scorers.insert(1, (Meteor(), ["METEOR"]))
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
        if hasattr(scorer, "close"):
            scorer.close()
    if spice and (found := spice_scores(gts, res)) is not None:
        corpus["SPICE"] = found[0]
        for image_id in ids:
            per_image[image_id]["SPICE"] = found[1][image_id]
    return corpus, per_image
