"""Error analysis: each gold and predicted entity of an example classified, and a confusion matrix of types.

The categories are those of the MUC-style and SemEval-2013 (task 9.1) analysis that ``nervaluate`` implements:

* ``correct``: same span, same label;
* ``wrong_type``: same span, another label;
* ``boundary``: overlapping spans, same label;
* ``wrong_type_and_boundary``: overlapping spans, another label;
* ``missed``: a gold entity with no prediction aligned to it;
* ``spurious``: a prediction with no gold entity aligned to it.

Gold and predicted entities are aligned one to one, as MUC's scorer aligns keys and responses, so every entity
has exactly one category and the confusion matrix adds up: its row of a label sums to that label's gold entities,
its column to that label's predictions. Pairs are chosen tier by tier, each tier only among the entities no
earlier tier took: exact matches, then same spans, then overlapping spans of the same label, then overlapping
spans of other labels; within a tier the largest overlap goes first, then the leftmost pair. An entity left over is
missed or spurious. It usually overlaps nothing; it can overlap an entity aligned to a better partner (a mention
predicted twice, split in two, or nested gold entities), and is still counted once, as missed or spurious.

As in :mod:`nerve.ner.scoring`, the gold and predicted entities of an example are sets (a duplicate counts once),
and a predicted mention the text does not contain (``hallucinated``) is a spurious prediction of its label without
a span. So the ``correct`` entities are the strict scorer's true positives, the other predictions its false
positives and the other gold entities its false negatives.

:func:`align` classifies one example; :class:`ErrorAnalysis` accumulates the counts and the matrix over a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .parsing import Mention
from .types import Entity

__all__ = ["NONE", "Alignment", "Category", "ErrorAnalysis", "align"]

NONE = "(none)"
"""The row (no gold entity: spurious) and column (no prediction: missed) of the confusion matrix."""


class Category(StrEnum):
    """What became of one gold or predicted entity (see the module docstring)."""

    CORRECT = "correct"
    WRONG_TYPE = "wrong_type"
    BOUNDARY = "boundary"
    WRONG_TYPE_AND_BOUNDARY = "wrong_type_and_boundary"
    MISSED = "missed"
    SPURIOUS = "spurious"

    @property
    def title(self) -> str:
        """The category in words, for reports."""
        return self.value.replace("_", " ")


@dataclass(frozen=True, slots=True)
class Alignment:
    """A gold entity and the prediction aligned to it; one of them is None for a missed or spurious entity.

    ``pred`` is a :class:`~nerve.ner.parsing.Mention` (no span) for a prediction the text does not contain.
    """

    category: Category
    gold: Entity | None
    pred: Entity | Mention | None

    @property
    def gold_label(self) -> str:
        """The matrix row: the gold entity's label, or :data:`NONE`."""
        return self.gold.label if self.gold is not None else NONE

    @property
    def pred_label(self) -> str:
        """The matrix column: the prediction's label, or :data:`NONE`."""
        return self.pred.label if self.pred is not None else NONE

    def to_dict(self) -> dict[str, Any]:
        """``{"category", "gold", "predicted"}``; a prediction without a span has only ``label`` and ``text``."""
        pred: dict[str, Any] | None = None
        if isinstance(self.pred, Entity):
            pred = self.pred.to_dict()
        elif self.pred is not None:
            pred = {"label": self.pred.label, "text": self.pred.text}
        return {"category": self.category.value, "gold": None if self.gold is None else self.gold.to_dict(),
                "predicted": pred}


def _overlap(a: Entity, b: Entity) -> int:
    return min(a.end, b.end) - max(a.start, b.start)


def _unique(entities: Iterable[Entity]) -> list[Entity]:
    """One entity per ``(start, end, label)``, sorted by offset."""
    return sorted({e.key: e for e in entities}.values())


def align(gold: Sequence[Entity], pred: Sequence[Entity], hallucinated: Sequence[Mention] = ()) -> list[Alignment]:
    """Classify every gold and predicted entity of one example (see the module docstring).

    Returns one alignment per unique gold entity and per unique prediction (a pair counts for both), then one
    ``spurious`` alignment per ``hallucinated`` mention; sorted by the position of the gold entity, else of the
    prediction, hallucinated mentions last.
    """
    golds, preds = _unique(gold), _unique(pred)
    free_g, free_p = set(range(len(golds))), set(range(len(preds)))
    out: list[Alignment] = []

    def pair(tier: Category, candidates: list[tuple[Any, int, int]]) -> None:
        for _, i, j in sorted(candidates):
            if i in free_g and j in free_p:
                free_g.discard(i)
                free_p.discard(j)
                out.append(Alignment(tier, golds[i], preds[j]))

    by_key = {p.key: j for j, p in enumerate(preds)}
    pair(Category.CORRECT, [((), i, by_key[g.key]) for i, g in enumerate(golds) if g.key in by_key])
    overlapping = [(i, j) for i, g in enumerate(golds) for j, p in enumerate(preds)
                   if i in free_g and j in free_p and _overlap(g, p) > 0]
    same_span = [(i, j) for i, j in overlapping if (golds[i].start, golds[i].end) == (preds[j].start, preds[j].end)]
    pair(Category.WRONG_TYPE, [((golds[i].label, preds[j].label), i, j) for i, j in same_span])

    def ranked(same_label: bool) -> list[tuple[Any, int, int]]:
        return [((-_overlap(golds[i], preds[j]), golds[i].start, preds[j].start, preds[j].end), i, j)
                for i, j in overlapping if (golds[i].label == preds[j].label) == same_label]

    pair(Category.BOUNDARY, ranked(True))
    pair(Category.WRONG_TYPE_AND_BOUNDARY, ranked(False))
    out += [Alignment(Category.MISSED, golds[i], None) for i in sorted(free_g)]
    out += [Alignment(Category.SPURIOUS, None, preds[j]) for j in sorted(free_p)]

    def position(a: Alignment) -> tuple[int, int, str]:
        e = a.gold if a.gold is not None else a.pred
        assert isinstance(e, Entity)
        return e.start, e.end, e.label

    out.sort(key=position)
    return out + [Alignment(Category.SPURIOUS, None, m) for m in hallucinated]


