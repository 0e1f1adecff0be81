"""The model card: one markdown page per registered version (data, training, metrics, limits).

It becomes the version's description in the MLflow registry (the UI renders markdown) and the
run artifact ``model_card.md``, so a reviewer reads it next to the aliases they are moving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# MLflow keeps version descriptions up to 5,000 characters: the card leaves room for the
# registry log that follows it (registry/review.py).
MAX_CARD_CHARS = 3500
_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "seq_per_image", "grad_clip")


@dataclass(frozen=True)
class CardInputs:
    model_name: str
    decoder: str
    encoder: str
    config: Mapping[str, Any]  # the model directory's config.json
    test_metrics: Mapping[str, float]  # "<decoding>.<metric>" -> value
    val_metrics: Mapping[str, float]
    lineage: Mapping[str, str]  # git.*, dvc.<stage>.outs, prefect.flow_run_id
    data_source: str
    n_test_images: int | None
    test_set: str | None
    gate_score: str  # "<decoding>.<metric>"
    figures: list[str] = field(default_factory=list)


def render_model_card(card: CardInputs) -> str:
    lines = [
        f"# {card.model_name}: {card.decoder} decoder on {card.encoder} features",
        "",
        "## Data",
        f"- source: `{card.data_source}`",
        f"- test images: {card.n_test_images if card.n_test_images is not None else 'unknown'}"
        + (f" (references digest `{card.test_set}`)" if card.test_set else ""),
    ]
    lines += [f"- `{k}`: `{v}`" for k, v in sorted(card.lineage.items()) if k.startswith("dvc.")]
    lines += ["", "## Training"]
    train = card.config.get("train", {}) if isinstance(card.config.get("train"), dict) else {}
    lines += [f"- {k}: {train[k]}" for k in _TRAIN_KEYS if k in train]
    model = train.get("model")
    if isinstance(model, dict):
        lines.append("- decoder: " + ", ".join(f"{k} {v}" for k, v in sorted(model.items())))
    encoder = card.config.get("encoder")
    if isinstance(encoder, dict):
        shown = {
            k: encoder[k] for k in ("grid", "channels", "input_size", "pretrained") if k in encoder
        }
        lines.append(
            f"- encoder: {card.encoder} " + ", ".join(f"{k} {v}" for k, v in shown.items())
        )
    for key in ("seed", "vocab_size"):
        if key in card.config:
            lines.append(f"- {key}: {card.config[key]}")
    lines.append(
        f"- git commit: `{card.lineage.get('git.commit', 'unknown')}`"
        f" (dirty: {card.lineage.get('git.dirty', 'unknown')})"
    )
    if "prefect.flow_run_id" in card.lineage:
        lines.append(f"- Prefect flow run: `{card.lineage['prefect.flow_run_id']}`")
    lines += ["", "## Metrics", "", "| split | metric | value |", "|---|---|---|"]
    lines += [f"| test | {k} | {v:.4f} |" for k, v in sorted(card.test_metrics.items())]
    lines += [f"| val | {k} | {v:.4f} |" for k, v in sorted(card.val_metrics.items())]
    lines += [
        "",
        f"The promotion gate compares `{card.gate_score}` per test image against the champion "
        "(paired bootstrap; its numbers are in the tags `gate.*`).",
    ]
    if card.figures:
        lines += ["", "## Figures", ""]
        lines += [f"- `{name}` (run artifacts)" for name in card.figures]
    lines += ["", "## Limitations", *(f"- {text}" for text in limitations(card))]
    text = "\n".join(lines) + "\n"
    return (
        text if len(text) <= MAX_CARD_CHARS else text[: MAX_CARD_CHARS - 20] + "\n\n(truncated)\n"
    )


def limitations(card: CardInputs) -> list[str]:
    """What the numbers do not say, from what is known about the data and the model."""
    out = [
        f"Measured on the `{card.data_source}` test split only; other image distributions "
        "will score differently.",
        "Corpus metrics of n-gram overlap (BLEU, CIDEr-D) reward wording like the references, "
        "not truth: read the sample captions and attention figures too.",
    ]
    if card.data_source == "shapes":
        out.append(
            "Trained on generated scenes of 1-3 coloured shapes: not a captioner for photographs."
        )
    by_count = {k: v for k, v in card.test_metrics.items() if "object_accuracy_" in k}
    if by_count:
        worst = min(by_count, key=by_count.__getitem__)
        out.append(f"Weakest on `{worst}` ({by_count[worst]:.3f}).")
    if card.n_test_images is not None and card.n_test_images < 1000:
        out.append(
            f"{card.n_test_images} test images: small differences between versions are within "
            "the noise; trust the gate's interval, not one corpus number."
        )
    return out
