"""Label Studio JSON: the tasks of a named-entity project, as Label Studio exports and imports them.

The file is a JSON array of tasks (Label Studio's "JSON" export; JSON Lines of tasks are read too)::

    {"id": 1, "data": {"text": "..."},
     "annotations": [{"result": [{"type": "labels", "from_name": "label", "to_name": "text",
                                  "value": {"start": 0, "end": 5, "text": "Paris", "labels": ["LOC"]}}],
                      "was_cancelled": false, ...}],
     "predictions": [{"model_version": "...", "score": 0.9, "result": [...]}]}

**Which annotation is read.** ``source="annotations"`` (the default) reads, of a task's annotations that are not
cancelled (``was_cancelled``: the annotator skipped the task), the one marked ``ground_truth``, else the first.
A task without such an annotation is not gold data and is skipped (Label Studio exports them with
``download_all_tasks``); when that leaves no example while tasks have predictions, the reader says so.
``source="predictions"`` reads each task's first prediction instead (pre-annotations, e.g. nerve's own output
before review). ``completions`` (Label Studio before 1.0) is read as ``annotations``; ``drafts`` are unfinished
annotations and are not read.

**Results.** A result of type ``labels`` (the ``<Labels>`` tag over a ``<Text>``) is an entity, one per label
when a region has several. Results that are not spans (``relation``, ``choices``, ``textarea``, ``rating``,
``taxonomy``, ...) are passed over; other region types (``hypertextlabels``, ``paragraphlabels``,
``rectanglelabels``, ...) are an error: their offsets are not offsets into a plain text. All ``labels`` results of
a task must label the same text (one ``to_name``).

**Offsets** are code points, ``end`` exclusive, checked against ``value.text`` when it is there. Label Studio
before 1.x counted UTF-16 code units (a JavaScript string's indices), which differ after a character outside
the Basic Multilingual Plane; a span whose ``value.text`` matches its UTF-16 reading, and not its code-point
one, is read in UTF-16 units (the text confirms it, nothing is guessed).

**Fields.** The text is ``data[text_key]`` (``text``, the ``$text`` of Label Studio's NER template). The example
id is ``data["id"]`` when the task data has one (the writer puts the example's id there, so that it survives an
import and export), else the task ``id``. Other ``data`` fields are the user's and are not read. Label Studio's
bookkeeping fields of tasks, annotations and predictions are not needed and are ignored; any other task field
is an error.

**JSON-MIN.** Label Studio's "JSON-MIN" export (one flat record per annotation: the task data, ``id``, and one
field per control tag holding its regions ``[{"start", "end", "text", "labels"}]``) is read too: a record
without ``data`` is a JSON-MIN record. Its text is the ``text_key`` field; every field holding a list of regions
with ``labels`` is read as entities. The other fields are task data or Label Studio's bookkeeping and are not
read.

The writer writes tasks that Label Studio imports into a project with the NER template (``from_name="label"``,
``to_name="text"``, ``$text``): ``kind="annotations"`` (gold data to review) or ``kind="predictions"``
(pre-annotations, with ``model_version`` and an optional overall ``score``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..types import Entity, Example
from ._fields import check_fields
from ._io import default_id, iter_file_lines, iter_json_values, write_lines
from ._offsets import from_utf16
from .errors import DatasetFormatError

TASK_FIELDS = (
    "id", "data", "annotations", "completions", "predictions", "drafts", "meta", "created_at", "updated_at",
    "inner_id", "total_annotations", "cancelled_annotations", "total_predictions", "comment_count",
    "unresolved_comment_count", "last_comment_updated_at", "project", "updated_by", "file_upload",
    "comment_authors", "annotators", "is_labeled", "overlap", "storage_filename", "allow_skip", "agreement",
)
"""Task fields the reader understands: data, annotations and predictions, and Label Studio's bookkeeping."""

