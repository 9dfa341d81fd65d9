"""Errors that end a command with a one-line message and a documented exit code."""

from __future__ import annotations


class BisectLiteError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""

    exit_code = 2


class InputError(BisectLiteError):
    """Bad user input: a missing file, a corrupt model, an unknown tensor (exit 2)."""

    exit_code = 2


class EngineUnavailable(BisectLiteError):
    """An engine cannot run here, or crashed in a way that stops the job (exit 3)."""

    exit_code = 3
