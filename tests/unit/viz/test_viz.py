"""Attention heat-maps (a smooth per-word grid) and the HTML gallery."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from captioning.viz.attention import plot_attention, upsample_attention
from captioning.viz.gallery import GalleryEntry, render_gallery, write_gallery


def test_upsampled_attention_is_smooth_peaked_where_attended_and_in_range():
    weights = np.zeros((7, 7), dtype=np.float32)
    weights[1, 5] = 0.9  # top right
    weights[1, 4] = 0.1
    heat = upsample_attention(weights, (140, 70))  # PIL size: (width, height)
    assert heat.shape == (70, 140)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert row * 7 // 70 == 1 and col * 7 // 140 == 5
    # Smooth, not blocky: many distinct levels, and neighbouring pixels change by little.
    assert len(np.unique(np.round(heat, 3))) > 100
    assert np.abs(np.diff(heat, axis=1)).max() < 0.2


def test_plot_attention_draws_one_panel_per_word_in_a_grid(tmp_path):
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    words = ["a", "small", "red", "circle", "on", "the", "left"]
    attention = np.random.default_rng(0).dirichlet(np.ones(49), size=len(words))
    path = tmp_path / "figure.png"
    plot_attention(image, words, attention.reshape(len(words), 7, 7), path, columns=5)
    with Image.open(path) as figure:
        # 5 columns x 2 rows of 3-inch panels at 80 dpi.
        assert figure.size == (5 * 3 * 80, 2 * 3 * 80)
    plot_attention(image, words[:2], attention[:2].reshape(2, 7, 7), path, columns=5)
    with Image.open(path) as figure:
        assert figure.size == (2 * 3 * 80, 3 * 80)


def test_plot_attention_refuses_mismatched_steps_and_draws_an_empty_caption(tmp_path):
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="2 words but attention for 3 steps"):
        plot_attention(image, ["a", "b"], np.ones((3, 7, 7)), tmp_path / "x.png")
    plot_attention(image, [], np.ones((0, 7, 7)), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_gallery_embeds_thumbnails_and_escapes_text(tmp_path):
    big = Image.new("RGB", (640, 480), (0, 128, 255))
    entries = [
        GalleryEntry(
            image_id=5,
            image=big,
            generated={"greedy": "a <b>blue</b> square", "beam": ""},
            references=["a blue square & a star"],
            scores={"beam CIDEr": 1.23456},
        )
    ]
    page = render_gallery(entries, title="run <1>")
    assert "<title>run &lt;1&gt;</title>" in page
    assert "a &lt;b&gt;blue&lt;/b&gt; square" in page and "<b>blue</b>" not in page
    assert "a blue square &amp; a star" in page and "beam CIDEr 1.235" in page
    assert "<i>(empty)</i>" in page
    encoded = page.split('src="data:image/jpeg;base64,')[1].split('"')[0]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumb:
        assert thumb.size == (224, 168)  # at most 224 px, aspect kept
        assert thumb.getpixel((10, 10))[2] > 200
    write_gallery(entries, tmp_path / "gallery.html", title="t")
    assert (tmp_path / "gallery.html").read_text() == render_gallery(entries, title="t")
