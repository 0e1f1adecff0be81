"""Bounds on the work one caption request may ask for, checked in one place.

The served model (registry/pyfunc.py), ``captioning predict`` (through ``Captioner``) and the
evaluate stage check their decoding settings here, so a request cannot hold the machine:

- ``beam_size`` in 1..min(vocabulary size, ``CAPTIONING_MAX_BEAM``): a beam wider than the
  vocabulary buys nothing, and the deployer's cap bounds the work per image;
- ``max_length`` in 1..the longest caption the model was trained on (its vocabulary's
  ``max_length``): past it the model has never learnt to go on;
- at most ``CAPTIONING_MAX_ROWS`` images per request and ``CAPTIONING_MAX_PIXELS`` pixels per
  image (checked from the image header, before it is decoded).

The caps come from the environment of the process that serves or predicts, with safe defaults
(``RequestLimits``). Evaluation applies only the model's own bounds: it is the owner's run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from captioning.errors import BadInputError

ENV_MAX_BEAM = "CAPTIONING_MAX_BEAM"
ENV_MAX_ROWS = "CAPTIONING_MAX_ROWS"
ENV_MAX_PIXELS = "CAPTIONING_MAX_PIXELS"


class RequestError(BadInputError):
    """A request that asks for more work than allowed, or for something the model cannot do."""


@dataclass(frozen=True)
class RequestLimits:
    max_beam: int = 10  # beams per image
    max_rows: int = 64  # images per request
    max_pixels: int = 4096 * 4096  # per image: a 12-Mpixel phone photo fits, a 64-Mpixel scan not

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestLimits:
        """The defaults, overridden by CAPTIONING_MAX_BEAM / _ROWS / _PIXELS where set."""
        environ = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            max_beam=_positive(environ, ENV_MAX_BEAM, defaults.max_beam),
            max_rows=_positive(environ, ENV_MAX_ROWS, defaults.max_rows),
            max_pixels=_positive(environ, ENV_MAX_PIXELS, defaults.max_pixels),
        )


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise RequestError(f"environment variable {name}={text!r}: expected a whole number >= 1")
    return value


def check_decoding(
    beam_size: object,
    max_length: object,
    *,
    vocab_size: int,
    trained_length: int,
    max_beam: int | None = None,
    prefix: str = "",
) -> tuple[int, int]:
    """``(beam_size, max_length)`` if both are within the model's bounds (and ``max_beam``);
    else a RequestError naming the parameter (after ``prefix``, e.g. ``evaluate.``), the
    value and the allowed range."""
    beam_cap = vocab_size if max_beam is None else min(vocab_size, max_beam)
    why = f"the vocabulary's {vocab_size} tokens"
    if max_beam is not None and max_beam < vocab_size:
        why = f"{ENV_MAX_BEAM}={max_beam}"
    beam = _whole_in_range(f"{prefix}beam_size", beam_size, beam_cap, why)
    length = _whole_in_range(
        f"{prefix}max_length",
        max_length,
        trained_length,
        "the longest caption the model was trained on",
    )
    return beam, length


def _whole_in_range(name: str, value: object, upper: int, why: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{name}: expected a whole number in 1..{upper}, found {value!r}")
    if not 1 <= value <= upper:
        raise RequestError(f"{name}={value} is out of range: allowed 1..{upper} ({why})")
    return value


def check_rows(count: int, limits: RequestLimits) -> None:
    if count < 1:
        raise RequestError("the request holds no image: expected 1 or more rows")
    if count > limits.max_rows:
        raise RequestError(
            f"{count} images in one request: allowed 1..{limits.max_rows} ({ENV_MAX_ROWS})"
        )
