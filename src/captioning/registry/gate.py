"""The promotion gate's statistics: a paired bootstrap over test images (pure numpy).

Both models were scored on the same images, so the unit of resampling is the image: every
resample draws ``n`` images with replacement and takes the mean of the per-image differences
(challenger - champion). The gate passes only if the lower end of the percentile confidence
interval of that mean is above ``min_gain``: a tie or a worse model never passes, and neither
does a better mean that the images do not support.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Resamples are drawn in blocks so that (block, n) indices stay small for 5,000-image test sets.
_MAX_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class BootstrapResult:
    n_images: int
    challenger_mean: float
    champion_mean: float
    mean_diff: float  # challenger - champion, over the real images
    ci_low: float
    ci_high: float
    confidence: float
    # Share of resamples whose mean difference is <= min_gain, (k + 1) / (B + 1): how often the
    # images are consistent with "no real gain"; a one-sided bootstrap p-value.
    p_value: float
    # Share of images on which the challenger scores strictly higher (ties count against it).
    win_fraction: float
    n_better: int
    n_tied: int
    n_worse: int
    resamples: int
    seed: int
    min_gain: float

    @property
    def passed(self) -> bool:
        return self.ci_low > self.min_gain

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        """One line with every number the decision rests on."""
        verdict = "passes" if self.passed else "refused"
        relation = ">" if self.passed else "<="
        return (
            f"{verdict}: mean diff {self.mean_diff:+.4f} "
            f"({self.challenger_mean:.4f} vs {self.champion_mean:.4f}), "
            f"{self.confidence:.0%} CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}] "
            f"(lower bound {relation} min gain {self.min_gain:g}), p {self.p_value:.4f}, "
            f"win fraction {self.win_fraction:.3f} "
            f"({self.n_better} better / {self.n_tied} tied / {self.n_worse} worse), "
            f"n {self.n_images} images, {self.resamples} resamples, seed {self.seed}"
        )


def paired_bootstrap(
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    resamples: int,
    confidence: float,
    seed: int,
    min_gain: float = 0.0,
) -> BootstrapResult:
    """Paired bootstrap of mean(challenger - champion) over images (same order in both arrays)."""
    a = np.asarray(challenger, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"expected two 1-D score arrays of one length, got {a.shape} and {b.shape}"
        )
    if a.size == 0:
        raise ValueError("no images to compare")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-image scores must be finite (found NaN or inf)")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    diff = a - b
    n = diff.size
    rng = np.random.default_rng(seed)
    block = max(1, _MAX_BLOCK_ELEMENTS // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # (block, n) image indices
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    not_better = int(np.count_nonzero(means <= min_gain))
    return BootstrapResult(
        n_images=n,
        challenger_mean=float(a.mean()),
        champion_mean=float(b.mean()),
        mean_diff=float(diff.mean()),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        confidence=float(confidence),
        p_value=(not_better + 1) / (resamples + 1),
        win_fraction=float(np.count_nonzero(diff > 0) / n),
        n_better=int(np.count_nonzero(diff > 0)),
        n_tied=int(np.count_nonzero(diff == 0)),
        n_worse=int(np.count_nonzero(diff < 0)),
        resamples=int(resamples),
        seed=int(seed),
        min_gain=float(min_gain),
    )