class ErrorAnalysis:
    """Category counts and a confusion matrix of types over the examples added (see the module docstring).

    ``labels`` fixes the order of the matrix's rows and columns (as :class:`~nerve.ner.scoring.Scorer`'s do);
    other labels met follow them, sorted, and :data:`NONE` comes last.
    """

    def __init__(self, labels: Iterable[str] | None = None) -> None:
        self._fixed: tuple[str, ...] = tuple(dict.fromkeys(labels or ()))
        self._cells: Counter[tuple[str, str]] = Counter()
        self._categories: Counter[Category] = Counter()
        self._by_label: dict[str, Counter[Category]] = {}
        self.examples = 0
        """Examples added."""
        self.with_errors = 0
        """Examples with at least one entity that is not ``correct``."""

    def add(self, alignments: Iterable[Alignment]) -> list[Alignment]:
        """Count one example's alignments (from :func:`align`); returns them as a list."""
        items = list(alignments)
        for a in items:
            self._cells[a.gold_label, a.pred_label] += 1
            self._categories[a.category] += 1
            # per label: gold-side categories count under the gold label, spurious under the predicted one
            label = a.pred_label if a.category is Category.SPURIOUS else a.gold_label
            self._by_label.setdefault(label, Counter())[a.category] += 1
        self.examples += 1
        self.with_errors += any(a.category is not Category.CORRECT for a in items)
        return items

    def add_example(self, gold: Sequence[Entity], pred: Sequence[Entity],
                    hallucinated: Sequence[Mention] = ()) -> list[Alignment]:
        """:func:`align` one example and count it; returns its alignments."""
        return self.add(align(gold, pred, hallucinated))

    @property
    def labels(self) -> list[str]:
        """The matrix's labels: the fixed ones, the others seen (sorted), then :data:`NONE`."""
        seen = {label for cell in self._cells for label in cell} - {NONE}
        return [*self._fixed, *sorted(seen - set(self._fixed)), NONE]

    @property
    def categories(self) -> dict[str, int]:
        """Count of each category, every category present (0 when none)."""
        return {c.value: self._categories[c] for c in Category}

    @property
    def errors(self) -> int:
        """Entities (gold or predicted, a pair counted once) that are not ``correct``."""
        return sum(n for c, n in self._categories.items() if c is not Category.CORRECT)

    def by_label(self) -> dict[str, dict[str, int]]:
        """Category counts per label: gold-side categories under the gold label, ``spurious`` under the predicted
        one (a ``wrong_type`` pair counts for its gold label)."""
        return {label: {c.value: self._by_label.get(label, Counter())[c] for c in Category}
                for label in self.labels[:-1]}

    def matrix(self) -> list[list[int]]:
        """``matrix[i][j]``: entities of gold label ``labels[i]`` aligned to a prediction of label ``labels[j]``
        (the last row, :data:`NONE`, holds the spurious predictions; the last column the missed gold entities)."""
        labels = self.labels
        return [[self._cells[g, p] for p in labels] for g in labels]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the categories, the per-label counts and the confusion matrix."""
        return {
            "examples": self.examples,
            "examples_with_errors": self.with_errors,
            "categories": self.categories,
            "by_label": self.by_label(),
            "confusion": {"rows": "gold", "columns": "predicted", "labels": self.labels, "matrix": self.matrix()},
        }

    def to_markdown(self) -> str:
        """Markdown: category counts per label, then the confusion matrix (rows gold, columns predicted)."""
        cats = list(Category)
        lines = [
            "| label | " + " | ".join(c.title for c in cats) + " |",
            "|---|" + "---:|" * len(cats),
            *(f"| {label} | " + " | ".join(str(counts[c.value]) for c in cats) + " |"
              for label, counts in self.by_label().items()),
            "| **all** | " + " | ".join(str(self._categories[c]) for c in cats) + " |",
            "",
            f"- examples with errors: {self.with_errors} of {self.examples}",
            "",
            "Confusion of types (rows: gold, columns: predicted; `(none)`: missed or spurious):",
            "",
        ]
        labels = self.labels
        lines += ["| gold \\ predicted | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        lines += [f"| {g} | " + " | ".join(str(n) for n in row) + " |" for g, row in zip(labels, self.matrix(),
                                                                                      strict=True)]
        return "\n".join(lines) + "\n"
