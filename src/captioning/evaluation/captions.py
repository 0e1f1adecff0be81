"""The captioner's task: the test captions scored by the COCO metrics (and, on shapes, object
accuracy and the relation metrics), or by exact match (``evaluate.task: word``); results.json and the gallery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioning.config import EvaluateConfig
from captioning.evaluation.reading import DECODINGS, Rows, Scored, SplitReading
from captioning.io import write_json
from captioning.metrics.coco_eval import coco_scores_many, require_java
from captioning.metrics.shapes_accuracy import object_accuracy, object_correct
from captioning.metrics.shapes_relations import Scene, relation_scores
from captioning.metrics.word_accuracy import word_scores


@dataclass(frozen=True)
class CaptionTask:
    """Captions of one split (test): COCO metrics, results.json, the beam n-best, the gallery."""

    cfg: EvaluateConfig
    split: str = "test"
    gallery = True

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.split,)

    def check(self) -> None:
        require_java()  # before minutes of decoding, not after

    def score(self, reading: SplitReading) -> Scored:
        predictions = {name: reading.predictions(name) for name in DECODINGS}
        scored = coco_scores_many(predictions, reading.references, spice=self.cfg.spice)
        if not any("objects" in m for m in reading.row_meta):
            return scored
        metas = dict(zip(reading.image_ids, reading.row_meta, strict=True))
        objects = {i: m.get("objects", []) for i, m in metas.items()}
        scenes = {i: Scene.of(m) for i, m in metas.items() if "objects" in m}
        for name, (corpus, scores) in scored.items():
            corpus.update(_object_metrics(predictions[name], objects))
            if len(scenes) == len(metas):
                corpus.update(relation_scores(predictions[name], scenes))
            for image_id, caption in predictions[name].items():
                correct = object_correct(caption, objects[image_id])
                scores[image_id]["object_accuracy"] = float(correct)
        return scored

    def per_image(self, reading: SplitReading, scored: Scored) -> Rows:
        """References, and per decoding the caption, its log-probability and every score; the
        beam's n-best too."""
        rows: Rows = {i: {"references": reading.references[i]} for i in reading.image_ids}
        for name in DECODINGS:
            for image_id, hyps, texts in reading.n_best(name):
                rows[image_id][name] = {
                    "caption": texts[0],
                    "log_prob": hyps[0].score,
                    **scored[name][1][image_id],
                }
        for image_id, hyps, texts in reading.n_best("beam"):
            rows[image_id]["beam"]["n_best"] = [
                {"caption": text, "log_prob": h.score} for h, text in zip(hyps, texts, strict=True)
            ]
        return rows

    def write(self, out_dir: Path, reading: SplitReading, rows: Rows) -> None:
        """results.json: the beam captions as COCO results, [{"image_id", "caption"}, ...]."""
        results = [
            {"image_id": int(i), "caption": rows[i]["beam"]["caption"]} for i in reading.image_ids
        ]
        write_json(out_dir / "results.json", results)


class WordTask(CaptionTask):
    """Captions read as words: whole-caption exact match and character accuracy; no Java."""

    def check(self) -> None:
        pass

    def score(self, reading: SplitReading) -> Scored:
        return {
            name: word_scores(reading.predictions(name), reading.references) for name in DECODINGS
        }


def _object_metrics(predictions: dict[int, str], truths: dict[int, list]) -> dict[str, float]:
    result = object_accuracy(predictions, truths)
    flat = {"object_accuracy": result["object_accuracy"]}
    for count, value in result["object_accuracy_by_count"].items():
        flat[f"object_accuracy_{count}obj"] = value
    return flat
