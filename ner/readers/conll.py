"""CoNLL columns: token first, NER tag last, whitespace separated; blank lines between sentences.

``-DOCSTART-`` lines separate documents and are not sentences. The text of a sentence is its tokens joined by
single spaces; entity offsets are character offsets into that text.

Tagging schemes (``scheme=``):

* ``iob1`` — ``I-X`` starts an entity unless it follows a token of type X; ``B-X`` only begins an entity that
  directly follows another X entity (the original CoNLL-2003 files).
* ``iob2`` (alias ``bio``) — every entity begins with ``B-X``.
* ``bioes`` (alias ``iobes``) — ``B-X``, ``I-X``, ``E-X`` (last token), ``S-X`` (single token).
* ``auto`` (reading only) — see :func:`detect_scheme`.

Decoding is lenient in the conlleval / seqeval (default mode) way: an ``I-X`` or ``E-X`` that cannot continue
an open X entity starts a new one, so every scheme decodes with the same rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..types import Entity, Example
from ._io import default_id, iter_file_lines, write_lines
from .errors import DatasetFormatError

SCHEMES: tuple[str, ...] = ("iob1", "iob2", "bioes")
"""Canonical tagging schemes; ``bio`` and ``iobes`` are accepted as aliases."""

_ALIASES = {"iob1": "iob1", "iob2": "iob2", "bio": "iob2", "bioes": "bioes", "iobes": "bioes"}
DOCSTART = "-DOCSTART-"

Tag = tuple[str, str]
"""A parsed tag: ``(prefix, label)``; ``("O", "")`` outside entities."""

Span = tuple[int, int, str]
"""A token span ``(first_token, end_token_exclusive, label)``."""


def normalize_scheme(scheme: str, *, allow_auto: bool = False) -> str:
    """The canonical name of a tagging scheme (``bio`` -> ``iob2``, ``iobes`` -> ``bioes``)."""
    key = scheme.lower()
    if allow_auto and key == "auto":
        return "auto"
    if key not in _ALIASES:
        allowed = ", ".join(sorted(_ALIASES) + (["auto"] if allow_auto else []))
        raise ValueError(f"unknown tagging scheme {scheme!r} (expected one of: {allowed})")
    return _ALIASES[key]


def parse_tag(tag: str, prefixes: str = "BIES") -> Tag:
    """Split ``B-X``-style tags into ``(prefix, label)``; ``O`` gives ``("O", "")``.

    Raises :class:`ValueError` for anything else (including a prefix not in ``prefixes``).
    """
    if tag == "O":
        return ("O", "")
    if len(tag) > 2 and tag[1] == "-" and tag[0] in prefixes:
        return (tag[0], tag[2:])
    expected = "/".join(f"{p}-X" for p in prefixes)
    raise ValueError(f"invalid tag {tag!r} (expected O or {expected})")


def decode_tags(tags: Sequence[Tag]) -> list[Span]:
    """Token spans of parsed tags (any scheme; prefixes ``B``, ``I``, ``E``, ``S``).

    ``B``/``S`` always start an entity; ``I``/``E`` continue an open entity of the same label, else start one;
    ``E``/``S`` close the entity they end.
    """
    spans: list[Span] = []
    start, label = -1, ""  # the open entity, if start >= 0
    for i, (prefix, lab) in enumerate(tags):
        if prefix == "O":
            if start >= 0:
                spans.append((start, i, label))
                start = -1
            continue
        if not (start >= 0 and lab == label and prefix in "IE"):
            if start >= 0:
                spans.append((start, i, label))
            start, label = i, lab
        if prefix in "ES":
            spans.append((start, i + 1, label))
            start = -1
    if start >= 0:
        spans.append((start, len(tags), label))
    return spans


def tags_to_spans(tags: Sequence[str]) -> list[Span]:
    """Token spans of a sequence of string tags (``O``, ``B-X``, ``I-X``, ``E-X``, ``S-X``)."""
    return decode_tags([parse_tag(t) for t in tags])


def detect_scheme(sentences: Iterable[Sequence[Tag]]) -> str:
    """Guess the scheme of tagged sentences.

    Any ``E-``/``S-`` tag -> ``bioes``; else any entity that starts with ``I-`` (an ``I-X`` at the start of a
    sentence, after ``O`` or after another label) -> ``iob1``; else ``iob2``.
    """
    iob1 = False
    for tags in sentences:
        prev_label = ""
        for prefix, label in tags:
            if prefix in "ES":
                return "bioes"
            if prefix == "I" and label != prev_label:
                iob1 = True
            prev_label = label  # "" after O
    return "iob1" if iob1 else "iob2"


def token_offsets(tokens: Sequence[str], sep: str = " ") -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of ``tokens`` in ``sep.join(tokens)``."""
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append((pos, pos + len(tok)))
        pos += len(tok) + len(sep)
    return offsets


def entities_to_spans(tokens_offsets: Sequence[tuple[int, int]], entities: Iterable[Entity]) -> list[Span]:
    """Token spans of entities whose boundaries fall on token boundaries (else :class:`ValueError`)."""
    by_start = {s: i for i, (s, _) in enumerate(tokens_offsets)}
    by_end = {e: i for i, (_, e) in enumerate(tokens_offsets)}
    spans = []
    for ent in entities:
        first, last = by_start.get(ent.start), by_end.get(ent.end)
        if first is None or last is None or last < first:
            raise ValueError(f"entity {ent.text!r} [{ent.start}, {ent.end}) does not align with token boundaries")
        spans.append((first, last + 1, ent.label))
    return sorted(spans)


