"""doccano JSONL, as doccano's sequence-labeling projects import and export it.

Two shapes of record are read:

* ``{"id"?, "text": str, "label": [[start, end, "TYPE"], ...]}``: the import format, and the export of a
  project without relations;
* ``{"id"?, "text": str, "entities": [{"id"?, "label", "start_offset", "end_offset"}, ...], "relations"?}``: the
  export of a project with relations (relations are not entities and are not read).

Offsets are ``end`` exclusive. doccano's web interface counts them in UTF-16 code units (JavaScript string
indices), not in code points: the two differ after a character outside the Basic Multilingual Plane, such as
most emoji. ``offsets="auto"`` (the default) reads a record as code points when the two agree for all its spans
and otherwise raises :class:`DatasetFormatError` naming both choices; ``offsets="utf-16"`` (doccano's web
interface) or ``offsets="code-points"`` (a file written by a Python script) decide. The writer writes UTF-16
offsets unless told otherwise, so that doccano shows the spans where they belong. (doccano's "count grapheme
clusters as one character" project option is a third unit, which is not supported.)

CLUENER's records also have a ``label`` field, but its value is an object; here it is a list. doccano's
``Comments`` field is not needed and is ignored. doccano exports an example's metadata as fields of the record
itself: any field not named above is an error, unless listed in ``ignore_fields``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from ..types import Entity, Example
from ._fields import COMMON_FIELDS, check_fields
from ._io import iter_file_lines, iter_json_values, write_lines
from ._offsets import check_unit, from_utf16, has_astral, to_utf16
from .cluener import record_id, record_text
from .errors import DatasetFormatError

DOCCANO_FIELDS = (*COMMON_FIELDS, "label", "entities", "relations", "Comments")
"""Record fields the reader understands."""

SPAN_FIELDS = ("id", "label", "start_offset", "end_offset")
"""Fields of the objects of ``entities``."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def field_names(value: str | Collection[str]) -> tuple[str, ...]:
    """Field names given as a collection or as one comma-separated string (a command-line option)."""
    if isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    return tuple(value)


def read_doccano(
    path: str | os.PathLike[str], offsets: str = "auto", ignore_fields: str | Collection[str] = ()
) -> list[Example]:
    """Read doccano JSONL; ids are the records' ``id``, else ``<file name>:<record index>`` (0-based)."""
    return list(iter_doccano(path, offsets, ignore_fields))


def iter_doccano(
    path: str | os.PathLike[str], offsets: str = "auto", ignore_fields: str | Collection[str] = ()
) -> Iterator[Example]:
    """The examples of :func:`read_doccano`, read one record at a time (an unknown ``offsets`` raises at once)."""
    check_unit(offsets, allow_auto=True)
    expected = (*DOCCANO_FIELDS, *field_names(ignore_fields))
    return (
        doccano_record_to_example(obj, path, line, index, offsets, expected)
        for index, (line, obj) in enumerate(iter_json_values(path, iter_file_lines(path)))
    )


def doccano_record_to_example(
    obj: Any, path: str | os.PathLike[str], line: int, index: int, offsets: str = "auto",
    expected: Collection[str] = DOCCANO_FIELDS,
) -> Example:
    """The :class:`Example` of one doccano record (found at ``path:line``)."""
    text = record_text(obj, path, line)
    try:
        check_fields(obj, expected, "doccano", path, line)
    except DatasetFormatError as exc:  # doccano writes an example's metadata as fields of its own
        raise DatasetFormatError(path, line, f"{exc.reason}; metadata fields that hold no entities can be passed "
                                             "over with ignore_fields=name,...") from None
    if "label" in obj and "entities" in obj:
        raise DatasetFormatError(path, line, "record has both 'label' and 'entities'; doccano writes one of them")
    spans = [_tuple_span(i, item, path, line) for i, item in enumerate(_list(obj, "label", path, line))]
    spans += [_dict_span(i, item, path, line) for i, item in enumerate(_list(obj, "entities", path, line))]
    entities = [_entity(text, i, span, offsets, path, line) for i, span in enumerate(spans)]
    return Example(text=text, entities=entities, id=record_id(obj, path, index))