NON_SPAN_RESULTS = frozenset(
    {"relation", "choices", "textarea", "rating", "taxonomy", "number", "datetime", "ranker", "pairwise"}
)
"""Result types that never hold a text span: passed over."""

VALUE_FIELDS = ("start", "end", "text", "labels")
"""Fields of a ``labels`` result's ``value`` (and of a JSON-MIN region)."""

SOURCES = ("annotations", "predictions")
KINDS = SOURCES


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown Label Studio source {source!r} (expected one of: {', '.join(SOURCES)})")
    return source


def read_label_studio(
    path: str | os.PathLike[str], source: str = "annotations", text_key: str = "text"
) -> list[Example]:
    """Read a Label Studio JSON (or JSON-MIN) export; ``source`` chooses annotations or predictions."""
    return list(iter_label_studio(path, source, text_key))


def iter_label_studio(
    path: str | os.PathLike[str], source: str = "annotations", text_key: str = "text"
) -> Iterator[Example]:
    """The examples of :func:`read_label_studio`, read one task at a time (an unknown ``source`` raises at once)."""
    return _examples(path, _check_source(source), text_key)


def _examples(path: str | os.PathLike[str], source: str, text_key: str) -> Iterator[Example]:
    yielded = skipped_with_predictions = 0
    for index, (line, obj) in enumerate(iter_json_values(path, iter_file_lines(path))):
        if not isinstance(obj, dict):
            raise DatasetFormatError(path, line, f"expected a JSON object (a task), got {type(obj).__name__}")
        if "data" in obj:
            example = task_to_example(obj, path, line, index, source, text_key)
            if example is None:
                skipped_with_predictions += bool(obj.get("predictions"))
                continue
        else:
            example = min_record_to_example(obj, path, line, index, text_key)
        yielded += 1
        yield example
    if not yielded and skipped_with_predictions:
        raise DatasetFormatError(
            path, None, f"no task has an annotation, {skipped_with_predictions} have predictions: read them with "
            "source='predictions'"
        )


def _text(data: dict, text_key: str, path: str | os.PathLike[str], line: int, where: str) -> str:
    text = data.get(text_key)
    if not isinstance(text, str):
        keys = ", ".join(repr(k) for k in data) or "none"
        raise DatasetFormatError(
            path, line, f"{where} has no string field {text_key!r} (its fields: {keys}); name the text field with "
            "text_key=..."
        )
    return text


def _example_id(value: Any, path: str | os.PathLike[str], index: int) -> str:
    return default_id(path, index) if value is None else str(value)


def task_to_example(
    task: dict, path: str | os.PathLike[str], line: int, index: int, source: str = "annotations",
    text_key: str = "text",
) -> Example | None:
    """The :class:`Example` of one task (found at ``path:line``); ``None`` for a task without a usable
    annotation (or prediction, for ``source="predictions"``)."""
    check_fields(task, TASK_FIELDS, "label-studio", path, line)
    data = task["data"]
    if not isinstance(data, dict):
        raise DatasetFormatError(path, line, f"'data' must be an object, got {type(data).__name__}")
    text = _text(data, text_key, path, line, "the task's 'data'")
    if "annotations" in task and "completions" in task:
        raise DatasetFormatError(path, line, "task has both 'annotations' and 'completions' (its pre-1.0 name)")
    field = "completions" if "completions" in task else "annotations"
    chosen = _choose_annotation(_items(task, field, path, line), field, path, line) if source == "annotations" \
        else next(iter(_items(task, "predictions", path, line)), None)
    if chosen is None:
        return None
    where = f"{field if source == 'annotations' else 'predictions'}[{chosen[0]}]"
    entities = _result_entities(text, chosen[1], where, path, line)
    return Example(text=text, entities=entities, id=_example_id(data.get("id", task.get("id")), path, index))


