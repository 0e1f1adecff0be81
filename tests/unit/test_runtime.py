"""The one error handler (runtime.exit_status): an expected failure is one line and exit 2; a
bug keeps its traceback. Every expected error class is a CaptioningError and still the builtin
it used to be."""

from __future__ import annotations

import logging

import pytest

from captioning import runtime
from captioning.errors import CaptioningError


def test_an_expected_failure_is_one_logged_line_and_exit_2(caplog):
    def main():
        raise CaptioningError("params.yaml: key 'x': expected one of ['a'], found 'b'")

    with caplog.at_level(logging.ERROR):
        assert runtime.exit_status(main) == runtime.EXIT_BAD_INPUT == 2
    assert [r.getMessage() for r in caplog.records] == [
        "params.yaml: key 'x': expected one of ['a'], found 'b'"
    ]


def test_a_bug_is_not_swallowed():
    def main():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        runtime.exit_status(main)
    with pytest.raises(ValueError, match="a bug"):
        runtime.run(main)


def test_the_status_main_returns_is_the_exit_status():
    assert runtime.exit_status(lambda: 1) == 1
    assert runtime.exit_status(lambda: {"fetch": "ran"}) == 0  # a flow's outcome: success


def test_a_bug_in_a_registry_command_keeps_its_traceback(tmp_path, monkeypatch):
    """`captioning registry` used to catch ValueError, so a bug printed as one line, exit 2."""
    from captioning import cli
    from captioning.registry import review

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "mlflow.db").touch()

    def broken_compare(*args, **kwargs):
        raise ValueError("a bug in compare")

    monkeypatch.setattr(review, "compare", broken_compare)
    with pytest.raises(ValueError, match="a bug in compare"):
        cli.main(["registry", "compare", "2", "1", "--name", "m"])


@pytest.mark.parametrize(
    ("module", "name", "builtin"),
    [
        ("captioning.registry.review", "RegistryError", RuntimeError),
        ("captioning.registry.per_image", "NotComparable", ValueError),
        ("captioning.orchestration", "StageFailed", RuntimeError),
        ("captioning.errors", "UnknownNameError", ValueError),
        ("captioning.errors", "BadInputError", ValueError),
        ("captioning.errors", "MissingFileError", FileNotFoundError),
    ],
)
def test_expected_errors_are_captioning_errors_and_their_old_builtin(module, name, builtin):
    import importlib

    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, CaptioningError) and issubclass(cls, builtin)
