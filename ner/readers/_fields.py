"""The fields of JSON records: which format's annotations each field holds, and the check for unknown fields.

A field a reader does not understand may hold the very annotations the user meant to train on (``spans``
read as CLUENER would give examples without entities), so it is an error, never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType

from .errors import DatasetFormatError

ANNOTATION_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "label": ("cluener", "doccano"),
        "entities": ("jsonl", "doccano"),
        "spans": ("prodigy",),
        "data": ("label-studio",),
        "annotations": ("label-studio",),
        "predictions": ("label-studio",),
    }
)
"""The fields that hold the entities of the JSON formats (a Label Studio task holds them under ``annotations``
and ``predictions``, beside its ``data``), each mapped to the formats that read it. ``label`` and ``entities``
are read by two formats each, which tell them apart by the shape of the value."""

COMMON_FIELDS = ("id", "text")
"""Fields every JSON format reads: the optional example id and the text."""


def quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def describe_annotation_fields() -> str:
    """``'label' (cluener, doccano), 'entities' (jsonl, doccano), ...`` for error messages."""
    return ", ".join(f"{field!r} ({', '.join(fmts)})" for field, fmts in ANNOTATION_FIELDS.items())


def read_by(field: str) -> str:
    """``format='prodigy'`` (or ``format='cluener' or 'doccano'``): the formats that read an entity field."""
    return "format=" + " or ".join(repr(f) for f in ANNOTATION_FIELDS[field])


def check_fields(
    fields: Iterable[str], expected: Collection[str], reader: str, path: str | os.PathLike[str], line: int
) -> None:
    """Raise :class:`DatasetFormatError` naming the ``fields`` that are not in ``expected``.

    When an unknown field is another format's annotation field, the message names that format.
    """
    unknown = [f for f in fields if f not in expected]
    if not unknown:
        return
    hints = [f"{f!r} is read by {read_by(f)}" for f in unknown
             if f in ANNOTATION_FIELDS and reader not in ANNOTATION_FIELDS[f]]
    raise DatasetFormatError(
        path, line,
        f"unknown field(s) {quoted(unknown)} for the {reader} reader; expected {quoted(expected)}"
        + (f" ({'; '.join(hints)})" if hints else ""),
    )
