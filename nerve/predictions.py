"""What one evaluated example leaves behind: its record in ``NAME.predictions.jsonl``, streamed as examples are scored.

One JSON object per line (see :func:`prediction_record`)::

    {"index": 0, "id": "dev-1", "text": "...", "parsed": true,
     "gold": [{"label": "PER", "text": "...", "start": 0, "end": 3, "category": "correct"}, ...],
     "predicted": [{"label": "PER", "text": "...", "start": 0, "end": 3, "category": "correct"}, ...],
     "hallucinated": [{"label": "LOC", "text": "..."}],
     "errors": [{"category": "boundary", "gold": {...}, "predicted": {...}}, ...]}

``gold`` and ``predicted`` are the example's unique entities (a duplicate counts once, as in the scorer), each with
its category from :mod:`nerve.ner.errors_analysis`; ``hallucinated`` are predicted mentions the text does not
contain; ``errors`` are the alignments that are not ``correct`` (a ``hallucinated`` mention is a ``spurious`` one
whose prediction has no ``start`` and ``end``).

:class:`EvalSink` takes each result as it is scored, counts it into an :class:`ErrorAnalysis`, writes its line
(:class:`PredictionsWriter`) and offers it to the HTML page's bounded sample (:class:`ErrorsFirst`); nothing
grows with the number of examples except the file.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from nerve.ner.errors_analysis import Alignment, Category, ErrorAnalysis
from nerve.ner.parsing import Mention
from nerve.ner.types import Entity, Example

__all__ = ["ErrorsFirst", "EvalSink", "PredictionsWriter", "has_errors", "prediction_record", "read_predictions"]


def prediction_record(index: int, example: Example, alignments: Sequence[Alignment], *, parsed: bool = True,
                      hallucinated: Sequence[Mention] = ()) -> dict[str, Any]:
    """The JSON record of the ``index``-th example of a run, from its :func:`~nerve.ner.errors_analysis.align`
    alignments (see the module docstring for the fields)."""
    gold = [{**a.gold.to_dict(), "category": a.category.value} for a in alignments if a.gold is not None]
    pred = [{**a.pred.to_dict(), "category": a.category.value} for a in alignments if isinstance(a.pred, Entity)]
    gold.sort(key=lambda e: (e["start"], e["end"], e["label"]))
    pred.sort(key=lambda e: (e["start"], e["end"], e["label"]))
    return {
        "index": index,
        "id": example.id,
        "text": example.text,
        "parsed": parsed,
        "gold": gold,
        "predicted": pred,
        "hallucinated": [{"label": m.label, "text": m.text} for m in hallucinated],
        "errors": [a.to_dict() for a in alignments if a.category is not Category.CORRECT],
    }


def has_errors(record: dict[str, Any]) -> bool:
    """Whether a record shows a mistake: an entity that is not correct, or an answer that did not parse."""
    return bool(record["errors"]) or not record["parsed"]


class PredictionsWriter:
    """Writes records to a JSONL file in run order (``index``) while they arrive in any order.

    A record that arrives before those of lower index waits in a buffer; the buffer is bounded by
    ``max_pending``: past it the lowest waiting record is written anyway, so a stuck example cannot make the
    buffer hold the run. Each line is written once. The lines go to ``PATH.partial``, which :meth:`close` renames
    to ``path`` and :meth:`abort` deletes, so an interrupted run leaves no file that looks complete. As a context
    manager it closes on success and aborts on an exception.
    """

    def __init__(self, path: Path, *, max_pending: int = 4096) -> None:
        if max_pending < 0:
            raise ValueError(f"max_pending must be >= 0, got {max_pending}")
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._file: IO[str] | None = self.partial.open("w", encoding="utf-8")
        self._max_pending = max_pending
        self._pending: list[tuple[int, str]] = []  # min-heap on the index
        self._next = 0
        self.written = 0
        """Lines written so far."""
        self.out_of_order = 0
        """Lines written before a record of lower index (the buffer was full)."""

    def __enter__(self) -> PredictionsWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def _emit(self, index: int, line: str) -> None:
        assert self._file is not None
        self._file.write(line)
        self.written += 1
        if index < self._next:  # a lower index was written out of order before; it stays behind us
            return
        self.out_of_order += index > self._next
        self._next = index + 1

    def write(self, record: dict[str, Any]) -> None:
        """Add the record of example ``record["index"]``."""
        if self._file is None:
            raise ValueError(f"{self.path}: the predictions file is closed")
        heapq.heappush(self._pending, (int(record["index"]), json.dumps(record, ensure_ascii=False) + "\n"))
        while self._pending and (self._pending[0][0] <= self._next or len(self._pending) > self._max_pending):
            self._emit(*heapq.heappop(self._pending))

    def close(self) -> None:
        """Write what is still waiting (in index order), close the file and move it to :attr:`path`."""
        if self._file is None:
            return
        while self._pending:
            self._emit(*heapq.heappop(self._pending))
        self._file.close()
        self._file = None
        self.partial.replace(self.path)

    def abort(self) -> None:
        """Close and delete the partial file (nothing at :attr:`path` is touched)."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        self._pending.clear()
        self.partial.unlink(missing_ok=True)


