"""params.yaml checked at the door, and one error hierarchy (issue 18, items 3 and 7).

Every stage loads the whole params.yaml, so a name no registry has (a source, an encoder, a
decoder, a promotion score or decoding) stops the first stage, fetch, with one line naming the key
and the choices, before it writes anything; several mistakes are all named, one line each. The ``captioning registry`` commands report a request
that cannot be carried out the same way: one line, exit 2, no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.reliability.conftest import (
    REPO,
    assert_one_line_error,
    run_cli,
    run_fetch,
    run_shard,
    tree_digest,
)

from captioning.config import (
    DECODER_NAMES,
    DECODING_NAMES,
    ENCODER_NAMES,
    PER_IMAGE_SCORE_NAMES,
    SOURCE_NAMES,
)

# A shapes set small enough that a fetch which wrongly goes ahead ends in seconds.
TINY_FETCH = {"source": "shapes", "shapes": {"n_train": 4, "n_val": 2, "n_test": 2}}


def write_params(path: Path, **sections: dict) -> Path:
    params = {"fetch": TINY_FETCH, **sections}
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def choices(names) -> str:
    return f"expected one of {sorted(names)}"


@pytest.mark.parametrize(
    ("sections", "key", "names", "found"),
    [
        ({"fetch": {**TINY_FETCH, "source": "coco2018"}}, "fetch.source", SOURCE_NAMES, "coco2018"),
        ({"features": {"encoder": "resnet102"}}, "features.encoder", ENCODER_NAMES, "resnet102"),
        ({"train": {"decoders": ["soft_atention"]}}, "train.decoders[0]", DECODER_NAMES, "soft_atention"),
        ({"train": {"decoders": ["nic", "mrn"]}}, "train.decoders[1]", DECODER_NAMES, "mrn"),
        ({"register": {"promote_metric": "CIDEr-D"}}, "register.promote_metric", PER_IMAGE_SCORE_NAMES, "CIDEr-D"),
        ({"register": {"decoding": "sampled"}}, "register.decoding", DECODING_NAMES, "sampled"),
    ],
    ids=["source", "encoder", "decoders-0", "decoders-1", "promote-metric", "decoding"],
)  # fmt: skip
def test_unknown_name_in_any_section_stops_fetch_before_any_work(
    tmp_path, sections, key, names, found
):
    params = write_params(tmp_path / "params.yaml", **sections)
    before = tree_digest(tmp_path)
    result = run_fetch(tmp_path, params)
    assert_one_line_error(result, f"{params}: key '{key}': {choices(names)}, found '{found}'")
    assert tree_digest(tmp_path) == before  # no data/raw, no data/downloads, nothing else
    assert not (tmp_path / "data").exists()


def test_every_error_of_the_params_file_is_reported_at_once_one_line_each(tmp_path):
    """Three mistakes in three sections: one run names them all, one line each."""
    params = write_params(
        tmp_path / "params.yaml",
        fetch={**TINY_FETCH, "source": "coco2018"},
        train={"epochs": "ten", "decoders": ["nic", "mrn"]},
    )
    before = tree_digest(tmp_path)
    result = run_fetch(tmp_path, params)
    first = assert_one_line_error(result, f"{params}: key 'fetch.source': {choices(SOURCE_NAMES)}")
    after = result.stderr.split(first, 1)[1].splitlines()[1:]
    assert after == [
        f"{params}: key 'train.epochs': expected int, found str 'ten'",
        f"{params}: key 'train.decoders[1]': {choices(DECODER_NAMES)}, found 'mrn'",
    ]
    assert tree_digest(tmp_path) == before


def test_unknown_name_stops_a_later_stage_too(tmp_path):
    """The shard stage (like every stage) checks the train section it does not use."""
    params = write_params(tmp_path / "params.yaml", train={"decoders": ["soft_atention"]})
    before = tree_digest(tmp_path)
    result = run_shard(params, REPO / "no-such-raw", tmp_path / "shards", cwd=tmp_path)
    assert_one_line_error(result, "key 'train.decoders[0]'", "found 'soft_atention'")
    assert tree_digest(tmp_path) == before


def test_params_file_not_utf8_is_one_line_with_the_byte_offset(tmp_path):
    params = tmp_path / "params.yaml"
    text = yaml.safe_dump({"fetch": TINY_FETCH}, sort_keys=False)
    prefix = b"# caf"
    params.write_bytes(prefix + b"\xe9 au lait\n" + text.encode())  # Latin-1 e-acute
    before = tree_digest(tmp_path)
    result = run_fetch(tmp_path, params)
    assert_one_line_error(result, f"{params}: byte {len(prefix)} (0xe9) is not UTF-8")
    assert tree_digest(tmp_path) == before


# ``captioning registry``: the repository's own params.yaml, the MLflow store of the test's.


def registry_cli(tmp_path: Path, *args: str, store: Path | None = None):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"} if store else {}
    return run_cli("registry", *args, "--params", str(REPO / "params.yaml"), cwd=tmp_path, env=env)


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory) -> Path:
    """A SQLite MLflow store holding the model ``captioner`` with no version yet."""
    import mlflow

    store = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    client.create_registered_model("captioner")
    return store


def test_promote_with_no_store_is_one_line_and_creates_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a repository without an mlflow.db
    result = registry_cli(tmp_path, "promote")
    assert_one_line_error(result, f"no MLflow store at {tmp_path / 'mlflow.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "7"], "captioner: no version '7'"),
        (["compare", "nightly", "champion"], "captioner: no version 'nightly'"),
        (["rollback", "3", "--reason", "r"], "captioner: no version '3'"),
        (["promote", "1", "--force"], "--force needs --reason"),
    ],
    ids=["missing-version", "unknown-alias", "rollback-missing", "force-without-reason"],
)
def test_registry_requests_that_cannot_be_done_are_one_line(
    tmp_path, empty_registry, args, message
):
    result = registry_cli(tmp_path, *args, store=empty_registry)
    assert_one_line_error(result, message)


def test_registry_command_checks_the_params_names(tmp_path, empty_registry):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"register": {"promote_metric": "cider"}}))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{empty_registry}"}
    result = run_cli("registry", "compare", "--params", str(params), cwd=tmp_path, env=env)
    assert_one_line_error(result, "key 'register.promote_metric'", "found 'cider'")
