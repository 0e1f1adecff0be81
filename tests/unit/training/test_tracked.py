"""The train stage's refusals, before any data is read or any MLflow run starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from captioning.config import ConfigError, load_params
from captioning.training.tracked import train_tracked

REPO = Path(__file__).resolve().parents[3]


# The stage's paths, all under tmp_path/out: nothing may appear there when it refuses.
OUTPUTS = {
    "vocab_path": "vocab.json",
    "model_dir": "model",
    "log_path": "log.csv",
    "checkpoint_dir": "checkpoints",
}


def run(tmp_path: Path, decoder: str, fine_tune: bool = False, **dirs):
    """The repo's params with ``train.fine_tune.enabled`` set; outputs under ``tmp_path/out``."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["train"]["fine_tune"]["enabled"] = fine_tune
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    paths = {key: tmp_path / "out" / name for key, name in OUTPUTS.items()}
    params = load_params(tmp_path / "params.yaml")
    return train_tracked(params, decoder, **{"features_dir": None, **paths, **dirs})


def test_an_unknown_decoder_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown decoder 'nick'; choose from \[.*'nic'"):
        run(tmp_path, "nick", features_dir=tmp_path)


def test_each_batch_source_needs_its_data(tmp_path):
    with pytest.raises(ConfigError, match=r"needs the shards \(--shards\)"):
        run(tmp_path, "nic", fine_tune=True, features_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"needs them \(--features\)"):
        run(tmp_path, "nic", shards_dir=tmp_path)
    assert not (tmp_path / "out").exists()  # nothing written