def read_predictions(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a predictions file, one at a time; a line that is not a JSON object is a ``ValueError``
    naming the file and line."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            yield record


class ErrorsFirst:
    """A bounded sample of records for a page: the first ``limit`` records (in run order) with errors, then, to
    fill up to ``limit``, the first ones without. Holds at most ``2 * limit`` records at any time."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self.seen = 0
        """Records offered."""
        self.seen_with_errors = 0
        """Records offered that have errors."""
        self._heaps: tuple[list[tuple[int, int, dict[str, Any]]], ...] = ([], [])  # max-heaps on the index
        self._order = 0

    def add(self, record: dict[str, Any]) -> None:
        """Offer one record."""
        wrong = has_errors(record)
        self.seen += 1
        self.seen_with_errors += wrong
        if not self.limit:
            return
        heap = self._heaps[0 if wrong else 1]
        item = (-int(record["index"]), -self._order, record)  # the order breaks ties of an index seen twice
        self._order += 1
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:  # a lower index than the highest kept
            heapq.heapreplace(heap, item)

    def records(self) -> list[dict[str, Any]]:
        """The sample: records with errors in run order, then those without, at most ``limit`` in all."""
        errors, ok = (sorted(h, reverse=True) for h in self._heaps)
        return [r for _, _, r in (errors + ok)[: self.limit]]


class EvalSink:
    """Takes each evaluated example (in any order): counts its alignments into :attr:`analysis`, writes its record
    to ``predictions`` (a JSONL path, or None for no file) and keeps up to ``page_examples`` records for a page
    (:attr:`sample`). Use it as a context manager (the file is finished on success, deleted on an exception), or
    call :meth:`close`."""

    def __init__(self, labels: Iterable[str] | None = None, *, predictions: Path | None = None,
                 page_examples: int = 0) -> None:
        self.analysis = ErrorAnalysis(labels)
        self.writer = PredictionsWriter(predictions) if predictions is not None else None
        self.sample = ErrorsFirst(page_examples)

    def __enter__(self) -> EvalSink:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.writer is not None:
            self.writer.__exit__(exc_type, *exc)

    def add(self, index: int, example: Example, predicted: Sequence[Entity], *, parsed: bool = True,
            hallucinated: Sequence[Mention] = ()) -> dict[str, Any]:
        """Analyse the ``index``-th example against its prediction; returns its record."""
        alignments = self.analysis.add_example(example.entities, predicted, hallucinated)
        record = prediction_record(index, example, alignments, parsed=parsed, hallucinated=hallucinated)
        if self.writer is not None:
            self.writer.write(record)
        self.sample.add(record)
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
