"""The decoders side by side: size, training time, best epoch and test scores, greedy and beam.

Reads what the DAG leaves for each decoder in ``<reports>/<decoder>/``: ``train_summary.json``
(train@<decoder>), ``train_log.csv`` (its loss curve) and ``metrics.json`` (evaluate@<decoder>).
Writes a markdown table, a JSON of the same numbers (DVC metrics), one CSV row per decoder (DVC
bar plots) and every decoder's loss curve in one CSV (one plot, a line per decoder). A decoder
that does not attend, or a dataset without object annotations, simply has fewer numbers: the
table shows a dash.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning.errors import BadInputError, CaptioningError
from captioning.io import atomic_path, write_json

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "object_accuracy")
# The shapes scenes' own scores, a table of their own (shown when a decoder has them): object
# accuracy by object count, and whether the captions say where things are, truly.
SCENE_METRICS = (
    "object_accuracy_1obj",
    "object_accuracy_2obj",
    "object_accuracy_3obj",
    "relation_precision",
    "relation_coverage",
)
DECODINGS = ("greedy", "beam")
LOSS_FIELDS = ("epoch", "train_loss", "val_loss")


class MissingReportError(CaptioningError, FileNotFoundError):
    """A decoder of train.decoders has not been trained or evaluated yet."""


@dataclass(frozen=True)
class DecoderReport:
    decoder: str
    parameters: int
    train_seconds: float
    best_epoch: int
    epochs_run: int
    scores: dict[str, dict[str, float]]  # decoding -> metric -> value (as evaluate wrote it)
    losses: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss


def read_report(reports_dir: Path, decoder: str) -> DecoderReport:
    folder = reports_dir / decoder
    summary = _read_json(folder / "train_summary.json", decoder, "train")
    metrics = _read_json(folder / "metrics.json", decoder, "evaluate")
    if len(metrics) != 1 or not isinstance(next(iter(metrics.values())), dict):
        raise BadInputError(
            f"{folder / 'metrics.json'}: expected {{split: {{decoding: scores}}}}, "
            f"found keys {sorted(metrics)}"
        )
    (scores,) = metrics.values()
    return DecoderReport(
        decoder=decoder,
        parameters=int(summary["parameters"]),
        train_seconds=float(summary["train_seconds"]),
        best_epoch=int(summary.get("best_epoch", 0)),
        epochs_run=int(summary.get("epochs_run", 0)),
        scores={name: scores[name] for name in DECODINGS if name in scores},
        losses=_read_losses(folder / "train_log.csv"),
    )


def _read_json(path: Path, decoder: str, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingReportError(f"{path} is missing: run {stage}@{decoder} first (dvc repro)")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_losses(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            {k: float(row[k]) for k in LOSS_FIELDS if row.get(k) not in (None, "")}
            for row in csv.DictReader(handle)
        ]


def compare_decoders(
    decoders: Sequence[str],
    reports_dir: str | Path,
    *,
    markdown_path: str | Path,
    json_path: str | Path,
    table_path: str | Path,
    losses_path: str | Path,
) -> dict[str, Any]:
    """Write the comparison of ``decoders`` (in that order); return the JSON written."""
    reports = [read_report(Path(reports_dir), name) for name in decoders]
    summary = {
        r.decoder: {
            "parameters": r.parameters,
            "train_seconds": r.train_seconds,
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            **{name: _known(r.scores.get(name, {})) for name in DECODINGS},
        }
        for r in reports
    }
    write_json(json_path, summary)
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(comparison_markdown(reports), encoding="utf-8")
    _write_csv(table_path, _table_rows(reports))
    _write_csv(
        losses_path,
        [{"decoder": r.decoder, **row} for r in reports for row in r.losses],
        fields=["decoder", *LOSS_FIELDS],
    )
    return summary


def _known(scores: dict[str, float]) -> dict[str, float]:
    return {k: float(scores[k]) for k in (*METRICS, *SCENE_METRICS) if k in scores}


def comparison_markdown(reports: Sequence[DecoderReport]) -> str:
    """Tables of the models, their test scores and (shapes) their scene scores, each narrower
    than a terminal (80 columns): `make run` ends by printing this file."""
    lines = [
        "# Decoders compared (test split)",
        "",
        "| decoder | parameters | train time | best epoch |",
        "|---|---:|---:|---:|",
    ]
    for r in reports:
        cells = [
            f"`{r.decoder}`",
            f"{r.parameters / 1e6:.2f} M",
            _duration(r.train_seconds),
            f"{r.best_epoch} / {r.epochs_run}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _scores_table(reports, METRICS)
    if any(m in r.scores.get(n, {}) for r in reports for n in DECODINGS for m in SCENE_METRICS):
        lines += _scores_table(reports, SCENE_METRICS)
    lines += [
        "",
        "METEOR and ROUGE-L are pycocoevalcap's; objects: object accuracy (shapes only),",
        "by object count (1-3 obj.); rel. true: the share of stated relations that hold;",
        "rel. stated: the share of multi-object images whose caption states a relation.",
    ]
    return "\n".join(lines) + "\n"


def _scores_table(reports: Sequence[DecoderReport], metrics: Sequence[str]) -> list[str]:
    lines = [
        "",
        "| decoder | decoding | " + " | ".join(_SHORT.get(m, m) for m in metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for r in reports:
        for name in DECODINGS:
            scores = r.scores.get(name, {})
            cells = [
                f"`{r.decoder}`",
                name,
                *(f"{scores[m]:.3f}" if m in scores else "–" for m in metrics),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


# Column titles that keep the scores tables within 80 columns.
_SHORT = {
    "object_accuracy": "objects",
    "object_accuracy_1obj": "1 obj.",
    "object_accuracy_2obj": "2 obj.",
    "object_accuracy_3obj": "3 obj.",
    "relation_precision": "rel. true",
    "relation_coverage": "rel. stated",
}


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _table_rows(reports: Sequence[DecoderReport]) -> list[dict[str, Any]]:
    rows = []
    for r in reports:
        row: dict[str, Any] = {
            "decoder": r.decoder,
            "parameters": r.parameters,
            "train_minutes": round(r.train_seconds / 60, 2),
        }
        for name in DECODINGS:
            for metric in (*METRICS, *SCENE_METRICS):
                value = r.scores.get(name, {}).get(metric)
                row[f"{metric}_{name}"] = "" if value is None else round(float(value), 4)
        rows.append(row)
    return rows


def _write_csv(
    path: str | Path, rows: list[dict[str, Any]], fields: list[str] | None = None
) -> None:
    fields = fields or (list(rows[0]) if rows else ["decoder"])
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
