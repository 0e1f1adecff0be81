"""Errors caused by the user's input or set-up: reported as one clear line, not a traceback."""


class CaptioningError(Exception):
    """Base of errors whose message alone tells the user what to fix."""


class UnknownNameError(CaptioningError, ValueError):
    """A name (source, encoder, decoder, ...) that its registry does not have; lists the choices."""
