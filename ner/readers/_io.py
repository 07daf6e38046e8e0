"""File helpers shared by the readers and writers: decoding, JSON record streams, atomic-ish writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DatasetFormatError

_JSON_WS = " \t\n\r"


def read_text(path: str | os.PathLike[str]) -> str:
    """The file decoded as UTF-8 (a leading BOM is dropped); undecodable bytes are a format error."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetFormatError(path, line, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` pairs, 1-based, without line terminators.

    Only ``\\n``, ``\\r\\n`` and ``\\r`` end a line (unlike :meth:`str.splitlines`, which also splits on
    characters such as U+2028 that may legitimately occur inside a token).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return enumerate(lines, start=1)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _JSON_WS:
        i += 1
    return i


class _LineCounter:
    """Maps increasing character offsets of a text to 1-based line numbers in linear total time."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1

    def line_at(self, offset: int) -> int:
        if offset < self._pos:  # not expected, but stay correct
            self._pos, self._line = 0, 1
        self._line += self._text.count("\n", self._pos, offset)
        self._pos = offset
        return self._line


def iter_json_records(path: str | os.PathLike[str], text: str) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for each JSON value of a file: JSON Lines, concatenated JSON values, or one array.

    ``line`` is the 1-based line on which the value starts. A top-level array yields its elements.
    Syntax errors raise :class:`DatasetFormatError` at the line of the error.
    """
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    n = len(text)

    def decode(i: int) -> tuple[Any, int]:
        # Errors are reported on the line where the record starts (for JSON Lines, the broken line even when
        # the parser only fails on the next one), with the parser's exact position in the message.
        try:
            return decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(
                path, lines.line_at(i), f"invalid JSON: {e.msg} (at line {e.lineno}, column {e.colno})"
            ) from None

    i = _skip_ws(text, 0)
    if i < n and text[i] == "[":
        i = _skip_ws(text, i + 1)
        if i < n and text[i] == "]":
            i = _skip_ws(text, i + 1)
        else:
            while True:
                value, end = decode(i)
                yield lines.line_at(i), value
                i = _skip_ws(text, end)
                if i < n and text[i] == ",":
                    i = _skip_ws(text, i + 1)
                    continue
                if i < n and text[i] == "]":
                    i = _skip_ws(text, i + 1)
                    break
                raise DatasetFormatError(path, lines.line_at(min(i, n)), "expected ',' or ']' in the JSON array")
        if i < n:
            raise DatasetFormatError(path, lines.line_at(i), "unexpected content after the JSON array")
        return
    while i < n:
        value, end = decode(i)
        yield lines.line_at(i), value
        i = _skip_ws(text, end)


def write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> None:
    """Write ``lines`` (each without terminator) as UTF-8 with ``\\n`` endings, creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def default_id(path: str | os.PathLike[str], index: int) -> str:
    """Id given to the ``index``-th (0-based) example of a file whose records carry none: ``name:index``."""
    return f"{Path(path).name}:{index}"
