"""The evaluate stage's library: one per-split pipeline (``pipeline``) over the task the model's
vocabulary chooses: captions (``captions``) or the CAPTCHA reader's words (``reader``)."""

from captioning.evaluation.pipeline import (
    PER_IMAGE_SCORES,
    choose_task,
    evaluate_model,
)
from captioning.evaluation.reading import DECODINGS, attention_figures

__all__ = ["DECODINGS", "PER_IMAGE_SCORES", "attention_figures", "choose_task", "evaluate_model"]
