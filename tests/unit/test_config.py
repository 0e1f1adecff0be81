from pathlib import Path

import pytest
import yaml

from captioning.config import ConfigError, Params, TrainConfig, flatten, load_params, load_section

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_load_and_match_defaults_types():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.decoders == ["soft_attention"]
    assert params.features.encoder == "efficientnet_lite0"
    assert isinstance(params.train.lr, float)


def test_unknown_key_names_file_key_and_choices(tmp_path):
    path = write(tmp_path, {"train": {"epochz": 3}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    assert "'train.epochz'" in message
    assert "epochs" in message  # the expected keys are listed


def test_unknown_nested_key(tmp_path):
    path = write(tmp_path, {"train": {"model": {"hiden_dim": 3}}})
    with pytest.raises(ConfigError, match=r"train\.model\.hiden_dim"):
        load_params(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="'trian'"):
        load_params(write(tmp_path, {"trian": {}}))


def test_wrong_type_names_expected_and_found(tmp_path):
    path = write(tmp_path, {"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message and "'train.epochs'" in message
    assert "expected int" in message and "found str 'ten'" in message


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="expected int, found bool"):
        load_params(write(tmp_path, {"train": {"epochs": True}}))


def test_int_accepted_for_float(tmp_path):
    assert load_params(write(tmp_path, {"train": {"lr": 1}})).train.lr == 1.0


def test_impossible_value(tmp_path):
    path = write(tmp_path, {"train": {"model": {"dropout": 1.5}}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "'train.model.dropout'" in str(err.value)
    assert "in [0, 1)" in str(err.value) and "1.5" in str(err.value)


def test_section_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="'train': expected a mapping"):
        load_params(write(tmp_path, {"train": [1, 2]}))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_configs_are_frozen(tmp_path):
    cfg = load_section(write(tmp_path, {}), "train", TrainConfig)
    with pytest.raises(AttributeError):
        cfg.epochs = 3  # type: ignore[misc]


def test_flatten_uses_dotted_keys():
    flat = flatten(TrainConfig(), "train.")
    assert flat["train.model.hidden_dim"] == 256
    assert flat["train.epochs"] == TrainConfig().epochs


def test_weights_path_needs_pretrained(tmp_path):
    path = write(tmp_path, {"features": {"pretrained": False, "weights_path": "w.pth"}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "'features.weights_path'" in str(err.value) and "'w.pth'" in str(err.value)
    params = load_params(write(tmp_path, {"features": {"weights_path": None}}))
    assert params.features.weights_path is None


def test_fine_tune_section(tmp_path):
    params = load_params(REPO / "params.yaml")
    assert params.train.fine_tune.enabled is False
    path = write(tmp_path, {"train": {"fine_tune": {"enabled": True, "blocks": 0}}})
    with pytest.raises(ConfigError, match=r"'train.fine_tune.blocks': expected >= 1, or -1"):
        load_params(path)


def test_shard_params_are_checked(tmp_path):
    params = load_params(write(tmp_path, {"shard": {"workers": 2, "max_side": 256}}))
    assert (params.shard.workers, params.shard.max_side, params.shard.jpeg_quality) == (2, 256, 95)
    with pytest.raises(ConfigError, match=r"'shard.workers': expected >= 0"):
        load_params(write(tmp_path, {"shard": {"workers": -1}}))
    with pytest.raises(ConfigError, match=r"'shard.max_side': expected 0 \(keep\) or >= 16"):
        load_params(write(tmp_path, {"shard": {"max_side": 8}}))


def test_fetch_sources_params(tmp_path):
    sha = "sha256:" + "ab" * 32
    params = load_params(
        write(
            tmp_path,
            {
                "fetch": {
                    "source": "coco2014",
                    "mirror": "http://mirror.internal/datasets",
                    "coco": {"karpathy": "/d/dataset_coco.json", "checksums": {"val2014.zip": sha}},
                    "flickr8k": {"files": ["/d/Flickr8k_Dataset.zip"], "layout": "original"},
                }
            },
        )
    )
    assert params.fetch.coco.checksums == {"val2014.zip": sha}
    assert params.fetch.flickr8k.files == ["/d/Flickr8k_Dataset.zip"]
    assert params.fetch.coco.split == "karpathy" and params.fetch.flickr30k.files == []


@pytest.mark.parametrize(
    "fetch,message",
    [
        ({"coco": {"checksums": {"a.zip": "12345"}}}, r"'fetch.coco.checksums': expected 'sha256"),
        ({"coco": {"checksums": ["a.zip"]}}, r"'fetch.coco.checksums': expected a mapping"),
        ({"coco": {"checksums": {"a.zip": 5}}}, r"'fetch.coco.checksums.a.zip': expected str"),
        ({"coco": {"split": "random"}}, r"'fetch.coco.split': expected 'karpathy' or 'official'"),
        ({"flickr8k": {"layout": "zip"}}, r"'fetch.flickr8k.layout': expected auto, kaggle"),
        ({"flickr30k": {"files": "a.zip"}}, r"'fetch.flickr30k.files': expected a list"),
    ],
)
def test_fetch_sources_params_are_checked(tmp_path, fetch, message):
    with pytest.raises(ConfigError, match=message):
        load_params(write(tmp_path, {"fetch": fetch}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fetch": {"source": "coco2018"}}, r"'fetch\.source': expected one of \['captcha', "),
        ({"features": {"encoder": "resnet102"}}, r"'features\.encoder': expected one of \["),
        ({"train": {"decoders": ["nic", "soft_atention"]}}, r"'train\.decoders\[1\]': .*'nic'"),
        ({"register": {"promote_metric": "cider"}}, r"'register\.promote_metric': .*'CIDEr'"),
        ({"register": {"decoding": "sample"}}, r"'register\.decoding': .*\['beam', 'greedy'\]"),
    ],
)
def test_unknown_names_list_the_choices(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_params(write(tmp_path, data))


def test_a_config_built_in_code_refuses_an_unknown_name_as_a_config_error():
    """e.g. a list of decoders made in code: one line, not a bug."""
    import dataclasses

    with pytest.raises(ConfigError, match=r"^key 'decoders\[0\]': expected one of \[.*'nick'$"):
        dataclasses.replace(TrainConfig(), decoders=["nick"])


def test_the_decoder_of_a_run_is_not_a_params_key(tmp_path):
    """The train stage names it (--decoder); train.decoders lists the DAG's."""
    with pytest.raises(ConfigError, match=r"unknown key 'train\.decoder'; expected one of \["):
        load_params(write(tmp_path, {"train": {"decoder": "nic"}}))


def test_params_not_utf8_names_the_file_and_byte(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"train:\n  epochs: 3  # \xff\n")
    with pytest.raises(ConfigError, match=rf"^{path}: byte 22 \(0xff\) is not UTF-8; expected"):
        load_params(path)
