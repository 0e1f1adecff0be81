import dataclasses
from pathlib import Path

import pytest
import yaml

from captioning import config
from captioning.config import (
    CaptchaConfig,
    ConfigError,
    DecoderConfig,
    Params,
    TrainConfig,
    flatten,
    flatten_dict,
    load_params,
    load_section,
    saved_decoder_config,
)

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


@pytest.mark.parametrize(
    ("text", "value"), [("2e-05", 2e-05), ("1E4", 1e4), ("+3.5e-1", 0.35), ("1_000", 1000)]
)
def test_an_exponent_without_a_dot_is_a_float_as_dvc_writes_it(tmp_path, text, value):
    """``dvc exp run -S scst.lr=0.00002`` writes ``lr: 2e-05`` (YAML 1.2, ruamel), which YAML
    1.1's resolver would read as a string."""
    path = tmp_path / "params.yaml"
    path.write_text(f"scst:\n  lr: {text}\n")
    assert load_params(path).scst.lr == value


def test_a_quoted_exponent_stays_a_string_and_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text('scst:\n  lr: "2e-05"\n')
    with pytest.raises(ConfigError, match="scst.lr.*expected float, found str"):
        load_params(path)


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
        ({"coco": {"split": "random"}}, r"'fetch.coco.split': expected one of \['karpathy', 'off"),
        ({"flickr8k": {"layout": "zip"}}, r"'fetch.flickr8k.layout': expected one of \['auto', "),
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


# params.yaml is the one source of defaults: the dataclasses' defaults are its values.

# Fields params.yaml leaves out: the CAPTCHA set (pipelines/captcha/params.yaml gives it, checked
# below), the fine-tuning time budget, and the one decoder a training run builds.
NOT_IN_PARAMS_YAML = {"train.max_minutes", "train.decoder"}


def test_every_default_is_params_yaml_value():
    given = flatten_dict(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    defaults = flatten(Params())
    differ = {key: (defaults.get(key), value) for key, value in given.items()}
    assert {k: v for k, v in differ.items() if v[0] != v[1]} == {}  # key: (default, params.yaml)
    assert set(given) <= set(defaults)
    left_out = {key for key in defaults if key not in given and not key.startswith("fetch.captcha")}
    assert left_out <= NOT_IN_PARAMS_YAML


def test_captcha_defaults_are_the_captcha_pipeline_values():
    raw = yaml.safe_load((REPO / "pipelines/captcha/params.yaml").read_text(encoding="utf-8"))
    assert dataclasses.asdict(CaptchaConfig()) == raw["fetch"]["captcha"]


def test_a_model_saved_before_a_decoder_key_existed_loads_as_it_was_built():
    saved = dataclasses.asdict(DecoderConfig())
    del saved["attend_with_word"]  # config.json written before the key existed
    assert saved_decoder_config(saved, path="config.json").attend_with_word is False
    saved["attend_with_word"] = True
    assert saved_decoder_config(saved, path="config.json").attend_with_word is True
    with pytest.raises(ConfigError, match=r"^m/config.json: key 'train.model.cell': expected one"):
        saved_decoder_config({**saved, "cell": "rnn"}, path="m/config.json")


# Every error of a params file at once, one line each.


def test_every_error_of_the_file_is_reported_one_line_each(tmp_path):
    path = write(
        tmp_path,
        {
            "fetch": {"source": "coco2018", "shapes": {"n_val": 0, "image_size": 8}},
            "vocab": {"min_fre": 1},
            "train": {"epochs": "ten", "lr": -1, "decoders": ["nic", "mrn", "nick"]},
            "register": {"gate": {"resamples": 1.5}},
        },
    )
    with pytest.raises(ConfigError) as err:
        load_params(path)
    lines = str(err.value).splitlines()
    assert sorted(lines) == sorted(
        [
            f"{path}: key 'fetch.shapes.n_train/n_val/n_test': expected >= 1, found 12000",
            f"{path}: key 'fetch.shapes.image_size': expected >= 64, found 8",
            f"{path}: key 'fetch.source': expected one of {sorted(config.SOURCE_NAMES)}, "
            "found 'coco2018'",
            f"{path}: unknown key 'vocab.min_fre'; expected one of ['level', 'max_length', 'min_freq']",
            f"{path}: key 'train.epochs': expected int, found str 'ten'",
            f"{path}: key 'train.decoders[1]': expected one of {sorted(config.DECODER_NAMES)}, "
            "found 'mrn'",
            f"{path}: key 'train.decoders[2]': expected one of {sorted(config.DECODER_NAMES)}, "
            "found 'nick'",
            f"{path}: key 'train.lr': expected > 0, found -1.0",
            f"{path}: key 'register.gate.resamples': expected int, found float 1.5",
        ]
    )


def test_a_value_in_error_is_not_reported_again_by_its_section_checks(tmp_path):
    """evaluate.n_best is checked against beam_size; a beam_size of the wrong type is one error."""
    path = write(tmp_path, {"evaluate": {"beam_size": "3", "n_best": 2}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: key 'evaluate.beam_size': expected int, found str '3'"


def test_a_config_built_in_code_reports_each_impossible_value_on_its_line():
    with pytest.raises(ConfigError) as err:
        DecoderConfig(dropout=1.0, cell="rnn", embed_dim=0)
    assert str(err.value).splitlines() == [
        f"key 'cell': expected one of {sorted(config.CELL_NAMES)}, found 'rnn'",
        "key 'embed_dim': expected >= 1, found 0",
        "key 'dropout': expected in [0, 1), found 1.0",
    ]


def test_a_choice_reads_its_tuple_when_it_checks(monkeypatch):
    """A test decoder added to DECODER_NAMES (tests/integration/ddp_decoder.py) is accepted."""
    with pytest.raises(ConfigError):
        TrainConfig(decoders=["extra"])
    monkeypatch.setattr(config, "DECODER_NAMES", (*config.DECODER_NAMES, "extra"))
    assert TrainConfig(decoders=["extra"]).decoders == ["extra"]
