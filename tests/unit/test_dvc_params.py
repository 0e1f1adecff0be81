"""Each DVC stage's params are the settings that change its outputs, and only those.

A params.yaml key that no stage lists changes nothing in DVC's eyes (`dvc exp run -S key=...`
skips every stage), so it must be an execution setting (config.EXECUTION_SETTINGS: outputs the
same bytes whatever its value); an execution setting a stage lists re-runs it for nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from captioning.config import EXECUTION_SETTINGS, Params

REPO = Path(__file__).resolve().parents[2]
PIPELINES = [REPO / "dvc.yaml", REPO / "pipelines" / "captcha" / "dvc.yaml"]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def stage_params(dvc_yaml: Path) -> dict[str, list[str]]:
    """Stage name -> the params.yaml keys (or sections) it lists."""
    found = {}
    for name, stage in _load(dvc_yaml)["stages"].items():
        body = stage.get("do", stage)  # a foreach stage's template
        keys = body.get("params", [])
        assert all(isinstance(k, str) for k in keys), f"{dvc_yaml}: {name}: a params file entry"
        found[name] = keys
    return found


def leaf_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the values of nested dicts (a list is a value)."""
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, dotted + ".") if isinstance(value, dict) else [dotted]
    return keys


def covers(param: str, key: str) -> bool:
    """Whether listing ``param`` (a key or a section) makes DVC track ``key``."""
    return key == param or key.startswith(param + ".")


def _label(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("dvc_yaml", PIPELINES, ids=_label)
def test_no_stage_lists_an_execution_setting(dvc_yaml):
    listed = [
        f"{stage}: {param} (covers {setting})"
        for stage, params in stage_params(dvc_yaml).items()
        for param in params
        for setting in EXECUTION_SETTINGS
        if covers(param, setting) or covers(setting, param)
    ]
    assert not listed, f"{_label(dvc_yaml)}: execution settings as stage params: {listed}"


@pytest.mark.parametrize("dvc_yaml", PIPELINES, ids=_label)
def test_every_key_of_the_params_file_is_a_stage_param_or_an_execution_setting(dvc_yaml):
    listed = [param for params in stage_params(dvc_yaml).values() for param in params]
    keys = leaf_keys(_load(dvc_yaml.parent / "params.yaml"))
    untracked = [
        key
        for key in keys
        if not any(covers(param, key) for param in listed)
        and not any(covers(setting, key) for setting in EXECUTION_SETTINGS)
    ]
    assert not untracked, (
        f"{_label(dvc_yaml.parent / 'params.yaml')}: keys no stage of {_label(dvc_yaml)} lists "
        f"under params: {untracked}; list each under the stage that reads it, or, if it never "
        "changes an output, add it to captioning.config.EXECUTION_SETTINGS"
    )


@pytest.mark.parametrize("dvc_yaml", PIPELINES, ids=_label)
def test_every_stage_param_is_in_the_params_file(dvc_yaml):
    """DVC refuses to run a stage whose param its params file lacks ("Parameters ... are
    missing"), even where the config loader would take the default."""
    keys = leaf_keys(_load(dvc_yaml.parent / "params.yaml"))
    missing = [
        f"{stage}: {param}"
        for stage, params in stage_params(dvc_yaml).items()
        for param in params
        if "${" not in param and not any(covers(param, key) for key in keys)
    ]
    assert not missing, f"{_label(dvc_yaml.parent / 'params.yaml')} lacks: {missing}"


def test_execution_settings_are_keys_of_the_config():
    keys = leaf_keys(dataclasses.asdict(Params()))
    assert [s for s in EXECUTION_SETTINGS if s not in keys] == []


def test_the_check_sees_a_missing_param_and_a_listed_setting():
    # The helpers the tests above rely on, on the cases they must catch.
    assert covers("train", "train.log_every_steps") and covers("train.model", "train.model.cell")
    assert not covers("train.model", "train.model_name") and not covers("train.lr", "train")
    assert leaf_keys({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == ["a.b", "a.c"]