def _list(obj: dict, field: str, path: str | os.PathLike[str], line: int) -> list:
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        hint = " (an object of type -> surface -> spans is CLUENER's 'label': format='cluener')" \
            if field == "label" and isinstance(value, dict) else ""
        raise DatasetFormatError(path, line, f"'{field}' must be a list, got {type(value).__name__}{hint}")
    return value


def _tuple_span(i: int, item: Any, path: str | os.PathLike[str], line: int) -> tuple[int, int, str]:
    if not (isinstance(item, list) and len(item) == 3 and _is_int(item[0]) and _is_int(item[1])
            and isinstance(item[2], str) and item[2]):
        raise DatasetFormatError(path, line, f"label {i}: expected [start, end, \"TYPE\"], got {item!r}")
    return item[0], item[1], item[2]


def _dict_span(i: int, item: Any, path: str | os.PathLike[str], line: int) -> tuple[int, int, str]:
    where = f"entity {i}"
    if not isinstance(item, dict):
        raise DatasetFormatError(path, line, f"{where}: expected an object, got {type(item).__name__}")
    check_fields(item, SPAN_FIELDS, "doccano", path, line)
    missing = [k for k in SPAN_FIELDS[1:] if k not in item]
    if missing:
        raise DatasetFormatError(path, line, f"{where}: missing {', '.join(missing)}")
    start, end, label = item["start_offset"], item["end_offset"], item["label"]
    if not (_is_int(start) and _is_int(end)):
        raise DatasetFormatError(path, line, f"{where}: 'start_offset' and 'end_offset' must be integers")
    if not isinstance(label, str) or not label:
        raise DatasetFormatError(path, line, f"{where}: 'label' must be a non-empty string")
    return start, end, label


def _entity(
    text: str, i: int, span: tuple[int, int, str], offsets: str, path: str | os.PathLike[str], line: int
) -> Entity:
    start, end, label = span
    where = f"span {i} [{start}, {end}) {label!r}"
    if offsets == "code-points" or not has_astral(text):
        cp_start, cp_end = start, end
    else:
        converted = from_utf16(text, [start, end])
        if offsets == "auto" and converted != [start, end]:
            raise DatasetFormatError(
                path, line, f"{where}: the text has characters outside the Basic Multilingual Plane before the span, "
                "so its offsets mean different characters in UTF-16 code units (doccano's web interface) and in "
                "code points; pass offsets='utf-16' or offsets='code-points'"
            )
        cp_start, cp_end = converted
        if cp_start is None or cp_end is None:
            units = to_utf16(text, [len(text)])[0]
            raise DatasetFormatError(
                path, line, f"{where}: outside a text of {units} UTF-16 code units, or inside a character of two"
            )
    if not 0 <= cp_start < cp_end <= len(text):
        raise DatasetFormatError(path, line, f"{where}: outside a text of {len(text)} characters")
    return Entity.at(text, cp_start, cp_end, label)


def example_to_doccano(example: Example, offsets: str = "utf-16") -> dict:
    """The doccano import record of an example (``id`` only when it has one; doccano keeps it as metadata)."""
    check_unit(offsets)
    record: dict[str, Any] = {} if example.id is None else {"id": example.id}
    record["text"] = example.text
    labels = []
    for e in example.entities:
        start, end = to_utf16(example.text, [e.start, e.end]) if offsets == "utf-16" else (e.start, e.end)
        labels.append([start, end, e.label])
    record["label"] = labels
    return record


def doccano_lines(examples: Iterable[Example], offsets: str = "utf-16") -> Iterator[str]:
    """The lines :func:`write_doccano` writes."""
    check_unit(offsets)
    return (json.dumps(example_to_doccano(ex, offsets), ensure_ascii=False) for ex in examples)


def write_doccano(examples: Iterable[Example], path: str | os.PathLike[str], offsets: str = "utf-16") -> None:
    """Write doccano JSONL with ``label`` lists (UTF-8, ``ensure_ascii=False``), offsets in ``offsets`` units."""
    write_lines(path, doccano_lines(examples, offsets))
