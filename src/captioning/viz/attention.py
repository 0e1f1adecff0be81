"""Per-word attention heat-maps over the image, as in the TensorFlow tutorial's plot_attention."""

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


def plot_attention(
    image: Image.Image,
    words: Sequence[str],
    attention: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    columns: int = 5,
) -> None:
    """One panel per generated word: the image with that step's attention upsampled over it."""
    n = max(len(words), 1)
    rows = math.ceil(n / columns)
    figure = plt.figure(figsize=(3 * min(n, columns), 3 * rows + (0.4 if title else 0)))
    size = image.size
    for i, word in enumerate(words):
        axis = figure.add_subplot(rows, min(n, columns), i + 1)
        heat = Image.fromarray(
            (attention[i] / max(attention[i].max(), 1e-8) * 255).astype(np.uint8)
        )
        heat = heat.resize(size, Image.Resampling.BILINEAR)
        axis.imshow(image)
        axis.imshow(np.asarray(heat), cmap="gray", alpha=0.6, extent=(0, size[0], size[1], 0))
        axis.set_title(word, fontsize=12)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
