"""Step-indexed schedules: scheduled sampling (Bengio et al. 2015) and warmup + cosine LR."""

from __future__ import annotations

import math
from collections.abc import Callable

from captioning.config import ScheduledSamplingConfig


def truth_probability(cfg: ScheduledSamplingConfig, step: int) -> float:
    """epsilon_i, the probability of feeding the true word at training step ``step`` (i)."""
    if cfg.schedule == "none":
        return 1.0
    if cfg.schedule == "linear":
        epsilon = cfg.k - cfg.c * step
    elif cfg.schedule == "exponential":
        epsilon = cfg.k**step
    elif cfg.schedule == "inverse_sigmoid":
        # exp overflows past ~709: the probability is 0 to double precision long before that.
        exponent = step / cfg.k
        epsilon = cfg.k / (cfg.k + math.exp(exponent)) if exponent < 700 else 0.0
    else:
        raise ValueError(f"unknown scheduled sampling schedule {cfg.schedule!r}")
    return min(1.0, max(cfg.min_truth_prob, epsilon))


def sampling_probability(cfg: ScheduledSamplingConfig, step: int) -> float:
    """The probability of feeding the decoder's own sample instead: 1 - epsilon_i."""
    return 1.0 - truth_probability(cfg, step)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
