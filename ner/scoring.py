"""Strict span-level NER scoring.

A predicted entity is correct when its ``(start, end, label)`` equals a gold entity's. Gold and predicted
entities of one example are sets: a duplicate counts once. Precision, recall and F1 are reported per label,
micro-averaged (over all entities) and macro-averaged (unweighted mean of the per-label values over labels
that have gold entities or predictions). A ratio with a zero denominator is 0, and F1 is 0 when
precision + recall is 0.

Besides span scores the report carries run-level rates: ``exact_match`` (examples whose predicted set equals
the gold set), ``parse_rate`` (examples whose model answer parsed) and ``hallucination_rate`` (predicted
mentions that could not be found in the text, over those plus the grounded predictions). When the caller passes
the labels of the hallucinated mentions, each also counts as a false positive of its label (a wrong prediction
is wrong whether or not it can be placed in the text) and the example is not an exact match; a bare count only
enters the hallucination rate.

When predictions carry confidence scores (:attr:`Entity.score`), the report also has a precision/recall curve
over a score threshold (:attr:`ScoreReport.curve`): at threshold ``t`` only predictions scored ``>= t`` count
(hallucinated mentions included, with their scores, as false positives), recall keeps all gold entities as its
denominator. Scores are kept in :data:`SCORE_BINS` bins, so memory does not grow with the examples; a
duplicate prediction counts with its highest score. The curve is empty when any prediction has no score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .types import Entity

__all__ = ["CURVE_THRESHOLDS", "LabelScore", "SCORE_BINS", "ScoreReport", "Scorer", "ThresholdPoint", "score"]

SCORE_BINS = 1000
"""Resolution of the score histogram behind the threshold curve (bins of width 1/1000 on [0, 1])."""
CURVE_THRESHOLDS: tuple[float, ...] = tuple(i / 100 for i in range(100))
"""Thresholds of :attr:`ScoreReport.curve`: 0.00, 0.01, ..., 0.99."""


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


@dataclass(frozen=True, slots=True)
class LabelScore:
    """Precision, recall and F1 with the counts behind them (``support`` = gold entities = tp + fn)."""

    precision: float
    recall: float
    f1: float
    support: int
    tp: int
    fp: int
    fn: int

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> LabelScore:
        """The score of ``tp`` true positives, ``fp`` false positives and ``fn`` false negatives."""
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        return cls(precision=p, recall=r, f1=_f1(p, r), support=tp + fn, tp=tp, fp=fp, fn=fn)

    @property
    def predicted(self) -> int:
        """Number of predicted entities (tp + fp)."""
        return self.tp + self.fp

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _macro(scores: Iterable[LabelScore]) -> LabelScore:
    """Unweighted mean of precision, recall and F1; summed counts."""
    items = list(scores)
    n = len(items)
    return LabelScore(
        precision=_ratio(sum(s.precision for s in items), n),
        recall=_ratio(sum(s.recall for s in items), n),
        f1=_ratio(sum(s.f1 for s in items), n),
        support=sum(s.support for s in items),
        tp=sum(s.tp for s in items),
        fp=sum(s.fp for s in items),
        fn=sum(s.fn for s in items),
    )


@dataclass(frozen=True, slots=True)
class ThresholdPoint:
    """Micro precision, recall and F1 counting only predictions scored at least ``threshold``."""

    threshold: float
    precision: float
    recall: float
    f1: float
    predicted: int
    """Predictions kept at this threshold (grounded and hallucinated)."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _bin(score: float) -> int:
    return min(SCORE_BINS - 1, max(0, int(score * SCORE_BINS)))


