"""Dataset readers and writers: CLUENER JSON, CoNLL columns, character BMES, nerve JSONL, Prodigy JSONL, and the
files of annotation tools and libraries: Label Studio JSON (and JSON-MIN), doccano JSONL, spaCy ``DocBin`` files
and Hugging Face ``datasets`` folders.

>>> examples = read_dataset("../shared/datasets/conll2003/eng.testa")      # doctest: +SKIP
>>> write_dataset(examples, "out/testa.jsonl", "jsonl")                    # doctest: +SKIP
>>> write_dataset(examples, "out/testa.json", "label-studio", kind="predictions")   # doctest: +SKIP

Every reader returns :class:`~nerve.ner.types.Example` objects with validated, code-point offsets and raises
:class:`DatasetFormatError` (``<path>:<line>: <reason>``) for malformed input. Examples whose records carry
no id get ``<file name>:<index>`` (0-based).

Nothing is misread in silence: a JSON record field the reader does not understand is an error, and so is a
file in which no example has an entity (:class:`NoEntitiesError`), unless it is read with ``allow_empty=True``.
:func:`detect_format` never guesses: a file it cannot tell apart is an error that names the choices.

:func:`iter_dataset` yields the same examples one at a time, reading the file only as far as they need, so
that a consumer taking the first ``n`` examples of a large file holds neither the file nor the rest of them.

spaCy and Hugging Face ``datasets`` are optional (``pip install 'nerve[formats]'``); their formats raise
:class:`MissingDependencyError`, a :class:`DatasetFormatError` naming that command, without them.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..types import Example
from ._fields import ANNOTATION_FIELDS, COMMON_FIELDS, describe_annotation_fields, quoted
from ._io import iter_file_lines, iter_json_values, iter_lines
from .bmes import bmes_lines, iter_bmes, parse_bmes_line, read_bmes, write_bmes
from .cluener import CLUENER_FIELDS, cluener_lines, iter_cluener, read_cluener, write_cluener
from .conll import (
    DOCSTART,
    SCHEMES,
    conll_lines,
    entities_to_tags,
    iter_conll,
    read_conll,
    tags_to_spans,
    token_offsets,
    write_conll,
)
from .docbin import iter_spacy, read_spacy, write_spacy
from .doccano import DOCCANO_FIELDS, doccano_lines, iter_doccano, read_doccano, write_doccano
from .errors import DatasetFormatError, MissingDependencyError, NoEntitiesError
from .hf_datasets import is_dataset_folder, iter_hf_datasets, read_hf_datasets, write_hf_datasets
from .jsonl import JSONL_FIELDS, iter_jsonl, jsonl_lines, read_jsonl, write_jsonl
from .label_studio import is_region_list, iter_label_studio, label_studio_lines, read_label_studio, write_label_studio
from .prodigy import PRODIGY_FIELDS, iter_prodigy, prodigy_lines, read_prodigy, write_prodigy

__all__ = [
    "FORMATS", "SCHEMES", "DatasetFormat", "DatasetFormatError", "MissingDependencyError", "NoEntitiesError",
    "dataset_lines", "dataset_stats", "detect_format", "entities_to_tags", "format_options", "iter_dataset",
    "read_dataset", "tags_to_spans", "token_offsets", "write_dataset",
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
    lines: Callable[..., Iterator[str]] | None = None
    """The text lines ``write`` writes, for writing to a stream; ``None`` for a binary file or a folder."""


FORMATS: Mapping[str, DatasetFormat] = MappingProxyType(
    {
        "cluener": DatasetFormat(
            "cluener", read_cluener, write_cluener,
            'CLUENER2020 JSON Lines {"text", "label": {type: {surface: [[start, end_inclusive]]}}}', iter_cluener,
            cluener_lines,
        ),
        "conll": DatasetFormat(
            "conll", read_conll, write_conll,
            "CoNLL columns (token first, tag last), iob1/iob2/bioes; options: scheme", iter_conll, conll_lines,
        ),
        "bmes": DatasetFormat(
            "bmes", read_bmes, write_bmes, "character-level 'char TAG' lines, B/M/E/S/O tags", iter_bmes, bmes_lines,
        ),
        "jsonl": DatasetFormat(
            "jsonl", read_jsonl, write_jsonl, 'nerve JSONL {"id"?, "text", "entities": [{label, text, start, end}]}',
            iter_jsonl, jsonl_lines,
        ),
        "prodigy": DatasetFormat(
            "prodigy", read_prodigy, write_prodigy,
            'Prodigy/spaCy JSONL {"text", "spans": [{start, end, label}]}; rejected answers skipped', iter_prodigy,
            prodigy_lines,
        ),
        "label-studio": DatasetFormat(
            "label-studio", read_label_studio, write_label_studio,
            'Label Studio JSON tasks {"data": {"text"}, "annotations"/"predictions": [{"result": [labels]}]}, and '
            "JSON-MIN; options: source, text_key; writer: kind, from_name, to_name, model_version, score",
            iter_label_studio, label_studio_lines,
        ),
        "doccano": DatasetFormat(
            "doccano", read_doccano, write_doccano,
            'doccano JSONL {"text", "label": [[start, end, type]]} or "entities": [{start_offset, end_offset, '
            "label}]; options: offsets (auto, utf-16, code-points), ignore_fields",
            iter_doccano, doccano_lines,
        ),
        "spacy": DatasetFormat(
            "spacy", read_spacy, write_spacy,
            "spaCy DocBin (.spacy), entities from doc.ents or a span group; options: spans_key; writer: lang",
            iter_spacy,
        ),
        "hf-datasets": DatasetFormat(
            "hf-datasets", read_hf_datasets, write_hf_datasets,
            "Hugging Face datasets save_to_disk folder, tokens + ClassLabel ner_tags; options: split, sep, tokens, "
            "tags, ignore_columns",
            iter_hf_datasets,
        ),
    }
)
"""Supported formats by name (``"auto"`` is accepted by :func:`read_dataset` and :func:`iter_dataset` only)."""

_JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
_SNIFF_LINES = 2000
_BMES_SINGLE_CHAR_SHARE = 0.95
_JSON_START = re.compile(r"\s*(\{|\[\s*(\{|$))")
"""The first line of a JSON file of records: an object, or an array that opens with one (or opens alone)."""

_KNOWN_FIELDS: Mapping[str, tuple[str, ...] | None] = MappingProxyType({
    "cluener": CLUENER_FIELDS, "jsonl": JSONL_FIELDS, "prodigy": PRODIGY_FIELDS, "doccano": DOCCANO_FIELDS,
    "label-studio": None,  # a JSON-MIN record holds the task's data fields, whatever they are
})
"""The record fields each JSON reader understands (besides Prodigy's ``_`` fields), to rule readers out."""


def detect_format(path: str | os.PathLike[str], text: str | None = None) -> str:
    """The format of a file or folder, by extension and content.

    A folder is ``hf-datasets`` when ``save_to_disk`` wrote it (``dataset_info.json``, or ``dataset_dict.json``
    for a ``DatasetDict``), else an error. A ``.spacy`` file is ``spacy``.

    ``.json``/``.jsonl`` files (or any file starting with a JSON object, or with an array of them) are decided by
    the field that holds the entities of their first labelled record, and by its value's shape:

    * a record with ``data`` is a Label Studio task (``label-studio``);
    * ``label``: an object -> ``cluener``, a list of ``[start, end, type]`` -> ``doccano``, a list of
      ``{start, end, labels}`` regions -> ``label-studio`` (JSON-MIN, whose ``label`` is the control tag's name);
    * ``entities``: objects with ``start_offset`` -> ``doccano``, other objects -> ``jsonl``;
    * ``spans`` -> ``prodigy``; any other field holding ``{start, end, labels}`` regions -> ``label-studio``.

    Records with only ``id`` and ``text`` are passed over (up to 2000 of them; a file of only such records is
    ``cluener``, and any JSON reader gives the same result), and so are records whose entity list is empty, as
    long as one reader fits them all (an empty ``label`` list is doccano's or JSON-MIN's; the record's other
    fields tell them apart). A record that fits no reader, or two, and records that no one reader fits together,
    are a :class:`DatasetFormatError` that names the choices: the format is never guessed.

    Other files are column files: ``bmes`` when nearly all first columns are single characters and there is
    no ``-DOCSTART-``, else ``conll``. An empty file is ``jsonl``.

    Without ``text`` the file is read a line at a time, as far as the decision needs (a column file to its end,
    for the ``-DOCSTART-`` check).
    """
    if text is None and Path(path).is_dir():
        if is_dataset_folder(path):
            return "hf-datasets"
        raise DatasetFormatError(
            path, None, "a folder, but not one that Hugging Face datasets' save_to_disk wrote (no dataset_info.json "
            "or dataset_dict.json); the other formats are files"
        )
    if Path(path).suffix.lower() == ".spacy":
        return "spacy"

    def lines() -> Iterator[tuple[int, str]]:
        return iter_file_lines(path) if text is None else iter_lines(text)

    if Path(path).suffix.lower() in _JSON_SUFFIXES or _starts_with_json(lines()):
        return _detect_json_format(path, lines())
    return _sniff_columns(lines())


def _starts_with_json(lines: Iterable[tuple[int, str]]) -> bool:
    first = next((line for _, line in lines if line.strip()), "")
    if not _JSON_START.match(first):
        return False
    if first.lstrip().startswith("["):
        return True  # a JSON array opening on its own line; a column file's "[ TAG" line does not match
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _detect_json_format(path: str | os.PathLike[str], lines: Iterable[tuple[int, str]]) -> str:
    fits: tuple[str, ...] | None = None  # the formats every undecided record so far fits
    first_line = 0
    fmt = "jsonl"  # an empty file
    for n, (line, record) in enumerate(iter_json_values(path, lines)):
        fmt = "cluener"
        candidates = _record_formats(path, line, record)
        if candidates is not None:
            common = candidates if fits is None else tuple(f for f in fits if f in candidates)
            if not common:
                raise DatasetFormatError(
                    path, line, f"cannot detect the format: this record is {' or '.join(candidates)}, the record on "
                    f"line {first_line} is {' or '.join(fits or ())}; pass the format"
                )
            if len(common) == 1:
                return common[0]
            fits, first_line = common, first_line or line
        if n + 1 >= _SNIFF_LINES:
            break
    if fits is not None:
        return fits[0]  # records with empty entity lists only: every reader that fits reads them the same
    return fmt


def _record_formats(path: str | os.PathLike[str], line: int, record: Any) -> tuple[str, ...] | None:
    """The formats that may hold ``record``: one when it decides, several when its entities are an empty list,
    ``None`` when it has only ``id`` and ``text``. Raises when it fits none, or two different ones."""
    if not isinstance(record, dict):
        raise DatasetFormatError(path, line, f"expected a JSON object, got {type(record).__name__}")
    found: dict[str, tuple[str, ...]] = {}
    if "data" in record:
        found["data"] = ("label-studio",)
    else:
        task_fields = [f for f in ("annotations", "predictions", "completions") if f in record]
        if task_fields:
            raise DatasetFormatError(
                path, line, f"cannot detect the format: the record has {quoted(task_fields)} but no 'data'; a Label "
                "Studio task holds its text in data.text"
            )
    for field in ("label", "entities", "spans"):
        if field in record:
            found[field] = _field_formats(path, line, field, record[field])
    for field, value in record.items():
        if field not in found and field not in ANNOTATION_FIELDS and is_region_list(value):
            found[field] = ("label-studio",)
    if not found:
        unknown = [f for f in record if f not in COMMON_FIELDS]
        if unknown:
            hint = "; token and tag lists are read from Hugging Face datasets folders (save_to_disk), not from " \
                "JSON records" if "tokens" in record else ""
            raise DatasetFormatError(
                path, line, f"cannot detect the format: the record has {quoted(unknown)} but none of the entity "
                f"fields {describe_annotation_fields()}; pass the format (one of: {', '.join(FORMATS)}){hint}"
            )
        return None
    formats = tuple(f for f in next(iter(found.values())) if all(f in fmts for fmts in found.values()))
    if not formats:
        fields = ", ".join(f"{f!r} ({' or '.join(fmts)})" for f, fmts in found.items())
        raise DatasetFormatError(
            path, line, f"cannot detect the format: the record has the entity fields {fields} of different formats; "
            "pass the format"
        )
    if len(formats) > 1:  # an empty entity list: rule out the readers that do not know the record's other fields
        known = [f for f in formats if _KNOWN_FIELDS[f] is None
                 or all(k in _KNOWN_FIELDS[f] or (f == "prodigy" and k.startswith("_")) for k in record)]
        formats = tuple(known) or formats
    return formats


def _field_formats(path: str | os.PathLike[str], line: int, field: str, value: Any) -> tuple[str, ...]:
    """The formats whose ``field`` may hold ``value``, told apart by its shape."""
    if field == "spans":
        return ("prodigy",)
    if not isinstance(value, list):
        if field == "label" and value is not None and not isinstance(value, dict):
            raise DatasetFormatError(
                path, line, f"cannot detect the format: 'label' is a {type(value).__name__}, neither CLUENER's object "
                "nor a list of doccano's [start, end, type] or of Label Studio's {start, end, labels} regions; pass "
                "the format"
            )
        return ("cluener",) if field == "label" else ("jsonl",)  # the reader reports a malformed value
    if not value:
        return ("doccano", "label-studio") if field == "label" else ("jsonl", "doccano")
    if field == "label":
        if all(isinstance(v, list) for v in value):
            return ("doccano",)
        if is_region_list(value):
            return ("label-studio",)
        raise DatasetFormatError(
            path, line, "cannot detect the format: 'label' is a list, but neither of doccano's [start, end, type] "
            "nor of Label Studio's {start, end, labels} regions (a list of names is doccano's text classification, "
            "not entities); pass the format"
        )
    offsets = [isinstance(v, dict) and "start_offset" in v for v in value]
    if all(offsets):
        return ("doccano",)
    if not any(offsets):
        return ("jsonl",)
    raise DatasetFormatError(
        path, line, "cannot detect the format: 'entities' mixes doccano's {start_offset, end_offset} objects with "
        "other items; pass the format"
    )


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


def dataset_lines(examples: Iterable[Example], format: str, **opts: Any) -> Iterator[str]:
    """The lines :func:`write_dataset` would write, for a stream (standard output); :class:`ValueError` for a
    format that is not text (``spacy``, ``hf-datasets``)."""
    fmt = _format(format)
    if fmt.lines is None:
        raise ValueError(f"the {format} format is not text lines; write it to a path")
    return fmt.lines(examples, **opts)


def format_options(format: str, action: str = "read") -> tuple[str, ...]:
    """The option names of a format's reader (``action="read"``) or writer (``"write"``): what ``**opts`` of
    :func:`read_dataset` and :func:`write_dataset` may hold."""
    fmt = _format(format)
    func = fmt.iterate if action == "read" else fmt.write
    params = list(inspect.signature(func).parameters.values())[1:]  # after the path (reading) or the examples
    if action != "read":
        params = params[1:]  # after the path
    return tuple(p.name for p in params)


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
