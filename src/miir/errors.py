"""Errors that point at the input that caused them."""

from __future__ import annotations

from pathlib import Path


class MiirError(Exception):
    """Base class of every error miir raises on purpose."""


class DataError(MiirError, ValueError):
    """Bad input data: names the file and, where known, the line and the field.

    The message reads ``file:line: [field] message`` so that a user can jump to the spot.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.file is not None:
            where = self.file if line is None else f"{self.file}:{line}"
        if field is not None:
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(MiirError, ValueError):
    """An invalid configuration value or an unknown name."""
