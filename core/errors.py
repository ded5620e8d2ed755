"""Errors that carry a message fit for a user: the CLI prints them on one line, never a traceback."""

from __future__ import annotations

from pathlib import Path


class LogTriageError(Exception):
    """Base of every error LogTriage reports to a user without a traceback."""


class DataError(LogTriageError):
    """Bad input data: names the file and, where known, the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(f"{where}{message}")


class LimitError(DataError):
    """Input over a configured size or work limit (the API answers 413 with this message)."""


class ModelError(LogTriageError):
    """A model folder that cannot be loaded or used."""


class BackendUnavailable(ModelError):
    """A model server that cannot answer now (refused, timed out, 5xx, 429): the same call may succeed later."""
