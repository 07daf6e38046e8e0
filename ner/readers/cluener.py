"""CLUENER2020 JSON: ``{"text": str, "label": {type: {surface: [[start, end_inclusive], ...]}}}``.

One object per line (JSON Lines); a file holding one JSON array of such objects, or pretty-printed objects
one after another, is read too. Records without ``label`` (the unlabelled test split, which has ``id`` and
``text``) become examples without entities. Any other field is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..types import Entity, Example
from ._fields import COMMON_FIELDS, check_fields
from ._io import default_id, iter_file_lines, iter_json_values, write_lines
from .errors import DatasetFormatError

CLUENER_FIELDS = (*COMMON_FIELDS, "label")


def read_cluener(path: str | os.PathLike[str]) -> list[Example]:
    """Read a CLUENER file; every span is checked against its surface (``text[s:e+1] == surface``)."""
    return list(iter_cluener(path))


def iter_cluener(path: str | os.PathLike[str]) -> Iterator[Example]:
    """The examples of :func:`read_cluener`, read one record at a time."""
    for index, (line, obj) in enumerate(iter_json_values(path, iter_file_lines(path))):
        yield cluener_record_to_example(obj, path, line, index)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def record_id(obj: dict, path: str | os.PathLike[str], index: int) -> str:
    """The record's ``id`` as a string, or the default ``name:index`` id when it has none."""
    rid = obj.get("id")
    return default_id(path, index) if rid is None else str(rid)


def record_text(obj: Any, path: str | os.PathLike[str], line: int) -> str:
    """The ``text`` of a JSON record, checking the record is an object with a string ``text``."""
    if not isinstance(obj, dict):
        raise DatasetFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise DatasetFormatError(path, line, "record has no string field 'text'")
    return text


def cluener_record_to_example(obj: Any, path: str | os.PathLike[str], line: int, index: int) -> Example:
    """Convert one parsed CLUENER record (found at ``path:line``) to an :class:`Example`."""
    text = record_text(obj, path, line)
    check_fields(obj, CLUENER_FIELDS, "cluener", path, line)
    labels = obj.get("label")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        raise DatasetFormatError(path, line, f"'label' must be an object, got {type(labels).__name__}")
    entities: list[Entity] = []
    for label, surfaces in labels.items():
        if not isinstance(surfaces, dict):
            raise DatasetFormatError(path, line, f"label {label!r}: expected an object of surface -> spans")
        for surface, spans in surfaces.items():
            if not isinstance(spans, list):
                raise DatasetFormatError(path, line, f"label {label!r}, surface {surface!r}: spans must be a list")
            for span in spans:
                entities.append(_span_entity(text, label, surface, span, path, line))
    return Example(text=text, entities=entities, id=record_id(obj, path, index))


def _span_entity(
    text: str, label: str, surface: str, span: Any, path: str | os.PathLike[str], line: int
) -> Entity:
    where = f"label {label!r}, surface {surface!r}, span {span!r}"
    if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)):
        raise DatasetFormatError(path, line, f"{where}: expected [start, end_inclusive] integers")
    start, last = span
    if not 0 <= start <= last < len(text):
        raise DatasetFormatError(path, line, f"{where}: outside a text of {len(text)} characters")
    if text[start : last + 1] != surface:
        raise DatasetFormatError(
            path, line, f"{where}: text[{start}:{last + 1}] is {text[start:last + 1]!r}, not the surface"
        )
    return Entity(start=start, end=last + 1, label=label, text=surface)


def example_to_cluener(example: Example) -> dict:
    """The CLUENER record of an example (``label`` grouped by type, then surface, in offset order).

    An id made only of decimal digits is written as a JSON integer, as in the CLUENER test split.
    """
    labels: dict[str, dict[str, list[list[int]]]] = {}
    for e in example.entities:
        labels.setdefault(e.label, {}).setdefault(e.text, []).append([e.start, e.end - 1])
    record: dict[str, Any] = {}
    if example.id is not None:
        record["id"] = int(example.id) if example.id.isdecimal() and str(int(example.id)) == example.id else example.id
    record["text"] = example.text
    record["label"] = labels
    return record


def cluener_lines(examples: Iterable[Example]) -> Iterator[str]:
    """The lines :func:`write_cluener` writes."""
    return (json.dumps(example_to_cluener(ex), ensure_ascii=False, separators=(",", ":")) for ex in examples)


def write_cluener(examples: Iterable[Example], path: str | os.PathLike[str]) -> None:
    """Write CLUENER JSON Lines (UTF-8, ``ensure_ascii=False``, compact separators)."""
    write_lines(path, cluener_lines(examples))
