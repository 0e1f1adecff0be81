"""COCO caption metrics through pycocoevalcap (Java), the Java-missing error, the SPICE skip."""

from __future__ import annotations

import logging
import shutil
import urllib.request

import pytest

import captioning.metrics.spice as spice_module
from captioning.metrics.coco_eval import JavaMissingError, coco_scores, coco_scores_many
from captioning.metrics.spice import CORENLP_JARS, missing_spice_jars, spice_scores

REFERENCES = {
    1: ["a red circle on the left", "a small red circle", "there is a red circle"],
    2: ["a blue square above a green star", "a green star below a blue square"],
    3: ["two white stars", "a pair of white stars"],
}
PREDICTIONS = {1: "a small red circle", 2: "a blue square above a green star", 3: "a red square"}
METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch CoreNLP fails the test instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    import pycocoevalcap.spice.get_stanford_models as getter

    monkeypatch.setattr(getter, "urlretrieve", refuse)


@pytest.fixture
def no_spice_jars(tmp_path, monkeypatch):
    lib = tmp_path / "spice-lib"
    lib.mkdir()
    monkeypatch.setattr(spice_module, "spice_lib_dir", lambda: lib)
    return lib


def test_scores_per_image_and_corpus(no_spice_jars, caplog):
    with caplog.at_level(logging.WARNING):
        corpus, per_image = coco_scores(PREDICTIONS, REFERENCES, spice=True)
    assert sorted(corpus) == sorted(METRICS)  # no SPICE without its jars
    assert sorted(per_image) == [1, 2, 3]
    for scores in per_image.values():
        assert sorted(scores) == sorted(METRICS)
    # An exact reference scores higher than a wrong caption on every metric.
    for name in METRICS:
        assert per_image[2][name] > per_image[3][name], name
    assert per_image[2]["BLEU-4"] == pytest.approx(1.0, abs=1e-3)
    # CIDEr-D's corpus score is the mean of its per-image scores.
    mean_cider = sum(s["CIDEr"] for s in per_image.values()) / 3
    assert corpus["CIDEr"] == pytest.approx(mean_cider)
    (record,) = [r for r in caplog.records if "SPICE" in r.getMessage()]
    assert record.exc_info is None


def test_several_decodings_score_as_each_alone(no_spice_jars):
    # The last caption empty: the PTB tokenizer drops its line, and it must still score 0.
    other = {1: "a red circle", 2: "two white stars", 3: ""}
    together = coco_scores_many({"a": PREDICTIONS, "b": other}, REFERENCES, meteor=False)
    corpus, per_image = coco_scores(other, REFERENCES, meteor=False)
    assert together["b"][0] == pytest.approx(corpus)
    for image_id, scores in per_image.items():
        assert together["b"][1][image_id] == pytest.approx(scores)
    assert together["a"][1][2]["BLEU-4"] == pytest.approx(1.0, abs=1e-3)  # not b's scores
    assert together["b"][1][3]["CIDEr"] == 0.0 and together["b"][1][3]["BLEU-1"] < 1e-6


def test_mismatched_image_ids_are_refused():
    with pytest.raises(ValueError, match=r"image ids \[3\]"):
        coco_scores({1: "a", 2: "b"}, {1: ["a"], 2: ["b"], 3: ["c"]})


def test_java_missing_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(JavaMissingError, match="no `java` is on PATH: install a JRE"):
        coco_scores(PREDICTIONS, REFERENCES)


def test_spice_skip_names_the_jars_and_their_place(no_spice_jars, caplog):
    with caplog.at_level(logging.WARNING, logger="captioning.metrics.spice"):
        assert spice_scores({1: ["a red circle"]}, {1: ["a red circle"]}) is None
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and record.exc_info is None
    assert message.startswith("SPICE skipped: Stanford CoreNLP jars ")
    for jar in CORENLP_JARS:
        assert jar in message
    assert f"not found in {no_spice_jars} " in message
    assert "stanford-corenlp-full-2015-12-09.zip" in message


def test_spice_jars_are_the_ones_pycocoevalcap_looks_for():
    import pycocoevalcap.spice.get_stanford_models as getter

    # The downloader checks for lib/<JAR>.jar and extracts <JAR>.jar and <JAR>-models.jar.
    assert (f"{getter.JAR}.jar", f"{getter.JAR}-models.jar") == CORENLP_JARS
    assert spice_module.spice_lib_dir().name == getter.SPICELIB
    assert (spice_module.spice_lib_dir().parent / "spice-1.0.jar").is_file()


def test_spice_runs_when_the_jars_are_present(no_spice_jars, monkeypatch):
    for jar in CORENLP_JARS[:1]:
        (no_spice_jars / jar).write_bytes(b"")
    assert missing_spice_jars(no_spice_jars) == [CORENLP_JARS[1]]
    (no_spice_jars / CORENLP_JARS[1]).write_bytes(b"")
    assert missing_spice_jars(no_spice_jars) == []
    seen = {}

    def fake_compute(gts, res):  # the real jar needs the real CoreNLP
        seen.update(gts=gts, res=res)
        return 0.25, {i: 0.1 * i for i in gts}

    monkeypatch.setattr(spice_module, "_compute", fake_compute)
    corpus, per_image = coco_scores(PREDICTIONS, REFERENCES, meteor=False, spice=True)
    assert corpus["SPICE"] == 0.25
    assert [per_image[i]["SPICE"] for i in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])
    assert seen["res"][3] == ["a red square"]  # PTB-tokenised, one caption per image


def test_spice_failure_is_a_skip_not_a_traceback(no_spice_jars, monkeypatch, caplog):
    import subprocess

    for jar in CORENLP_JARS:
        (no_spice_jars / jar).write_bytes(b"")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/java")

    def failing(gts, res):
        raise subprocess.CalledProcessError(1, ["java", "-jar", "spice-1.0.jar"])

    monkeypatch.setattr(spice_module, "_compute", failing)
    with caplog.at_level(logging.WARNING, logger="captioning.metrics.spice"):
        assert spice_scores({1: ["a"]}, {1: ["a"]}) is None
    (record,) = caplog.records
    assert record.getMessage().startswith("SPICE skipped: the SPICE jar failed")
