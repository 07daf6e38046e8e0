"""Dataset readers and writers: CLUENER JSON, CoNLL columns, character BMES, nerve JSONL and Prodigy JSONL.

>>> examples = read_dataset("../shared/datasets/conll2003/eng.testa")      # doctest: +SKIP
>>> write_dataset(examples, "out/testa.jsonl", "jsonl")                    # doctest: +SKIP

Every reader returns :class:`~nerve.ner.types.Example` objects with validated, code-point offsets and raises
:class:`DatasetFormatError` (``<path>:<line>: <reason>``) for malformed input. Examples whose records carry
no id get ``<file name>:<index>`` (0-based).

Nothing is misread in silence: a JSON record field the reader does not understand is an error, and so is a
file in which no example has an entity (:class:`NoEntitiesError`), unless it is read with ``allow_empty=True``.

:func:`iter_dataset` yields the same examples one at a time, reading the file only as far as they need, so
that a consumer taking the first ``n`` examples of a large file holds neither the file nor the rest of them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..types import Example
from ._fields import ANNOTATION_FIELDS, COMMON_FIELDS, describe_annotation_fields, quoted
from ._io import iter_file_lines, iter_json_values, iter_lines
from .bmes import iter_bmes, parse_bmes_line, read_bmes, write_bmes
from .cluener import iter_cluener, read_cluener, write_cluener
from .conll import DOCSTART, SCHEMES, entities_to_tags, iter_conll, read_conll, tags_to_spans, token_offsets, write_conll
from .errors import DatasetFormatError, NoEntitiesError
from .jsonl import iter_jsonl, read_jsonl, write_jsonl
from .prodigy import iter_prodigy, read_prodigy, write_prodigy

__all__ = [
    "FORMATS", "SCHEMES", "DatasetFormat", "DatasetFormatError", "NoEntitiesError", "dataset_stats",
    "detect_format", "entities_to_tags", "iter_dataset", "read_dataset", "tags_to_spans", "token_offsets",
    "write_dataset",
]


@dataclass(frozen=True, slots=True)
class DatasetFormat:
    """A supported file format: its reader, writer, a one-line description and its lazy reader."""

    name: str
    read: Callable[..., list[Example]]
    write: Callable[..., None]
    description: str
    iterate: Callable[..., Iterator[Example]]
    """The examples of ``read``, one at a time, reading the file as they need it."""


FORMATS: Mapping[str, DatasetFormat] = MappingProxyType(
    {
        "cluener": DatasetFormat(
            "cluener", read_cluener, write_cluener,
            'CLUENER2020 JSON Lines {"text", "label": {type: {surface: [[start, end_inclusive]]}}}', iter_cluener,
        ),
        "conll": DatasetFormat(
            "conll", read_conll, write_conll,
            "CoNLL columns (token first, tag last), iob1/iob2/bioes; options: scheme", iter_conll,
        ),
        "bmes": DatasetFormat(
            "bmes", read_bmes, write_bmes, "character-level 'char TAG' lines, B/M/E/S/O tags", iter_bmes,
        ),
        "jsonl": DatasetFormat(
            "jsonl", read_jsonl, write_jsonl, 'nerve JSONL {"id"?, "text", "entities": [{label, text, start, end}]}',
            iter_jsonl,
        ),
        "prodigy": DatasetFormat(
            "prodigy", read_prodigy, write_prodigy,
            'Prodigy/spaCy JSONL {"text", "spans": [{start, end, label}]}; rejected answers skipped', iter_prodigy,
        ),
    }
)
"""Supported formats by name (``"auto"`` is accepted by :func:`read_dataset` and :func:`iter_dataset` only)."""

_JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
_SNIFF_LINES = 2000
_BMES_SINGLE_CHAR_SHARE = 0.95


def detect_format(path: str | os.PathLike[str], text: str | None = None) -> str:
    """The format of a file, by extension and content.

    ``.json``/``.jsonl`` files (or any file starting with a JSON object) are decided by the field that holds
    the entities of their first labelled record: ``label`` -> ``cluener``, ``entities`` -> ``jsonl``,
    ``spans`` -> ``prodigy``. Records with only ``id`` and ``text`` are passed over (up to 2000 of them; a
    file of only such records is ``cluener``, and any JSON reader gives the same result). A record with two
    of these fields, or with none and other fields besides ``id`` and ``text``, is a
    :class:`DatasetFormatError` that names the choices: the format is never guessed.

    Other files are column files: ``bmes`` when nearly all first columns are single characters and there is
    no ``-DOCSTART-``, else ``conll``. An empty file is ``jsonl``.

    Without ``text`` the file is read a line at a time, as far as the decision needs (a column file to its end,
    for the ``-DOCSTART-`` check).
    """

    def lines() -> Iterator[tuple[int, str]]:
        return iter_file_lines(path) if text is None else iter_lines(text)

    if Path(path).suffix.lower() in _JSON_SUFFIXES or _starts_with_json_object(lines()):
        return _detect_json_format(path, lines())
    return _sniff_columns(lines())


def _starts_with_json_object(lines: Iterable[tuple[int, str]]) -> bool:
    first = next((line for _, line in lines if line.strip()), "")
    if not first.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _detect_json_format(path: str | os.PathLike[str], lines: Iterable[tuple[int, str]]) -> str:
    fmt = "jsonl"  # an empty file
    for n, (line, record) in enumerate(iter_json_values(path, lines)):
        if not isinstance(record, dict):
            raise DatasetFormatError(path, line, f"expected a JSON object, got {type(record).__name__}")
        found = [f for f in record if f in ANNOTATION_FIELDS]
        if len(found) > 1:
            raise DatasetFormatError(
                path, line, f"cannot detect the format: the record has {quoted(found)}, the entity fields of "
                f"{' and '.join(ANNOTATION_FIELDS[f] for f in found)}; pass the format"
            )
        if found:
            return ANNOTATION_FIELDS[found[0]]
        unknown = [f for f in record if f not in COMMON_FIELDS]
        if unknown:
            raise DatasetFormatError(
                path, line, f"cannot detect the format: the record has {quoted(unknown)} but none of the entity "
                f"fields {describe_annotation_fields()}; pass the format (one of: {', '.join(FORMATS)})"
            )
        fmt = "cluener"
        if n + 1 >= _SNIFF_LINES:
            break
    return fmt


def _sniff_columns(lines: Iterable[tuple[int, str]]) -> str:
    single = total = 0
    for _, line in lines:
        if not line.strip():
            continue
        if line.split(maxsplit=1)[0] == DOCSTART:
            return "conll"
        if total < _SNIFF_LINES:
            try:
                token, _tag = parse_bmes_line(line)
            except ValueError:
                return "conll"  # let the CoNLL reader report the malformed line
            total += 1
            single += len(token) == 1
    if total == 0:
        return "jsonl"
    return "bmes" if single >= _BMES_SINGLE_CHAR_SHARE * total else "conll"


def _format(name: str) -> DatasetFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown dataset format {name!r} (expected one of: {', '.join(FORMATS)})") from None


def read_dataset(
    path: str | os.PathLike[str], format: str = "auto", *, allow_empty: bool = False, **opts: Any
) -> list[Example]:
    """Read a dataset file in ``format`` (one of :data:`FORMATS`, or ``"auto"``: :func:`detect_format`).

    A file in which no example has an entity (or with no examples at all) raises :class:`NoEntitiesError`
    unless ``allow_empty`` is set: gold data without entities is nearly always a file read in the wrong
    format, and a model trained on it learns to find nothing. ``opts`` go to the format's reader (e.g.
    ``scheme="iob1"`` for ``conll``).
    """
    return list(iter_dataset(path, format, allow_empty=allow_empty, **opts))


def iter_dataset(
    path: str | os.PathLike[str], format: str = "auto", *, allow_empty: bool = False, **opts: Any
) -> Iterator[Example]:
    """The examples of :func:`read_dataset`, one at a time: the file is read only as far as the examples taken
    need (after :func:`detect_format`, for ``"auto"``).

    The same errors are raised, each when the reading reaches it; :class:`NoEntitiesError` after the last
    example, so a consumer that stops early is not told that the examples it took have no entity.
    """
    if format == "auto":
        format = detect_format(path)
    count, labelled = 0, False
    for example in _format(format).iterate(path, **opts):
        count += 1
        labelled = labelled or bool(example.entities)
        yield example
    if not allow_empty and not labelled:
        raise NoEntitiesError(path, count, format)


def write_dataset(examples: Iterable[Example], path: str | os.PathLike[str], format: str, **opts: Any) -> None:
    """Write ``examples`` to ``path`` in ``format`` (creating parent folders).

    ``opts`` go to the format's writer (e.g. ``scheme="bioes"`` for ``conll``).
    """
    _format(format).write(examples, path, **opts)


def dataset_stats(examples: Sequence[Example]) -> dict[str, Any]:
    """Counts of a dataset: ``sentences``, ``entities``, ``labels`` (per-label entity counts, sorted by label)
    and ``overlapping_pairs`` (pairs of entities of one example whose spans overlap, e.g. nested ones)."""
    labels: Counter[str] = Counter()
    overlaps = 0
    for ex in examples:
        labels.update(e.label for e in ex.entities)
        overlaps += _overlapping_pairs(ex)
    return {
        "sentences": len(examples),
        "entities": sum(labels.values()),
        "labels": dict(sorted(labels.items())),
        "overlapping_pairs": overlaps,
    }


def _overlapping_pairs(example: Example) -> int:
    ents = example.entities  # sorted by start
    count = 0
    for i, a in enumerate(ents):
        for b in ents[i + 1 :]:
            if b.start >= a.end:
                break
            count += 1
    return count
