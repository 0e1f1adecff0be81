"""Per-word attention heat-maps over the image, as in the TensorFlow tutorial's plot_attention.

One panel per generated word, laid out in a grid: the image with that step's attention weights
upsampled smoothly (bicubic on the float weights) to the image size and drawn over it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or GPU servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from captioning.io import atomic_path  # noqa: E402


def upsample_attention(weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(grid, grid) weights -> (height, width) map in [0, 1], smoothly interpolated."""
    peak = max(float(weights.max()), 1e-8)
    heat = Image.fromarray((weights / peak).astype(np.float32), mode="F")
    smooth = np.asarray(heat.resize(size, Image.Resampling.BICUBIC))
    return np.clip(smooth, 0.0, 1.0)  # bicubic overshoots a little at sharp peaks


def plot_attention(
    image: Image.Image,
    words: Sequence[str],
    attention: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    columns: int = 5,
) -> None:
    """Save a PNG grid: for each word, the image with its (grid, grid) attention over it.

    ``attention`` is (len(words), grid, grid); an empty caption gives the image alone.
    """
    if len(attention) != len(words):
        raise ValueError(f"{len(words)} words but attention for {len(attention)} steps")
    n = max(len(words), 1)
    cols = min(n, columns)
    rows = math.ceil(n / cols)
    figure = plt.figure(figsize=(3 * cols, 3 * rows + (0.5 if title else 0)))
    size = image.size
    extent = (0, size[0], size[1], 0)
    for i, word in enumerate(words):
        axis = figure.add_subplot(rows, cols, i + 1)
        axis.imshow(image, extent=extent)
        heat = upsample_attention(np.asarray(attention[i], dtype=np.float32), size)
        axis.imshow(heat, cmap="gray", alpha=0.6, extent=extent, vmin=0.0, vmax=1.0)
        axis.set_title(word, fontsize=12)
        axis.axis("off")
    if not words:
        axis = figure.add_subplot(1, 1, 1)
        axis.imshow(image, extent=extent)
        axis.set_title("(empty caption)")
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
