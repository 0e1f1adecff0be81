"""The evaluate stage's library function on a tiny trained model: every report file, checked."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from captioning.config import (
    DecoderConfig,
    EarlyStoppingConfig,
    EvaluateConfig,
    FeaturesConfig,
    ShardConfig,
    TrainConfig,
    VocabConfig,
)
from captioning.data.shards import split_captions, write_shards
from captioning.data.vocab import SPECIALS, Vocab, build_vocab
from captioning.decoding.search import Hypothesis
from captioning.evaluation import attention_figures, choose_task, evaluate_model
from captioning.evaluation import captions as caption_task
from captioning.evaluation.captions import CaptionTask, WordTask
from captioning.evaluation.reader import ReaderTask
from captioning.features.cache import FeatureCache, FeatureRows, extract_features
from captioning.training.loop import train_decoder
from captioning.training.sources import CachedFeatures

REPO = Path(__file__).resolve().parents[2]
COCO_METRICS = {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
CFG = EvaluateConfig(
    beam_size=3, max_length=6, batch_size=2, n_attention_figures=2, n_best=3, n_gallery=3
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from conftest import make_layout

    root = tmp_path_factory.mktemp("evaluate")
    make_layout(root / "raw", {"train": 6, "val": 2, "test": 4})
    write_shards(root / "raw", root / "shards", ShardConfig())
    torch.manual_seed(0)
    extract_features(
        root / "shards",
        root / "features",
        FeaturesConfig(encoder="small_cnn", pretrained=False, num_workers=0),
    )
    vocab, _ = build_vocab(split_captions(root / "shards", "train"), VocabConfig())
    vocab.save(root / "vocab.json")
    train_cfg = TrainConfig(
        model=DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8, feature_proj_dim=8),
        epochs=2,
        batch_size=4,
        warmup_steps=1,
        # CIDEr: make_layout's scenes have no objects (params.yaml's object_accuracy needs them)
        early_stopping=EarlyStoppingConfig(metric="CIDEr"),
    )
    train_decoder(
        "soft_attention",
        CachedFeatures(root / "features"),
        root / "vocab.json",
        root / "model",
        train_cfg,
        seed=0,
        checkpoint_dir=root / "checkpoints",
    )
    return root


@pytest.fixture(scope="module")
def report(workspace) -> Path:
    out = workspace / "report"
    evaluate_model(workspace / "model", workspace / "features", workspace / "shards", out, CFG)
    return out


def read(report: Path, name: str):
    return json.loads((report / name).read_text())


def test_metrics_json_has_every_metric_for_both_decodings(report):
    metrics = read(report, "metrics.json")
    assert sorted(metrics["test"]) == ["beam", "greedy"]
    for scores in metrics["test"].values():
        assert set(scores) >= COCO_METRICS
        assert all(0.0 <= v <= 10.0 for v in scores.values())


def test_per_image_has_every_metric_per_image_and_the_n_best(report):
    metrics = read(report, "metrics.json")["test"]
    per_image = read(report, "per_image.json")
    assert len(per_image) == 4
    for entry in per_image:
        assert entry["references"] and isinstance(entry["image_id"], int)
        for name in ("greedy", "beam"):
            assert set(metrics[name]) <= set(entry[name]), name
            assert isinstance(entry[name]["caption"], str) and entry[name]["log_prob"] <= 0
        n_best = entry["beam"]["n_best"]
        assert len(n_best) == 3 and n_best[0]["caption"] == entry["beam"]["caption"]
        log_probs = [h["log_prob"] for h in n_best]
        assert log_probs == sorted(log_probs, reverse=True)  # length_penalty 0: by log-prob
    # CIDEr-D's corpus score is the mean of the per-image scores written here.
    mean = np.mean([e["beam"]["CIDEr"] for e in per_image])
    assert metrics["beam"]["CIDEr"] == pytest.approx(mean)


def test_results_json_loads_in_pycocotools(report, workspace, tmp_path):
    from pycocotools.coco import COCO

    per_image = read(report, "per_image.json")
    annotations = [
        {"id": n, "image_id": e["image_id"], "caption": c}
        for n, (e, c) in enumerate(((e, c) for e in per_image for c in e["references"]), 1)
    ]
    truth = tmp_path / "captions_test.json"
    truth.write_text(
        json.dumps(
            {
                "images": [{"id": e["image_id"]} for e in per_image],
                "annotations": annotations,
                "info": {},
                "licenses": [],
            }
        )
    )
    coco = COCO(str(truth))
    results = coco.loadRes(str(report / "results.json"))
    assert sorted(results.getImgIds()) == sorted(e["image_id"] for e in per_image)
    by_image = {a["image_id"]: a["caption"] for a in results.dataset["annotations"]}
    assert by_image == {e["image_id"]: e["beam"]["caption"] for e in per_image}


def test_gallery_embeds_thumbnails_and_all_captions(report):
    page = (report / "gallery.html").read_text()
    per_image = read(report, "per_image.json")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/jpeg;base64,') == CFG.n_gallery
    for entry in per_image[: CFG.n_gallery]:
        assert f'id="image-{entry["image_id"]}"' in page
        assert entry["references"][0] in page
    assert f'id="image-{per_image[CFG.n_gallery]["image_id"]}"' not in page


def test_attention_figures_are_pngs(report):
    figures = sorted((report / "attention").iterdir())
    assert len(figures) == CFG.n_attention_figures
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decoder_without_attention_skips_heat_maps_with_a_log_line(tmp_path, caplog):
    from PIL import Image

    vocab = Vocab(itos=(*SPECIALS, "a", "circle"), max_length=5)
    hypotheses = {7: Hypothesis(tokens=[4, 5], score=-1.0, alphas=None)}
    with caplog.at_level(logging.INFO, logger="captioning.evaluation"):
        drawn = attention_figures(
            tmp_path / "attention",
            {7: Image.new("RGB", (32, 32))},
            hypotheses,
            vocab,
            grid=7,
            decoder_name="nic",
            references={7: ["a circle"]},
        )
    assert drawn == 0
    assert [p.name for p in (tmp_path / "attention").iterdir()] == ["README.txt"]
    assert [r.getMessage() for r in caplog.records] == [
        "no attention heat-maps: decoder nic does not attend"
    ]


def test_word_task_scores_exact_match_without_java(workspace, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # word metrics need no Java
    cfg = EvaluateConfig(beam_size=2, max_length=4, n_best=1, task="word", n_gallery=1)
    out = tmp_path / "report"
    metrics = evaluate_model(
        workspace / "model", workspace / "features", workspace / "shards", out, cfg
    )
    assert sorted(metrics["test"]["beam"]) == ["char_accuracy", "exact_match"]
    for entry in read(out, "per_image.json"):
        assert {"exact_match", "char_accuracy"} <= set(entry["beam"])


def test_task_follows_the_vocabulary():
    chars = Vocab(itos=(*SPECIALS, *"abc"), max_length=8, level="char")
    words = Vocab(itos=(*SPECIALS, "a", "circle"), max_length=8)
    for task in ("auto", "caption", "word"):  # characters are always read as words
        assert type(choose_task(chars, EvaluateConfig(task=task))) is ReaderTask
    assert type(choose_task(words, EvaluateConfig(task="auto"))) is CaptionTask
    assert type(choose_task(words, EvaluateConfig(task="caption"))) is CaptionTask
    assert type(choose_task(words, EvaluateConfig(task="word"))) is WordTask
    assert choose_task(words, EvaluateConfig(), split="val").splits == ("val",)


@pytest.fixture(scope="module")
def reader_report(workspace) -> Path:
    """A character-level model on the same features, evaluated as the CAPTCHA reader."""
    chars, _ = build_vocab(
        split_captions(workspace / "shards", "train"), VocabConfig(level="char", max_length=16)
    )
    chars.save(workspace / "chars.json")
    train_decoder(
        "soft_attention",
        CachedFeatures(workspace / "features"),
        workspace / "chars.json",
        workspace / "reader",
        TrainConfig(
            model=DecoderConfig(embed_dim=8, hidden_dim=8, attention_dim=8),
            epochs=1,
            early_stopping=EarlyStoppingConfig(metric="exact_match"),
        ),
        seed=0,
        checkpoint_dir=workspace / "reader_checkpoints",
    )
    out = workspace / "reader_report"
    evaluate_model(workspace / "reader", workspace / "features", workspace / "shards", out, CFG)
    return out


def test_reader_scores_val_and_test_and_writes_its_answers(reader_report):
    metrics = read(reader_report, "metrics.json")
    assert sorted(metrics) == ["test", "val"]
    for split, count in (("val", 2), ("test", 4)):
        for name in ("greedy", "beam"):
            assert sorted(metrics[split][name]) == ["char_accuracy", "count", "exact_match"]
            assert metrics[split][name]["count"] == count
    per_image = read(reader_report, "per_image.json")
    assert [e["file_name"] for e in per_image] == ["img_0009", "img_0010", "img_0011", "img_0012"]
    for entry in per_image:
        assert entry["references"] == ["a picture number 0"]  # the first caption only
        assert " " not in entry["beam"]["caption"] and "<" not in entry["beam"]["caption"]
    answers = (reader_report / "predictions.txt").read_text().splitlines()
    assert answers == [f"{e['file_name']}\t{e['beam']['caption']}" for e in per_image]
    assert len(list((reader_report / "attention").iterdir())) == CFG.n_attention_figures
    assert not (reader_report / "results.json").exists()
    assert not (reader_report / "gallery.html").exists()


def test_stage_without_java_fails_in_one_line_before_decoding(workspace, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"task": "caption"}}))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "evaluate.py"),
            "--params",
            str(params),
            "--model",
            str(workspace / "model"),
            "--features",
            str(workspace / "features"),
            "--shards",
            str(workspace / "shards"),
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(empty)},
    )
    assert result.returncode == 2, result.stderr
    assert "no `java` is on PATH: install a JRE" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "report").exists()


def test_the_split_is_read_a_batch_at_a_time(workspace, tmp_path, monkeypatch):
    """The test split's features are read per batch (COCO's need not fit in RAM), never whole,
    and the captions do not depend on the batch size."""
    cfg = EvaluateConfig(beam_size=2, max_length=4, n_best=1, task="word", n_gallery=1)
    whole = tmp_path / "whole"
    evaluate_model(workspace / "model", workspace / "features", workspace / "shards", whole, cfg)

    def refuse(self, as_tensor=False):
        raise AssertionError(f"the {self.split} split was loaded whole")

    reads: list[list[int]] = []
    read = FeatureRows.__getitem__
    monkeypatch.setattr(FeatureCache, "load_in_memory", refuse)
    monkeypatch.setattr(
        FeatureRows, "__getitem__", lambda s, i: reads.append(list(i)) or read(s, i)
    )
    batched = tmp_path / "batched"
    small = dataclasses.replace(cfg, batch_size=3)
    evaluate_model(
        workspace / "model", workspace / "features", workspace / "shards", batched, small
    )
    assert reads == [[0, 1, 2], [3]]  # the 4 test images, 3 at a time
    captions = [
        {
            e["image_id"]: e["greedy"]["caption"]
            for e in json.loads((out / "per_image.json").read_text())
        }
        for out in (whole, batched)
    ]
    assert captions[0] == captions[1]


def test_shapes_captions_get_object_and_relation_scores(monkeypatch):
    """The caption task adds object accuracy (by count) and the relation metrics to each
    decoding's corpus scores where the test images are placed shapes scenes."""
    left = {"colour": "red", "shape": "circle", "size": "small", "x": 35, "y": 100}
    right = {"colour": "blue", "shape": "square", "size": "large", "x": 165, "y": 100}
    left["box"], right["box"] = [10, 75, 60, 125], [140, 75, 190, 125]
    said = {
        "greedy": {1: "a red circle to the left of a blue square", 2: "a white star"},
        "beam": {1: "a blue square to the left of a red circle", 2: "a red star"},
    }
    reading = SimpleNamespace(
        image_ids=[1, 2],
        row_meta=[
            {"objects": [left, right], "width": 224},
            {"objects": [{"colour": "white", "shape": "star"}], "width": 224},
        ],
        references={1: ["x"], 2: ["y"]},
        predictions=lambda name: said[name],
    )
    monkeypatch.setattr(
        caption_task,
        "coco_scores_many",
        lambda predictions, references, spice: {
            name: ({"CIDEr": 1.0}, {i: {"CIDEr": 1.0} for i in p})
            for name, p in predictions.items()
        },
    )
    scored = CaptionTask(EvaluateConfig()).score(reading)
    greedy, beam = scored["greedy"][0], scored["beam"][0]
    # beam names image 1's objects right but places them the wrong way round
    assert (greedy["object_accuracy"], beam["object_accuracy"]) == (1.0, 0.5)
    assert greedy["object_accuracy_2obj"] == 1.0
    assert (greedy["relation_precision"], greedy["relation_coverage"]) == (1.0, 1.0)
    assert (beam["relation_precision"], beam["relation_coverage"]) == (0.0, 1.0)
    assert scored["beam"][1][1]["object_accuracy"] == 1.0
