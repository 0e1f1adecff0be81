"""``captioning params apply RECIPE [--set KEY=VALUE] [--params PATH]`` on copies of the real files.

The recipe a GPU user applies (recipes/coco2017.yaml) must validate against the repository's
params.yaml and change exactly its keys; a bad recipe or --set value fails with one line naming
where it came from and leaves params.yaml byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.config import ConfigError, flatten_dict, load_params, load_yaml
from captioning.orchestration import apply_recipe, parse_set, read_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "coco2017.yaml"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "captioning.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture
def params(tmp_path) -> Path:
    """A copy of the repository's params.yaml beside a dvc.yaml (where the command looks)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path / "params.yaml"


def flat(path: Path) -> dict:
    return flatten_dict(load_yaml(path.read_text()))


def test_the_coco_recipe_validates_and_changes_exactly_its_keys(params):
    recipe = read_recipe(RECIPE)
    before = flat(params)
    assert set(recipe) <= set(before), "a recipe key params.yaml does not have"
    changed = {key for key, value in recipe.items() if before[key] != value}
    assert {"fetch.source", "features.encoder", "vocab.min_freq"} <= changed

    subdir = params.parent / "reports"
    subdir.mkdir()
    result = run_cli("params", "apply", str(RECIPE), cwd=subdir)  # finds ../params.yaml
    assert result.returncode == 0, result.stderr

    assert flat(params) == {**before, **recipe}
    loaded = load_params(params)
    assert loaded.register.registered_name(loaded.fetch.source) == "captioner-coco2017"
    text = params.read_text()
    assert "# keep words seen at least this often in training captions" in text  # comments kept
    lines = result.stdout.splitlines()
    assert lines[:-1] == [
        f"{params}: {key}: {before[key]!r} -> {recipe[key]!r}" for key in recipe if key in changed
    ]
    assert lines[-1].startswith("same as: dvc exp run -S fetch.source=coco2017 -S ")
    assert "-S vocab.min_freq=5" in lines[-1] and "-S features.encoder=resnet101" in lines[-1]

    again = run_cli("params", "apply", str(RECIPE), "--params", str(params), cwd=params.parent)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert params.read_text() == text


def test_set_wins_over_the_recipe_and_is_read_as_yaml(params):
    sets = parse_set(["train.epochs=1", "features.pretrained=false", "train.decoders=[nic]"])
    assert sets == {"train.epochs": 1, "features.pretrained": False, "train.decoders": ["nic"]}
    keys, changes = apply_recipe(params, RECIPE, sets)
    assert keys["train.epochs"] == 1 and keys["vocab.min_freq"] == 5
    loaded = load_params(params)
    assert loaded.train.epochs == 1 and list(loaded.train.decoders) == ["nic"]
    assert loaded.features.pretrained is False and loaded.features.encoder == "resnet101"
    assert {c.key: c.new for c in changes}["train.epochs"] == 1


@pytest.mark.parametrize(
    ("recipe_text", "message"),
    [
        ("train.epoch: 3\n", "{recipe}: unknown key 'train.epoch'; expected one of ["),
        ("vocab.min_freq: 0\n", "{recipe}: key 'vocab.min_freq': expected >= 1, found 0"),
        ("features.encoder: resnet102\n", "{recipe}: key 'features.encoder': expected one of"),
        ("- train.epochs: 3\n", "{recipe}: expected a mapping of dotted params.yaml keys"),
        ("train: {epochs: 3}\n", "{recipe}: key 'train': expected a dotted params.yaml key"),
        ("train..epochs: 3\n", "{recipe}: key 'train..epochs': expected a dotted params.yaml"),
        ("train.epochs: [3\n", "{recipe}: not valid YAML at line 2"),
    ],
    ids=[
        "unknown-key",
        "bad-value",
        "unknown-name",
        "not-a-mapping",
        "nested",
        "empty-part",
        "yaml",
    ],
)
def test_a_bad_recipe_fails_with_one_line_naming_it_and_params_stay_as_they_were(
    params, recipe_text, message
):
    recipe = params.parent / "bad.yaml"
    recipe.write_text(recipe_text)
    before = params.read_bytes()
    result = run_cli("params", "apply", str(recipe), cwd=params.parent)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert " ERROR captioning: " + message.format(recipe=recipe) in line
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert params.read_bytes() == before


def test_a_bad_set_names_set_and_a_missing_recipe_names_its_file(params):
    before = params.read_bytes()
    with pytest.raises(ConfigError, match=r"^--set: key 'train.lr': expected float, found str"):
        apply_recipe(params, RECIPE, parse_set(["train.lr=fast"]))
    with pytest.raises(ConfigError, match=r"^--set 'train\.epochs': expected KEY=VALUE"):
        parse_set(["train.epochs"])
    with pytest.raises(ConfigError, match=r"nope\.yaml: recipe file not found$"):
        apply_recipe(params, params.parent / "nope.yaml")
    assert params.read_bytes() == before


def test_a_broken_params_file_is_named_not_the_recipe(params):
    broken = params.read_text().replace("min_freq: 1 ", "min_freq: 0 ", 1)
    params.write_text(broken)
    with pytest.raises(ConfigError, match=rf"^{params}: key 'vocab.min_freq': expected >= 1"):
        apply_recipe(params, RECIPE)
    assert params.read_text() == broken


def test_the_transformer_scst_recipe_goes_on_top_of_the_coco_one(params):
    """Applied after recipes/coco2017.yaml, the Transformer + SCST recipe gives a valid
    params.yaml holding both recipes' values (the later one winning), with the self-critical
    phase on the decoder that train@ trains."""
    second = REPO / "recipes" / "coco2017-transformer-scst.yaml"
    before = flat(params)
    apply_recipe(params, RECIPE)
    apply_recipe(params, second)
    assert flat(params) == {**before, **read_recipe(RECIPE), **read_recipe(second)}
    loaded = load_params(params)
    assert loaded.fetch.source == "coco2017"  # the first recipe's, kept
    assert loaded.train.decoders == ["transformer"] == loaded.scst.decoders
    assert loaded.train.model.transformer.d_model == 512
