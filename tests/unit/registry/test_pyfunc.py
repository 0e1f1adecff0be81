"""The pyfunc model's request bounds and errors, without a server (tests/integration/test_serving.py
runs the same through `mlflow models serve`)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image
from tests.unit.test_cli import make_tiny_model, write_jpeg

from captioning.decoding.limits import RequestError, RequestLimits, check_decoding
from captioning.registry.pyfunc import ARTIFACT_KEY, BadRequest, CaptionerModel


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> CaptionerModel:
    root = tmp_path_factory.mktemp("pyfunc")
    model_dir = make_tiny_model(root / "model")  # vocabulary of 7 tokens, max_length 24
    wrapped = CaptionerModel()
    wrapped.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(model_dir)}))
    wrapped.captioner.limits = RequestLimits(max_beam=5, max_rows=3, max_pixels=100 * 100)
    return wrapped


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_jpeg(tmp_path_factory.mktemp("img") / "a.jpg", seed=0)  # 64 x 48
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def frame(*values: str) -> pd.DataFrame:
    return pd.DataFrame({"image": list(values)})


def refused(model: CaptionerModel, data: pd.DataFrame, params: dict | None = None) -> str:
    with pytest.raises(BadRequest) as err:
        model.predict(None, data, params)
    message = err.value.message
    assert isinstance(err.value, MlflowException) and err.value.get_http_status_code() == 400
    assert "\n" not in message
    return message


def test_a_request_in_bounds_is_captioned(model, image):
    out = model.predict(None, frame(image, image), {"beam_size": 5, "max_length": 3})
    assert list(out.columns) == ["caption", "score"] and len(out) == 2


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"beam_size": 100000},
            "beam_size=100000 is out of range: allowed 1..5 (CAPTIONING_MAX_BEAM=5)",
        ),
        ({"beam_size": 0}, "beam_size=0 is out of range: allowed 1..5"),
        ({"max_length": 25}, "max_length=25 is out of range: allowed 1..24 (the longest caption"),
        ({"max_length": 0}, "max_length=0 is out of range"),
        ({"beam_size": 2.5}, "beam_size: expected a whole number in 1..5, found 2.5"),
    ],
)
def test_out_of_range_params_are_refused_in_one_line(model, image, params, expected):
    assert expected in refused(model, frame(image), params)


def test_rows_and_pixels_are_bounded(model, image):
    assert "4 images in one request: allowed 1..3 (CAPTIONING_MAX_ROWS)" in refused(
        model, frame(*[image] * 4)
    )
    buffer = io.BytesIO()
    Image.new("RGB", (101, 100)).save(buffer, "PNG")
    big = base64.b64encode(buffer.getvalue()).decode()
    message = refused(model, frame(image, big))
    assert message.startswith("image row 1: 101x100 pixels, more than the 10,000 allowed")
    assert message.endswith("(CAPTIONING_MAX_PIXELS)")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not base64!", "image row 0: not valid base64"),
        (base64.b64encode(b"<html></html>").decode(), "image row 0: not a decodable image"),
    ],
)
def test_bad_rows_are_refused_in_one_line(model, value, expected):
    assert refused(model, frame(value)).startswith(expected)


def test_a_missing_image_column_is_named(model, image):
    message = refused(model, pd.DataFrame({"picture": [image]}))
    assert message == "expected a column 'image' of base64 images; found none"


def test_mlflow_cannot_rewrite_the_message():
    error = BadRequest("beam_size=0 is out of range")
    error.message = "Failed to predict data '<the whole input>'. \nError: " + error.message
    assert error.message == "beam_size=0 is out of range"
    assert '"message": "beam_size=0 is out of range"' in error.serialize_as_json()


def test_limits_from_the_environment():
    limits = RequestLimits.from_env({"CAPTIONING_MAX_BEAM": "4", "CAPTIONING_MAX_ROWS": " 2 "})
    assert (limits.max_beam, limits.max_rows, limits.max_pixels) == (
        4,
        2,
        RequestLimits().max_pixels,
    )
    with pytest.raises(RequestError, match="CAPTIONING_MAX_PIXELS='lots': expected a whole number"):
        RequestLimits.from_env({"CAPTIONING_MAX_PIXELS": "lots"})


def test_a_beam_is_bounded_by_the_vocabulary_without_a_cap():
    assert check_decoding(7, 3, vocab_size=7, trained_length=3) == (7, 3)
    with pytest.raises(RequestError, match=r"allowed 1\.\.7 \(the vocabulary's 7 tokens\)"):
        check_decoding(8, 3, vocab_size=7, trained_length=3)
    with pytest.raises(RequestError, match="expected a whole number"):
        check_decoding(True, 3, vocab_size=7, trained_length=3)
