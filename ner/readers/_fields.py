"""The fields of JSON records: which format's annotations each field holds, and the check for unknown fields.

A field a reader does not understand may hold the very annotations the user meant to train on (``spans``
read as CLUENER would give examples without entities), so it is an error, never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType

from .errors import DatasetFormatError

ANNOTATION_FIELDS: Mapping[str, str] = MappingProxyType(
    {"label": "cluener", "entities": "jsonl", "spans": "prodigy"}
)
"""The field holding the entities of each JSON format, mapped to the format's name."""

COMMON_FIELDS = ("id", "text")
"""Fields every JSON format reads: the optional example id and the text."""


def quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def describe_annotation_fields() -> str:
    """``'label' (cluener), 'entities' (jsonl), ...`` for error messages."""
    return ", ".join(f"{field!r} ({fmt})" for field, fmt in ANNOTATION_FIELDS.items())


def check_fields(
    fields: Iterable[str], expected: Collection[str], reader: str, path: str | os.PathLike[str], line: int
) -> None:
    """Raise :class:`DatasetFormatError` naming the ``fields`` that are not in ``expected``.

    When an unknown field is another format's annotation field, the message names that format.
    """
    unknown = [f for f in fields if f not in expected]
    if not unknown:
        return
    hints = [f"{f!r} is read by format={ANNOTATION_FIELDS[f]!r}" for f in unknown if f in ANNOTATION_FIELDS]
    raise DatasetFormatError(
        path, line,
        f"unknown field(s) {quoted(unknown)} for the {reader} reader; expected {quoted(expected)}"
        + (f" ({'; '.join(hints)})" if hints else ""),
    )
