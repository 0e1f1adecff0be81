"""Errors caused by the user's input or set-up: reported as one clear line, not a traceback.

``runtime.run`` (stages, flows, the ``captioning`` command) turns a CaptioningError into one
line and exit status 2; anything else is a bug and keeps its traceback. Each subclass also
inherits the builtin error it stands for, so ``except ValueError`` callers still catch it.
"""


class CaptioningError(Exception):
    """Base of errors whose message alone tells the user what to fix."""


class UnknownNameError(CaptioningError, ValueError):
    """A name (source, encoder, decoder, ...) that its registry does not have; lists the choices."""


class MissingFileError(CaptioningError, FileNotFoundError):
    """A file a step needs is not there; the message names it and what writes it."""


class BadInputError(CaptioningError, ValueError):
    """A file or argument whose content cannot be used; the message names it and the place."""
