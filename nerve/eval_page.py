"""``NAME.html``: an evaluation's predictions against gold, example by example, in the manner of displaCy's entities.

Each example shows its text twice, once marked with the gold entities and once with the predictions, every mark
coloured by its category from :mod:`nerve.ner.errors_analysis` and carrying its label; a prediction the text does
not contain is listed below. Entities of one row that overlap (nested gold entities, overlapping predictions) are
drawn on extra lines of that row, so every entity has exactly one mark. The page opens with the per-type scores,
the error counts and the confusion matrix, a legend, and a switch that hides the examples without errors. It
shows a bounded sample (:class:`~nerve.predictions.ErrorsFirst`: examples with errors first, in run order) and
says how many examples it leaves out.

The page is one self-contained file (no network), rendered with jinja2 from the package's
``templates/eval_page.html.j2`` with autoescaping: every text from the data is escaped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nerve.ner.errors_analysis import Category, ErrorAnalysis
from nerve.ner.scoring import ScoreReport

from .predictions import has_errors

__all__ = ["TEMPLATE", "Mark", "Segment", "lanes", "render_page", "write_page"]

TEMPLATE = "templates/eval_page.html.j2"
"""The page's template, package data of ``nerve``."""

COLOURS: dict[Category, str] = {
    Category.CORRECT: "#a7e3b5",
    Category.WRONG_TYPE: "#ffc98b",
    Category.BOUNDARY: "#fff27a",
    Category.WRONG_TYPE_AND_BOUNDARY: "#d7b8f5",
    Category.MISSED: "#ff9f9f",
    Category.SPURIOUS: "#9fd0ff",
}
"""Background of a mark of each category."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One entity drawn on the page."""

    label: str
    text: str
    category: str
    title: str
    """The tooltip: the category and the entity it was aligned to."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of text on one line of a row, marked by at most one entity."""

    text: str
    mark: Mark | None = None


def lanes(text: str, spans: Sequence[tuple[int, int, Mark]]) -> list[list[Segment]]:
    """Lay out ``(start, end, mark)`` spans over ``text`` on as few lines as keep them apart.

    Each line is the whole text cut into segments, at most one mark per segment and each span on exactly one
    line; a span goes on the first line where it overlaps nothing already placed (spans sorted by start, longer
    first, so an outer entity sits above the ones nested in it). Without spans: one unmarked line.
    """
    placed: list[list[tuple[int, int, Mark]]] = []
    for start, end, mark in sorted(spans, key=lambda s: (s[0], -s[1], s[2].label)):
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span [{start}, {end}) outside a text of {len(text)} characters")
        for line in placed:
            if line[-1][1] <= start:
                line.append((start, end, mark))
                break
        else:
            placed.append([(start, end, mark)])
    out: list[list[Segment]] = []
    for line in placed or [[]]:
        segments, at = [], 0
        for start, end, mark in line:
            if start > at:
                segments.append(Segment(text[at:start]))
            segments.append(Segment(text[start:end], mark))
            at = end
        if at < len(text) or not segments:
            segments.append(Segment(text[at:]))
        out.append(segments)
    return out


def _describe(entity: dict[str, Any] | None) -> str:
    if entity is None:
        return "nothing"
    where = f" [{entity['start']}, {entity['end']})" if entity.get("start") is not None else " (not in the text)"
    return f"{entity['label']} \u201c{entity['text']}\u201d{where}"


def _example_view(record: dict[str, Any]) -> dict[str, Any]:
    """What the template draws of one record of :mod:`nerve.predictions`."""
    partner: dict[tuple[str, int, int, str], dict[str, Any] | None] = {}
    for err in record["errors"]:
        for side, other in (("gold", "predicted"), ("predicted", "gold")):
            e = err[side]
            if e is not None and e.get("start") is not None:
                partner[side, e["start"], e["end"], e["label"]] = err[other]

    def spans(side: str) -> list[tuple[int, int, Mark]]:
        out = []
        for e in record[side]:
            category = Category(e["category"])
            if category is Category.CORRECT:
                title = "correct"
            else:
                other = "prediction" if side == "gold" else "gold"
                title = f"{category.title}; {other}: {_describe(partner.get((side, e['start'], e['end'], e['label'])))}"
            out.append((e["start"], e["end"], Mark(e["label"], e["text"], category.value, title)))
        return out

    counts: dict[str, int] = {}
    for err in record["errors"]:
        counts[err["category"]] = counts.get(err["category"], 0) + 1
    return {
        "index": record["index"],
        "id": record.get("id"),
        "parsed": record["parsed"],
        "wrong": has_errors(record),
        "errors": [(Category(c).title, n) for c, n in sorted(counts.items(), key=lambda kv: list(Category).index(
            Category(kv[0])))],
        "gold": lanes(record["text"], spans("gold")),
        "predicted": lanes(record["text"], spans("predicted")),
        "hallucinated": [Mark(m["label"], m["text"], Category.SPURIOUS.value,
                              "spurious; predicted but not found in the text") for m in record["hallucinated"]],
    }


@functools.cache
def _template() -> Any:
    import jinja2

    source = resources.files("nerve").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.from_string(source)


def render_page(records: Sequence[dict[str, Any]], *, report: ScoreReport, analysis: ErrorAnalysis | None,
                title: str, meta: dict[str, Any] | None = None, total: int | None = None,
                total_with_errors: int | None = None) -> str:
    """The HTML page of ``records`` (from :mod:`nerve.predictions`), with the scores of ``report`` and the error
    counts and confusion matrix of ``analysis`` at the top. ``total`` and ``total_with_errors`` are the run's
    examples and those with errors, when ``records`` is a sample of them (default: the records themselves)."""
    shown_with_errors = sum(has_errors(r) for r in records)
    labels = analysis.labels if analysis is not None else []
    return _template().render(
        title=title,
        meta=meta or {},
        report=report,
        analysis=analysis,
        categories=[(c.value, c.title, COLOURS[c]) for c in Category],
        confusion=list(zip(labels, analysis.matrix(), strict=True)) if analysis is not None else [],
        confusion_labels=labels,
        by_label=analysis.by_label() if analysis is not None else {},
        examples=[_example_view(r) for r in records],
        shown=len(records),
        shown_with_errors=shown_with_errors,
        total=len(records) if total is None else total,
        total_with_errors=shown_with_errors if total_with_errors is None else total_with_errors,
    )


def write_page(path: Path, records: Sequence[dict[str, Any]], **kwargs: Any) -> Path:
    """Write :func:`render_page` of ``records`` (same keyword arguments) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(records, **kwargs), encoding="utf-8")
    return path