def _items(task: dict, field: str, path: str | os.PathLike[str], line: int) -> list[tuple[int, dict]]:
    items = task.get(field)
    if items is None:
        return []
    if not isinstance(items, list):
        raise DatasetFormatError(path, line, f"'{field}' must be a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatasetFormatError(path, line, f"{field}[{i}]: expected an object, got {type(item).__name__}")
    return list(enumerate(items))


def _choose_annotation(
    items: list[tuple[int, dict]], field: str, path: str | os.PathLike[str], line: int
) -> tuple[int, dict] | None:
    """The annotation read from a task: the ground-truth one, else the first, of those not cancelled."""
    kept = []
    for i, item in items:
        cancelled = item.get("was_cancelled", False)
        if not isinstance(cancelled, bool):
            raise DatasetFormatError(path, line, f"{field}[{i}]: 'was_cancelled' must be true or false")
        if not cancelled:
            kept.append((i, item))
    return next((pair for pair in kept if pair[1].get("ground_truth") is True), kept[0] if kept else None)


def _result_entities(text: str, item: dict, where: str, path: str | os.PathLike[str], line: int) -> list[Entity]:
    results = item.get("result")
    if results is None:
        results = []
    if not isinstance(results, list):
        raise DatasetFormatError(path, line, f"{where}: 'result' must be a list, got {type(results).__name__}")
    entities: list[Entity] = []
    to_names: set[Any] = set()
    for j, result in enumerate(results):
        here = f"{where}.result[{j}]"
        if not isinstance(result, dict):
            raise DatasetFormatError(path, line, f"{here}: expected an object, got {type(result).__name__}")
        kind = result.get("type")
        if kind in NON_SPAN_RESULTS:
            continue
        if kind != "labels":
            raise DatasetFormatError(
                path, line, f"{here}: result type {kind!r} is not a span of a plain text (expected 'labels', from a "
                "<Labels> tag over a <Text>)"
            )
        to_names.add(result.get("to_name"))
        if len(to_names) > 1:
            names = ", ".join(sorted(repr(n) for n in to_names))
            raise DatasetFormatError(path, line, f"{here}: the task's spans label different texts (to_name {names})")
        entities += region_entities(text, result.get("value"), here, path, line)
    return entities


def region_entities(text: str, value: Any, where: str, path: str | os.PathLike[str], line: int) -> list[Entity]:
    """The entities of one region ``{"start", "end", "text"?, "labels"}``: one per label."""
    if not isinstance(value, dict):
        raise DatasetFormatError(path, line, f"{where}: 'value' must be an object, got {type(value).__name__}")
    check_fields(value, VALUE_FIELDS, "label-studio", path, line)
    missing = [k for k in ("start", "end", "labels") if k not in value]
    if missing:
        raise DatasetFormatError(path, line, f"{where}: missing {', '.join(missing)}")
    start, end, labels = value["start"], value["end"], value["labels"]
    if not (_is_int(start) and _is_int(end)):
        raise DatasetFormatError(path, line, f"{where}: 'start' and 'end' must be integers")
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
        raise DatasetFormatError(path, line, f"{where}: 'labels' must be a non-empty list of label names")
    surface = value.get("text")
    if surface is not None and not isinstance(surface, str):
        raise DatasetFormatError(path, line, f"{where}: 'text' must be a string")
    start, end = _code_points(text, start, end, surface, where, path, line)
    return [Entity.at(text, start, end, label) for label in labels]


def _code_points(
    text: str, start: int, end: int, surface: str | None, where: str, path: str | os.PathLike[str], line: int
) -> tuple[int, int]:
    if 0 <= start < end <= len(text) and (surface is None or text[start:end] == surface):
        return start, end
    if surface is not None:
        cp_start, cp_end = from_utf16(text, [start, end])
        if cp_start is not None and cp_end is not None and cp_start < cp_end and text[cp_start:cp_end] == surface:
            return cp_start, cp_end  # offsets in UTF-16 code units (Label Studio before 1.x), confirmed by the text
        if 0 <= start < end <= len(text):
            raise DatasetFormatError(
                path, line, f"{where}: text {surface!r} does not match text[{start}:{end}] = {text[start:end]!r}, "
                "in code points or in UTF-16 code units"
            )
    raise DatasetFormatError(path, line, f"{where}: span [{start}, {end}) outside a text of {len(text)} characters")


def is_region_list(value: Any) -> bool:
    """Whether a JSON-MIN field holds text regions: a non-empty list of objects with ``labels``."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "labels" in v for v in value)


def min_record_to_example(
    obj: dict, path: str | os.PathLike[str], line: int, index: int, text_key: str = "text"
) -> Example:
    """The :class:`Example` of one JSON-MIN record (found at ``path:line``)."""
    text = _text(obj, text_key, path, line, "the record (a JSON-MIN record, having no 'data')")
    entities: list[Entity] = []
    for field, value in obj.items():
        if field != text_key and is_region_list(value):
            for j, region in enumerate(value):
                entities += region_entities(text, region, f"{field}[{j}]", path, line)
    return Example(text=text, entities=entities, id=_example_id(obj.get("id"), path, index))


# --- writing -------------------------------------------------------------------------------------------


def example_to_task(
    example: Example, index: int = 0, *, kind: str = "annotations", from_name: str = "label", to_name: str = "text",
    text_key: str = "text", model_version: str = "nerve", score: float | None = None,
) -> dict:
    """The Label Studio task of an example: its text (and id) in ``data``, its entities as one annotation or
    one prediction (``kind``). Region ids are ``<index>-<entity index>``, unique in a file of tasks. A
    prediction's regions carry their entity's ``score``, and without ``score`` the prediction's is the lowest
    of them (when every entity has one)."""
    if kind not in KINDS:
        raise ValueError(f"unknown Label Studio task kind {kind!r} (expected one of: {', '.join(KINDS)})")
    data: dict[str, Any] = {text_key: example.text}
    if example.id is not None:
        data["id"] = example.id
    result = [
        {"id": f"{index}-{j}", "from_name": from_name, "to_name": to_name, "type": "labels",
         "value": {"start": e.start, "end": e.end, "text": e.text, "labels": [e.label]}}
        for j, e in enumerate(example.entities)
    ]
    if kind == "annotations":
        return {"data": data, "annotations": [{"result": result}]}
    scores = [e.score for e in example.entities]
    for region, s in zip(result, scores, strict=True):
        if s is not None:  # a region's own confidence, which Label Studio shows beside it
            region["score"] = float(s)
    prediction: dict[str, Any] = {"model_version": model_version, "result": result}
    if score is None and scores and all(s is not None for s in scores):
        score = min(scores)  # the task's confidence: its least sure entity (Label Studio sorts tasks by it)
    if score is not None:
        prediction["score"] = float(score)
    return {"data": data, "predictions": [prediction]}


def label_studio_lines(examples: Iterable[Example], **task_opts: Any) -> Iterator[str]:
    """The lines :func:`write_label_studio` writes: a JSON array with one task per line."""
    first = True
    for index, ex in enumerate(examples):
        yield ("[" if first else ",") + json.dumps(example_to_task(ex, index, **task_opts), ensure_ascii=False)
        first = False
    yield "[]" if first else "]"


def write_label_studio(
    examples: Iterable[Example], path: str | os.PathLike[str], kind: str = "annotations", from_name: str = "label",
    to_name: str = "text", text_key: str = "text", model_version: str = "nerve", score: float | None = None,
) -> None:
    """Write a JSON array of Label Studio tasks (UTF-8, ``ensure_ascii=False``), entities as ``kind``
    (``annotations`` or ``predictions``); see :func:`example_to_task`."""
    if kind not in KINDS:
        raise ValueError(f"unknown Label Studio task kind {kind!r} (expected one of: {', '.join(KINDS)})")
    write_lines(path, label_studio_lines(examples, kind=kind, from_name=from_name, to_name=to_name,
                                         text_key=text_key, model_version=model_version, score=score))

