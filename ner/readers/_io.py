"""File helpers shared by the readers and writers: decoding, line and JSON record streams, atomic-ish writes.

Readers take a file a line at a time (:func:`iter_file_lines`), so a consumer that stops early has read only
the lines before its stopping point, and memory is bounded by the longest record, not by the file.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DatasetFormatError

_JSON_WS = " \t\n\r"


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


def iter_file_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 file, read one at a time, as :func:`iter_lines` gives those of its decoded text.

    A leading BOM is dropped; undecodable bytes are a :class:`DatasetFormatError` on their line.
    """
    lineno = offset = 0
    with Path(path).open("rb") as f:
        for raw in f:  # split on b"\n" only: UTF-8 multi-byte sequences never contain \n or \r bytes
            start, offset = offset, offset + len(raw)
            body = raw[:-1] if raw.endswith(b"\n") else raw
            if body.endswith(b"\r"):
                body = body[:-1]
            if start == 0 and body.startswith(codecs.BOM_UTF8):
                body, start = body[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            try:
                line = body.decode("utf-8")
            except UnicodeDecodeError as e:
                where = lineno + 1 + body.count(b"\r", 0, e.start)
                raise DatasetFormatError(path, where, f"not valid UTF-8 ({e.reason} at byte {start + e.start})") from None
            for part in line.split("\r"):
                lineno += 1
                yield lineno, part


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _JSON_WS:
        i += 1
    return i


class _JsonLines:
    """The unconsumed text of a JSON document that arrives a line at a time, with its position in the file."""

    def __init__(self, lines: Iterable[tuple[int, str]]) -> None:
        self._lines = iter(lines)
        self.text = ""
        self.line = 1
        """The line of ``text[0]``."""
        self.column = 0
        """The 0-based column of ``text[0]`` on its line."""
        self._started = False

    def more(self, chars: int = 1) -> bool:
        """Append the next lines (each after the line break that ends the text so far), at least ``chars``
        characters of them or all that are left; false when none were left."""
        added: list[str] = []
        size = 0
        for lineno, line in self._lines:
            if not self._started:
                self.line, self._started = lineno, True
            else:
                added.append("\n")
            added.append(line)
            size += len(line) + 1
            if size >= chars:
                break
        self.text += "".join(added)
        return bool(added)

    def consume(self, n: int) -> None:
        head = self.text[:n]
        newlines = head.count("\n")
        if newlines:
            self.line += newlines
            self.column = n - head.rindex("\n") - 1
        else:
            self.column += n
        self.text = self.text[n:]

    def skip_ws(self) -> bool:
        """Consume whitespace, reading lines as needed; true when a non-whitespace character is next."""
        while True:
            i = _skip_ws(self.text, 0)
            if i:
                self.consume(i)
            if self.text or not self.more():
                return bool(self.text)

    def decode(self, decoder: json.JSONDecoder, path: str | os.PathLike[str]) -> Any:
        """The JSON value that starts at ``text[0]``, reading lines until it is complete."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text)
            except json.JSONDecodeError as e:
                # An error at the end of the text read so far (or a string open at its end, which the next line
                # break turns into a final error) may only mean that the value goes on: read another line and
                # try again. Any other error is final. It is reported on the line where the value starts (for
                # JSON Lines, the broken line even when the parser only fails on the next one), with the
                # parser's exact position in the message.
                # The text read at least doubles before each new attempt, so a value of many lines is decoded
                # a few times, not once per line.
                unfinished = e.pos >= len(self.text.rstrip(_JSON_WS)) or e.msg.startswith("Unterminated string")
                if unfinished and self.more(len(self.text)):
                    continue
                column = e.colno + (self.column if e.lineno == 1 else 0)
                raise DatasetFormatError(
                    path, self.line, f"invalid JSON: {e.msg} (at line {self.line + e.lineno - 1}, column {column})"
                ) from None
            self.consume(end)
            return value


def iter_json_values(path: str | os.PathLike[str], lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for each JSON value of a file given as ``(line_number, line)`` pairs: JSON Lines,
    concatenated JSON values, or one array.

    ``line`` is the 1-based line on which the value starts. A top-level array yields its elements. Lines are
    read as the values need them: a value is yielded as soon as its last line has been read. Syntax errors raise
    :class:`DatasetFormatError`.
    """
    decoder = json.JSONDecoder()
    doc = _JsonLines(lines)
    if not doc.skip_ws():
        return
    if doc.text[0] != "[":
        while True:
            line = doc.line
            yield line, doc.decode(decoder, path)
            if not doc.skip_ws():
                return
    doc.consume(1)
    if doc.skip_ws() and doc.text[0] == "]":
        doc.consume(1)
    else:
        while True:
            line = doc.line
            yield line, doc.decode(decoder, path)
            if doc.skip_ws() and doc.text[0] == ",":
                doc.consume(1)
                doc.skip_ws()
                continue
            if doc.text[:1] == "]":
                doc.consume(1)
                break
            raise DatasetFormatError(path, doc.line, "expected ',' or ']' in the JSON array")
    if doc.skip_ws():
        raise DatasetFormatError(path, doc.line, "unexpected content after the JSON array")


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
