"""How the library says that an argument was wrong, so that every front end can name it its own way.

A notebook user sees ``batch must be at least 1, got 0``; the command line prints the same sentence with
the flag, ``--batch must be at least 1, got 0``, because :class:`InvalidArgument` carries the argument's
name apart from the sentence. The checks themselves are written once, in the library.
"""
from __future__ import annotations


class InvalidArgument(ValueError):
    """A bad value for the argument ``argument`` (a Python name such as ``valid_data``); ``detail`` says
    what is wrong with it and what to do, as the rest of a sentence that starts with the argument's name."""

    def __init__(self, argument: str, detail: str):
        super().__init__(f"{argument} {detail}")
        self.argument = argument
        self.detail = detail


def at_least(argument: str, value: float | None, low: float) -> None:
    """Refuse ``value < low`` (None means "not given" and passes)."""
    if value is not None and value < low:
        raise InvalidArgument(argument, f"must be at least {low}, got {value}")


def positive(argument: str, value: float | None) -> None:
    """Refuse a value that is not a finite number > 0 (NaN and infinity included; None means "not given")."""
    if value is not None and not 0 < value < float("inf"):
        raise InvalidArgument(argument, f"must be a positive finite number, got {value:g}")


class RunError(RuntimeError):
    """An expected way for a run to fail (a folder in use, a checkpoint that does not match, a loss that went
    to NaN); the message names what happened and what to do, and the command line prints it as one line."""