@dataclass(frozen=True)
class ScoreReport:
    """Scores of a run (see the module docstring for the definitions)."""

    labels: dict[str, LabelScore]
    """Per-label scores: the fixed labels in their order (if given), then other labels seen, sorted."""
    micro: LabelScore
    macro: LabelScore
    exact_match: float
    parse_rate: float
    hallucination_rate: float
    examples: int
    parsed: int
    """Examples whose answer parsed."""
    exact: int
    """Examples whose predicted entity set equals the gold set."""
    gold: int
    """Gold entities (unique per example)."""
    predicted: int
    """Grounded predicted entities (unique per example)."""
    hallucinated: int
    predicted_raw: int
    """Raw predictions as reported to :meth:`Scorer.add` (default: grounded + hallucinated, duplicates kept)."""
    unknown_labels: tuple[str, ...] = field(default=())
    """Labels seen in gold or predictions that are not in the scorer's fixed label list."""
    curve: tuple[ThresholdPoint, ...] = field(default=())
    """Precision/recall over the score threshold, at :data:`CURVE_THRESHOLDS` (see the module docstring)."""

    def at_threshold(self, threshold: float) -> ThresholdPoint | None:
        """The curve's point with the highest threshold ``<= threshold`` (``None`` without a curve)."""
        points = [p for p in self.curve if p.threshold <= threshold + 1e-12]
        return points[-1] if points else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the report."""
        return {
            "labels": {name: s.to_dict() for name, s in self.labels.items()},
            "micro": self.micro.to_dict(),
            "macro": self.macro.to_dict(),
            "exact_match": self.exact_match,
            "parse_rate": self.parse_rate,
            "hallucination_rate": self.hallucination_rate,
            "examples": self.examples,
            "parsed": self.parsed,
            "exact": self.exact,
            "gold": self.gold,
            "predicted": self.predicted,
            "hallucinated": self.hallucinated,
            "predicted_raw": self.predicted_raw,
            "unknown_labels": list(self.unknown_labels),
            "curve": [p.to_dict() for p in self.curve],
        }

    def to_markdown(self, digits: int = 4) -> str:
        """A Markdown table (one row per label, then micro and macro) followed by summary lines."""

        def row(name: str, s: LabelScore) -> str:
            return (
                f"| {name} | {s.precision:.{digits}f} | {s.recall:.{digits}f} | {s.f1:.{digits}f} "
                f"| {s.support} | {s.tp} | {s.fp} | {s.fn} |"
            )

        lines = [
            "| label | precision | recall | f1 | support | tp | fp | fn |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *(row(name, s) for name, s in self.labels.items()),
            row("**micro**", self.micro),
            row("**macro**", self.macro),
            "",
            f"- examples: {self.examples}",
            f"- exact match: {self.exact_match:.{digits}f} ({self.exact} of {self.examples})",
            f"- parse rate: {self.parse_rate:.{digits}f} ({self.parsed} of {self.examples})",
            f"- hallucination rate: {self.hallucination_rate:.{digits}f} "
            f"({self.hallucinated} of {self.hallucinated + self.predicted} predictions)",
        ]
        if self.unknown_labels:
            lines.append(f"- labels outside the label set: {', '.join(self.unknown_labels)}")
        if self.curve:
            best = max(self.curve, key=lambda p: (p.f1, -p.threshold))
            lines.append(f"- best score threshold: {best.threshold:.2f} (micro P {best.precision:.{digits}f}, "
                         f"R {best.recall:.{digits}f}, F1 {best.f1:.{digits}f})")
        return "\n".join(lines) + "\n"


class Scorer:
    """Accumulates strict span matches over examples; :meth:`report` gives the scores so far.

    ``labels`` fixes the per-label rows and their order (rows exist even without gold or predictions);
    other labels met are still scored, listed after them and named in :attr:`ScoreReport.unknown_labels`.
    """

    def __init__(self, labels: Iterable[str] | None = None) -> None:
        self._fixed: tuple[str, ...] | None = None if labels is None else tuple(dict.fromkeys(labels))
        self._tp: Counter[str] = Counter()
        self._fp: Counter[str] = Counter()
        self._fn: Counter[str] = Counter()
        self._examples = 0
        self._parsed = 0
        self._exact = 0
        self._hallucinated = 0
        self._hallucinated_fp = 0
        self._predicted_raw = 0
        self._tp_bins = [0] * SCORE_BINS
        self._fp_bins = [0] * SCORE_BINS
        self._unscored = 0

    def __len__(self) -> int:
        return self._examples

    def add(
        self,
        gold: Sequence[Entity],
        pred: Sequence[Entity],
        *,
        parsed: bool = True,
        hallucinated: int | Sequence[str] = 0,
        predicted_raw: int | None = None,
        hallucinated_scores: Sequence[float | None] | None = None,
    ) -> None:
        """Score one example.

        ``parsed``: whether the model's answer parsed (pass an empty ``pred`` when it did not);
        ``hallucinated``: predicted mentions dropped because their text is not in the input, as a count or as
        their labels (labels also count as false positives, see the module docstring);
        ``predicted_raw``: raw prediction count before grounding and de-duplication (for the report only);
        ``hallucinated_scores``: the scores of the hallucinated mentions, in the order of their labels (for the
        threshold curve; without them the curve is left out when there are hallucinated labels).
        """
        hallucinated_labels: Sequence[str] = ()
        if not isinstance(hallucinated, int):
            hallucinated_labels = list(hallucinated)
            hallucinated = len(hallucinated_labels)
        if hallucinated < 0:
            raise ValueError(f"hallucinated must be >= 0, got {hallucinated}")
        if predicted_raw is not None and predicted_raw < 0:
            raise ValueError(f"predicted_raw must be >= 0, got {predicted_raw}")
        gold_keys = {e.key for e in gold}
        pred_keys = {e.key for e in pred}
        for _, _, label in gold_keys & pred_keys:
            self._tp[label] += 1
        for _, _, label in pred_keys - gold_keys:
            self._fp[label] += 1
        for _, _, label in gold_keys - pred_keys:
            self._fn[label] += 1
        for label in hallucinated_labels:
            self._fp[label] += 1
        self._hallucinated_fp += len(hallucinated_labels)
        self._add_scores(pred, gold_keys, hallucinated_labels, hallucinated_scores)
        self._examples += 1
        self._parsed += bool(parsed)
        self._exact += gold_keys == pred_keys and not hallucinated_labels
        self._hallucinated += hallucinated
        self._predicted_raw += len(pred) + hallucinated if predicted_raw is None else predicted_raw

    def _add_scores(self, pred: Sequence[Entity], gold_keys: set, hallucinated_labels: Sequence[str],
                    hallucinated_scores: Sequence[float | None] | None) -> None:
        best: dict[tuple[int, int, str], float] = {}
        for e in pred:
            if e.score is None:
                self._unscored += 1
            else:
                best[e.key] = max(e.score, best.get(e.key, 0.0))
        for key, s in best.items():
            (self._tp_bins if key in gold_keys else self._fp_bins)[_bin(s)] += 1
        if hallucinated_labels:
            if hallucinated_scores is None or len(hallucinated_scores) != len(hallucinated_labels):
                self._unscored += len(hallucinated_labels)
                return
            for s in hallucinated_scores:
                if s is None:
                    self._unscored += 1
                else:
                    self._fp_bins[_bin(s)] += 1

    def _curve(self, gold: int) -> tuple[ThresholdPoint, ...]:
        if self._unscored or not (any(self._tp_bins) or any(self._fp_bins)):
            return ()
        points = []
        for t in CURVE_THRESHOLDS:
            first = round(t * SCORE_BINS)
            tp, fp = sum(self._tp_bins[first:]), sum(self._fp_bins[first:])
            p, r = _ratio(tp, tp + fp), _ratio(tp, gold)
            points.append(ThresholdPoint(threshold=t, precision=p, recall=r, f1=_f1(p, r), predicted=tp + fp))
        return tuple(points)

    def _label_order(self) -> tuple[list[str], tuple[str, ...]]:
        seen = set(self._tp) | set(self._fp) | set(self._fn)
        if self._fixed is None:
            return sorted(seen), ()
        unknown = tuple(sorted(seen - set(self._fixed)))
        return [*self._fixed, *unknown], unknown

    def report(self) -> ScoreReport:
        """The scores of the examples added so far."""
        order, unknown = self._label_order()
        labels = {name: LabelScore.from_counts(self._tp[name], self._fp[name], self._fn[name]) for name in order}
        tp, fp, fn = (sum(c.values()) for c in (self._tp, self._fp, self._fn))
        predicted = tp + fp - self._hallucinated_fp  # grounded predictions
        return ScoreReport(
            labels=labels,
            micro=LabelScore.from_counts(tp, fp, fn),
            macro=_macro(s for s in labels.values() if s.support or s.predicted),
            exact_match=_ratio(self._exact, self._examples),
            parse_rate=_ratio(self._parsed, self._examples),
            hallucination_rate=_ratio(self._hallucinated, self._hallucinated + predicted),
            examples=self._examples,
            parsed=self._parsed,
            exact=self._exact,
            gold=tp + fn,
            predicted=predicted,
            hallucinated=self._hallucinated,
            predicted_raw=self._predicted_raw,
            unknown_labels=unknown,
            curve=self._curve(tp + fn),
        )


def score(
    golds: Iterable[Sequence[Entity]], preds: Iterable[Sequence[Entity]], labels: Iterable[str] | None = None
) -> ScoreReport:
    """Score paired gold and predicted entity lists (all parsed, no hallucinations)."""
    scorer = Scorer(labels)
    for gold, pred in zip(golds, preds, strict=True):
        scorer.add(gold, pred)
    return scorer.report()
