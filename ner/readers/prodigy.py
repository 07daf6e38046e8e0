"""Prodigy / spaCy JSONL: ``{"text": str, "spans": [{"start", "end", "label"}, ...]}``.

Offsets are character (code-point) offsets, ``end`` exclusive, checked against the text (and against a span's
``text`` when it has one). This is what Prodigy's ``nerve.ner.manual``/``nerve.ner.correct`` sessions and ``db-out``
exports hold, and the JSONL that spaCy projects convert to ``DocBin``.

Prodigy's own fields are understood: a record whose ``answer`` is ``reject`` or ``ignore`` is skipped, as
Prodigy's training commands skip it; ``tokens``, ``meta``, span ``token_start``/``token_end`` and the
bookkeeping fields starting with ``_`` (``_input_hash``, ``_task_hash``, ``_view_id``, ...) are not needed
and are ignored. Any other record field is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..types import Example
from ._fields import COMMON_FIELDS, check_fields
from ._io import iter_file_lines, iter_json_values, write_lines
from .cluener import record_id, record_text
from .errors import DatasetFormatError
from .jsonl import record_entity

PRODIGY_FIELDS = (*COMMON_FIELDS, "spans", "answer", "tokens", "meta")
"""Record fields the reader understands, besides Prodigy's ``_``-prefixed bookkeeping fields."""

ANSWERS = ("accept", "reject", "ignore")


def read_prodigy(path: str | os.PathLike[str]) -> list[Example]:
    """Read Prodigy/spaCy JSONL; ids are the records' ``id``, else ``<file name>:<record index>`` (0-based,
    counting skipped records too, so an id always points at its record)."""
    return list(iter_prodigy(path))


def iter_prodigy(path: str | os.PathLike[str]) -> Iterator[Example]:
    """The examples of :func:`read_prodigy`, read one record at a time."""
    for index, (line, obj) in enumerate(iter_json_values(path, iter_file_lines(path))):
        example = prodigy_record_to_example(obj, path, line, index)
        if example is not None:
            yield example


def prodigy_record_to_example(obj: Any, path: str | os.PathLike[str], line: int, index: int) -> Example | None:
    """The :class:`Example` of one Prodigy record (found at ``path:line``); ``None`` for a rejected or ignored one."""
    text = record_text(obj, path, line)
    check_fields((k for k in obj if not k.startswith("_")), PRODIGY_FIELDS, "prodigy", path, line)
    answer = obj.get("answer", "accept")
    if answer not in ANSWERS:
        raise DatasetFormatError(path, line, f"'answer' must be one of {', '.join(ANSWERS)}, got {answer!r}")
    if answer != "accept":
        return None
    spans = obj.get("spans")
    if spans is None:
        spans = []
    if not isinstance(spans, list):
        raise DatasetFormatError(path, line, f"'spans' must be a list, got {type(spans).__name__}")
    entities = [record_entity(text, i, span, path, line, kind="span") for i, span in enumerate(spans)]
    return Example(text=text, entities=entities, id=record_id(obj, path, index))


def example_to_prodigy(example: Example) -> dict:
    """The Prodigy record of an example (``id`` only when it has one)."""
    record: dict[str, Any] = {} if example.id is None else {"id": example.id}
    record["text"] = example.text
    record["spans"] = [{"start": e.start, "end": e.end, "label": e.label} for e in example.entities]
    return record


def prodigy_lines(examples: Iterable[Example]) -> Iterator[str]:
    """The lines :func:`write_prodigy` writes."""
    return (json.dumps(example_to_prodigy(ex), ensure_ascii=False) for ex in examples)


def write_prodigy(examples: Iterable[Example], path: str | os.PathLike[str]) -> None:
    """Write Prodigy/spaCy JSONL (UTF-8, ``ensure_ascii=False``)."""
    write_lines(path, prodigy_lines(examples))
