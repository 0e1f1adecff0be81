import csv
import json
from pathlib import Path

import pytest

from captioning.comparison import MissingReportError, compare_decoders
from captioning.training.tracked import write_training_log


def write_reports(root: Path, decoder: str, scores: dict, parameters: int, seconds: float) -> None:
    folder = root / decoder
    folder.mkdir(parents=True)
    summary = {"decoder": decoder, "parameters": parameters, "train_seconds": seconds}
    summary |= {"best_epoch": 2, "epochs_run": 3, "best_val_CIDEr": 1.0, "stopped_early": False}
    (folder / "train_summary.json").write_text(json.dumps(summary))
    (folder / "metrics.json").write_text(json.dumps({"test": scores}))
    history = [
        {"epoch": e, "train_loss": 3.0 - e, "val_loss": 3.5 - e, "lr": 0.1, "CIDEr": 0.5 * e}
        for e in (1, 2, 3)
    ]
    write_training_log(folder / "train_log.csv", history)


def scores(cider: float, objects: bool) -> dict:
    base = {"BLEU-1": 0.9, "BLEU-4": 0.7, "METEOR": 0.45, "ROUGE-L": 0.8, "CIDEr": cider}
    if objects:
        base["object_accuracy"] = 0.81
    return {"greedy": base, "beam": {**base, "CIDEr": cider + 0.1}}


def test_table_json_and_plots_of_two_decoders(tmp_path):
    reports = tmp_path / "decoders"
    write_reports(reports, "soft_attention", scores(4.4, objects=True), 2_500_000, 900.0)
    write_reports(reports, "nic", scores(3.1, objects=False), 1_200_000, 45.0)  # no objects
    out = tmp_path / "out"
    summary = compare_decoders(
        ["soft_attention", "nic"],
        reports,
        markdown_path=out / "comparison.md",
        json_path=out / "comparison.json",
        table_path=out / "comparison.csv",
        losses_path=out / "loss_curves.csv",
    )
    assert list(summary) == ["soft_attention", "nic"]
    assert summary["nic"]["beam"]["CIDEr"] == pytest.approx(3.2)
    assert "object_accuracy" not in summary["nic"]["greedy"]
    assert json.loads((out / "comparison.json").read_text()) == summary

    table = (out / "comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| `")]
    assert rows[:2] == [
        "| `soft_attention` | 2.50 M | 15.0 min | 2 / 3 |",
        "| `nic` | 1.20 M | 45 s | 2 / 3 |",
    ]
    scores_rows = rows[2:]  # greedy and beam per decoder
    assert len(scores_rows) == 4
    assert scores_rows[0] == "| `soft_attention` | greedy | 0.700 | 0.450 | 0.800 | 4.400 | 0.810 |"
    assert scores_rows[3].startswith("| `nic` | beam |") and scores_rows[3].endswith(
        "| 3.200 | – |"
    )
    # `make run` ends by printing this file: it fits a terminal
    assert max(len(line) for line in table) <= 80, max(table, key=len)

    with (out / "comparison.csv").open() as handle:
        per_decoder = list(csv.DictReader(handle))
    assert [r["decoder"] for r in per_decoder] == ["soft_attention", "nic"]
    assert float(per_decoder[1]["CIDEr_beam"]) == pytest.approx(3.2)
    assert per_decoder[1]["object_accuracy_greedy"] == ""
    with (out / "loss_curves.csv").open() as handle:
        losses = list(csv.DictReader(handle))
    assert [(r["decoder"], r["epoch"]) for r in losses][:4] == [
        ("soft_attention", "1.0"),
        ("soft_attention", "2.0"),
        ("soft_attention", "3.0"),
        ("nic", "1.0"),
    ]
    assert set(losses[0]) == {"decoder", "epoch", "train_loss", "val_loss"}


def test_a_decoder_not_evaluated_yet_is_named(tmp_path):
    reports = tmp_path / "decoders"
    write_reports(reports, "soft_attention", scores(4.4, objects=True), 10, 1.0)
    (reports / "soft_attention" / "metrics.json").unlink()
    with pytest.raises(MissingReportError, match=r"metrics.json is missing: run evaluate@soft"):
        compare_decoders(
            ["soft_attention"],
            reports,
            markdown_path=tmp_path / "a.md",
            json_path=tmp_path / "a.json",
            table_path=tmp_path / "a.csv",
            losses_path=tmp_path / "b.csv",
        )


def test_training_log_has_a_column_for_every_recorded_value(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.5, "lr": 0.1, "sample_prob": 0.0},
        {"epoch": 2, "train_loss": 1.0, "val_loss": 1.5, "lr": 0.05, "sample_prob": 0.1}
        | {"BLEU-4": 0.3, "CIDEr": 0.9},
    ]
    write_training_log(tmp_path / "log.csv", history)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,lr,sample_prob,BLEU-4,CIDEr"
    assert lines[1] == "1,2.0,2.5,0.1,0.0,,"  # not validated that epoch
    assert lines[2] == "2,1.0,1.5,0.05,0.1,0.3,0.9"


def outputs(out: Path) -> dict[str, Path]:
    names = ("comparison.md", "comparison.json", "comparison.csv", "loss_curves.csv")
    keys = ("markdown_path", "json_path", "table_path", "losses_path")
    return {key: out / name for key, name in zip(keys, names, strict=True)}


def test_the_scene_scores_get_their_own_table(tmp_path):
    reports = tmp_path / "decoders"
    scene = {
        "object_accuracy_1obj": 0.99,
        "object_accuracy_2obj": 0.95,
        "object_accuracy_3obj": 0.9,
        "relation_precision": 0.25,
        "relation_coverage": 0.04,
    }
    base = scores(4.4, objects=True)
    write_reports(reports, "soft_attention", {k: {**v, **scene} for k, v in base.items()}, 1, 9)
    write_reports(reports, "nic", scores(3.1, objects=False), 1, 9)
    out = tmp_path / "out"
    summary = compare_decoders(["soft_attention", "nic"], reports, **outputs(out))
    assert summary["soft_attention"]["beam"]["relation_precision"] == 0.25
    table = (out / "comparison.md").read_text().splitlines()
    header = next(line for line in table if "rel. true" in line)
    assert header.split(" | ")[2:] == ["1 obj.", "2 obj.", "3 obj.", "rel. true", "rel. stated |"]
    rows = [line for line in table[table.index(header) :] if line.startswith("| `")]
    assert rows[0] == "| `soft_attention` | greedy | 0.990 | 0.950 | 0.900 | 0.250 | 0.040 |"
    assert rows[2] == "| `nic` | greedy | – | – | – | – | – |"
    assert max(len(line) for line in table) <= 80, max(table, key=len)
    with (out / "comparison.csv").open() as handle:
        per_decoder = list(csv.DictReader(handle))
    assert float(per_decoder[0]["relation_coverage_beam"]) == 0.04


def test_no_scene_table_without_scene_scores(tmp_path):
    reports = tmp_path / "decoders"
    write_reports(reports, "nic", scores(3.1, objects=True), 1, 9)
    out = tmp_path / "out"
    compare_decoders(["nic"], reports, **outputs(out))
    assert "rel. true |" not in (out / "comparison.md").read_text()