def spans_to_tags(n_tokens: int, spans: Sequence[Span], scheme: str = "iob2") -> list[str]:
    """Tags of ``n_tokens`` tokens for non-overlapping token ``spans`` in ``scheme``."""
    scheme = normalize_scheme(scheme)
    tags = ["O"] * n_tokens
    prev_end, prev_label = -1, ""
    for start, end, label in sorted(spans):
        if not 0 <= start < end <= n_tokens:
            raise ValueError(f"token span [{start}, {end}) outside a sentence of {n_tokens} tokens")
        if start < prev_end:
            raise ValueError(f"overlapping entities at token {start} cannot be tagged")
        if scheme == "bioes" and end - start == 1:
            tags[start] = f"S-{label}"
        else:
            begin = "I" if scheme == "iob1" and not (start == prev_end and label == prev_label) else "B"
            tags[start] = f"{begin}-{label}"
            for i in range(start + 1, end):
                tags[i] = f"I-{label}"
            if scheme == "bioes":
                tags[end - 1] = f"E-{label}"
        prev_end, prev_label = end, label
    return tags


def entities_to_tags(
    tokens_offsets: Sequence[tuple[int, int]], entities: Iterable[Entity], scheme: str = "iob2"
) -> list[str]:
    """Token tags (``iob1``, ``iob2`` or ``bioes``) of entities over tokens at ``tokens_offsets``.

    Entities must start and end on token boundaries and must not overlap (:class:`ValueError` otherwise).
    """
    return spans_to_tags(len(tokens_offsets), entities_to_spans(tokens_offsets, entities), scheme)


# --- reading -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sentence:
    line: int
    tokens: list[str] = field(default_factory=list)
    tags: list[Tag] = field(default_factory=list)


def _parse_sentences(path: str | os.PathLike[str], scheme: str) -> Iterator[_Sentence]:
    prefixes = "BIES" if scheme in ("auto", "bioes") else "BI"
    current: _Sentence | None = None
    for lineno, line in iter_file_lines(path):
        cols = line.split()
        if not cols or cols[0] == DOCSTART:
            if current is not None:
                yield current
                current = None
            continue
        if len(cols) < 2:
            raise DatasetFormatError(path, lineno, f"expected a token and a tag, got {line.strip()!r}")
        try:
            tag = parse_tag(cols[-1], prefixes)
        except ValueError as e:
            reason = str(e)
            if prefixes != "BIES" and cols[-1][:2] in ("E-", "S-"):
                reason += f" in the {scheme} scheme; E-/S- tags need scheme='bioes' (or 'auto')"
            raise DatasetFormatError(path, lineno, reason) from None
        if current is None:
            current = _Sentence(lineno)
        current.tokens.append(cols[0])
        current.tags.append(tag)
    if current is not None:
        yield current


def sentence_example(tokens: Sequence[str], tags: Sequence[Tag], sep: str, example_id: str | None) -> Example:
    """The :class:`Example` of a tagged sentence: tokens joined by ``sep``, entities from the tags."""
    offsets = token_offsets(tokens, sep)
    text = sep.join(tokens)
    entities = [
        Entity(start=offsets[a][0], end=offsets[b - 1][1], label=label, text=text[offsets[a][0] : offsets[b - 1][1]])
        for a, b, label in decode_tags(tags)
    ]
    return Example(text=text, entities=entities, id=example_id)


def read_conll(path: str | os.PathLike[str], scheme: str = "auto") -> list[Example]:
    """Read a CoNLL column file; ids are ``<file name>:<sentence index>`` (0-based)."""
    scheme = normalize_scheme(scheme, allow_auto=True)
    return list(_conll_examples(path, scheme))


def iter_conll(path: str | os.PathLike[str], scheme: str = "auto") -> Iterator[Example]:
    """The examples of :func:`read_conll`, read one sentence at a time (an unknown scheme raises at once)."""
    return _conll_examples(path, normalize_scheme(scheme, allow_auto=True))


def _conll_examples(path: str | os.PathLike[str], scheme: str) -> Iterator[Example]:
    for i, s in enumerate(_parse_sentences(path, scheme)):
        yield sentence_example(s.tokens, s.tags, " ", default_id(path, i))


def read_conll_scheme(path: str | os.PathLike[str]) -> str:
    """The tagging scheme :func:`detect_scheme` finds in a CoNLL file."""
    return detect_scheme(s.tags for s in _parse_sentences(path, "auto"))


# --- writing -------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\S+")


def example_tokens(example: Example) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace tokens of an example's text and their offsets."""
    matches = list(_TOKEN.finditer(example.text))
    return [m.group() for m in matches], [m.span() for m in matches]


def write_conll(examples: Iterable[Example], path: str | os.PathLike[str], scheme: str = "iob2") -> None:
    """Write ``token tag`` lines, a blank line after each sentence.

    Tokens are the whitespace-separated words of the text (reading back joins them with single spaces).
    Raises :class:`ValueError` for an empty text, an entity that does not fall on token boundaries, or
    overlapping entities.
    """
    write_lines(path, conll_lines(examples, scheme))


def conll_lines(examples: Iterable[Example], scheme: str = "iob2") -> Iterator[str]:
    """The lines :func:`write_conll` writes (an unknown scheme raises at once)."""
    return _conll_lines(examples, normalize_scheme(scheme))


def _conll_lines(examples: Iterable[Example], scheme: str) -> Iterator[str]:
    for n, ex in enumerate(examples):
        tokens, offsets = example_tokens(ex)
        if not tokens:
            raise ValueError(f"example {ex.id or n}: empty text cannot be written as CoNLL")
        try:
            tags = entities_to_tags(offsets, ex.entities, scheme)
        except ValueError as e:
            raise ValueError(f"example {ex.id or n}: {e}") from None
        for tok, tag in zip(tokens, tags, strict=True):
            yield f"{tok} {tag}"
        yield ""
