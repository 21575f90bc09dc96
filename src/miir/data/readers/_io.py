"""Shared line-level input helpers for readers: decoding, gzip, and errors that name the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from miir.errors import DataError


def iter_lines(
    path: str | Path, *, encoding: str = "utf-8", skip_blank: bool = True
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based, without the newline) from a plain or .gz file.

    A byte that is not valid in ``encoding`` raises :class:`DataError` naming the file and line.
    An empty file (no non-blank line) raises :class:`DataError` too.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=path)
    opener = gzip.open if path.suffix == ".gz" else open
    seen = False
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"not valid {encoding}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}",
                    file=path,
                    line=lineno,
                ) from None
            text = text.rstrip("\r\n")
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            blank = not text.strip()
            if skip_blank and blank:
                continue
            seen = seen or not blank
            yield lineno, text
    if not seen:
        raise DataError("empty file", file=path)


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` from a JSON-lines file; each line must be a JSON object."""
    for lineno, text in iter_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"malformed JSON: {exc.msg} (column {exc.colno})", file=path, line=lineno
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"expected a JSON object, got {type(obj).__name__}", file=path, line=lineno
            )
        yield lineno, obj


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
