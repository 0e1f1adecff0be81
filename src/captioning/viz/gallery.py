"""An HTML page of test images with their generated and reference captions, for reading results.

One self-contained file: thumbnails are embedded as base64 JPEG, so the page can be opened or
attached anywhere (a DVC output, an MLflow artifact) without the image folder.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from captioning.io import write_text

THUMBNAIL_SIDE = 224


@dataclass
class GalleryEntry:
    image_id: int
    image: Image.Image
    generated: Mapping[str, str]  # decoding name (greedy, beam) -> caption
    references: Sequence[str]
    scores: Mapping[str, float] = field(default_factory=dict)  # e.g. beam CIDEr, for sorting by eye


def thumbnail_data_uri(image: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
.card { display: flex; gap: 1em; margin-bottom: 1.2em; border-bottom: 1px solid #ddd;
        padding-bottom: 1em; }
.card img { width: 224px; height: auto; flex: none; }
.gen { font-weight: bold; } .name { color: #666; display: inline-block; width: 4.5em; }
.refs { color: #444; margin: 0.3em 0 0 0; } .scores { color: #888; font-size: 0.9em; }
"""


def render_gallery(entries: Sequence[GalleryEntry], *, title: str) -> str:
    cards = []
    for entry in entries:
        generated = "".join(
            f'<div class="gen"><span class="name">{html.escape(name)}</span>'
            f"{html.escape(caption) or '<i>(empty)</i>'}</div>"
            for name, caption in entry.generated.items()
        )
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in entry.references)
        scores = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in entry.scores.items())
        cards.append(
            f'<div class="card" id="image-{entry.image_id}">'
            f'<img src="{thumbnail_data_uri(entry.image)}" alt="image {entry.image_id}">'
            f"<div><div>image {entry.image_id}</div>{generated}"
            f'<ul class="refs">{refs}</ul><div class="scores">{scores}</div></div></div>'
        )
    body = "\n".join(cards) or "<p>No images.</p>"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n"
        "</body></html>\n"
    )


def write_gallery(entries: Sequence[GalleryEntry], path: str | Path, *, title: str) -> None:
    write_text(path, render_gallery(entries, title=title))
