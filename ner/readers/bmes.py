"""Character-level BMES: one ``char TAG`` per line, a blank line between sentences.

Tags are ``B-X`` (begin), ``M-X`` (middle; ``I-X`` is accepted as a synonym), ``E-X`` (end), ``S-X`` (single)
and ``O``. The text of a sentence is its characters concatenated, without separators. The character may be
a space (the line is then ``"  TAG"``); a first column of several characters is kept as is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

from ..types import Example
from ._io import default_id, iter_file_lines, write_lines
from .conll import Tag, entities_to_spans, sentence_example, token_offsets
from .errors import DatasetFormatError

# The token is everything before the last whitespace-separated field; lazy, so a single space is a token.
_LINE = re.compile(r"^(.+?)[ \t]+(\S+)[ \t]*$")


def parse_bmes_tag(tag: str) -> Tag:
    """``(prefix, label)`` of a BMES tag, ``M``/``I`` mapped to ``I``; :class:`ValueError` if invalid."""
    if tag == "O":
        return ("O", "")
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BMIES":
        return ("I" if tag[0] == "M" else tag[0], tag[2:])
    raise ValueError(f"invalid tag {tag!r} (expected O or B-X/M-X/E-X/S-X)")


def parse_bmes_line(line: str) -> tuple[str, str]:
    """``(token, tag)`` of a non-blank line; :class:`ValueError` when there is no tag column."""
    m = _LINE.match(line)
    if m is None:
        raise ValueError(f"expected '<char> <tag>', got {line!r}")
    token, tag = m.groups()
    if len(token) > 1 and not token.isspace():
        token = token.split()[0]  # extra middle columns: the token is the first one
    return token, tag


def read_bmes(path: str | os.PathLike[str]) -> list[Example]:
    """Read a BMES file; ids are ``<file name>:<sentence index>`` (0-based)."""
    return list(iter_bmes(path))


def iter_bmes(path: str | os.PathLike[str]) -> Iterator[Example]:
    """The examples of :func:`read_bmes`, read one sentence at a time."""
    index = 0
    tokens: list[str] = []
    tags: list[Tag] = []
    for lineno, line in iter_file_lines(path):
        if not line.strip():
            if tokens:
                yield sentence_example(tokens, tags, "", default_id(path, index))
                index, tokens, tags = index + 1, [], []
            continue
        try:
            token, tag = parse_bmes_line(line)
            tags.append(parse_bmes_tag(tag))
        except ValueError as e:
            raise DatasetFormatError(path, lineno, str(e)) from None
        tokens.append(token)
    if tokens:
        yield sentence_example(tokens, tags, "", default_id(path, index))


def bmes_tags(example: Example) -> list[str]:
    """One BMES tag per character of the example's text (entities must not overlap)."""
    chars = list(example.text)
    tags = ["O"] * len(chars)
    prev_end = -1
    for start, end, label in entities_to_spans(token_offsets(chars, ""), example.entities):
        if start < prev_end:
            raise ValueError(f"overlapping entities at character {start} cannot be tagged")
        if end - start == 1:
            tags[start] = f"S-{label}"
        else:
            tags[start] = f"B-{label}"
            for i in range(start + 1, end - 1):
                tags[i] = f"M-{label}"
            tags[end - 1] = f"E-{label}"
        prev_end = end
    return tags


def write_bmes(examples: Iterable[Example], path: str | os.PathLike[str]) -> None:
    """Write one ``char TAG`` line per character, a blank line after each sentence.

    Raises :class:`ValueError` for an empty text, a text containing a line break, or overlapping entities.
    """
    write_lines(path, bmes_lines(examples))


def bmes_lines(examples: Iterable[Example]) -> Iterator[str]:
    """The lines :func:`write_bmes` writes."""
    for n, ex in enumerate(examples):
        name = ex.id or n
        if not ex.text:
            raise ValueError(f"example {name}: empty text cannot be written as BMES")
        if "\n" in ex.text or "\r" in ex.text:
            raise ValueError(f"example {name}: a line break in the text cannot be written as BMES")
        try:
            tags = bmes_tags(ex)
        except ValueError as e:
            raise ValueError(f"example {name}: {e}") from None
        for ch, tag in zip(ex.text, tags, strict=True):
            yield f"{ch} {tag}"
        yield ""
