"""nerve JSONL: one :meth:`Example.to_dict` per line.

``{"id"?: ..., "text": str, "entities": [{"label", "text", "start", "end"}, ...]}`` with code-point offsets,
``end`` exclusive. A record without ``entities`` is an unlabelled example. Any other field is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..types import Entity, Example
from ._fields import COMMON_FIELDS, check_fields
from ._io import iter_file_lines, iter_json_values, write_lines
from .cluener import record_id, record_text
from .errors import DatasetFormatError

JSONL_FIELDS = (*COMMON_FIELDS, "entities")


def read_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    """Read nerve JSONL; every entity's offsets are checked against the text."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[Example]:
    """The examples of :func:`read_jsonl`, read one record at a time."""
    for index, (line, obj) in enumerate(iter_json_values(path, iter_file_lines(path))):
        yield jsonl_record_to_example(obj, path, line, index)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def jsonl_record_to_example(obj: Any, path: str | os.PathLike[str], line: int, index: int) -> Example:
    """Convert one parsed nerve JSONL record (found at ``path:line``) to an :class:`Example`."""
    text = record_text(obj, path, line)
    check_fields(obj, JSONL_FIELDS, "jsonl", path, line)
    items = obj.get("entities")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise DatasetFormatError(path, line, f"'entities' must be a list, got {type(items).__name__}")
    entities = [record_entity(text, i, item, path, line) for i, item in enumerate(items)]
    return Example(text=text, entities=entities, id=record_id(obj, path, index))


def record_entity(
    text: str, i: int, item: Any, path: str | os.PathLike[str], line: int, kind: str = "entity"
) -> Entity:
    """The ``i``-th ``{"label", "start", "end", "text"?}`` object of a record, checked against ``text``.

    ``kind`` names the object in error messages (``entity 2: ...``).
    """
    where = f"{kind} {i}"
    if not isinstance(item, dict):
        raise DatasetFormatError(path, line, f"{where}: expected an object, got {type(item).__name__}")
    missing = [k for k in ("label", "start", "end") if k not in item]
    if missing:
        raise DatasetFormatError(path, line, f"{where}: missing {', '.join(missing)}")
    start, end, label = item["start"], item["end"], item["label"]
    if not (_is_int(start) and _is_int(end)):
        raise DatasetFormatError(path, line, f"{where}: 'start' and 'end' must be integers")
    if not isinstance(label, str) or not label:
        raise DatasetFormatError(path, line, f"{where}: 'label' must be a non-empty string")
    if not 0 <= start < end <= len(text):
        raise DatasetFormatError(
            path, line, f"{where}: span [{start}, {end}) outside a text of {len(text)} characters"
        )
    surface = text[start:end]
    if "text" in item and item["text"] != surface:
        raise DatasetFormatError(
            path, line, f"{where}: text {item['text']!r} does not match text[{start}:{end}] = {surface!r}"
        )
    return Entity(start=start, end=end, label=label, text=surface)


def jsonl_lines(examples: Iterable[Example]) -> Iterator[str]:
    """The lines :func:`write_jsonl` writes."""
    return (json.dumps(ex.to_dict(), ensure_ascii=False) for ex in examples)


def write_jsonl(examples: Iterable[Example], path: str | os.PathLike[str]) -> None:
    """Write nerve JSONL (UTF-8, ``ensure_ascii=False``)."""
    write_lines(path, jsonl_lines(examples))
