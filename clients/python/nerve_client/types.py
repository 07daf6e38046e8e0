"""Typed results (and inputs) of the nerve API: frozen dataclasses with no protobuf in sight.

Offsets are Unicode code point indices (Python ``str`` indices) into the text the entity belongs to,
``start`` inclusive and ``end`` exclusive: ``text[entity.start:entity.end] == entity.text``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Entity", "EvalProgress", "EvalReport", "Example", "ExampleError", "ExtractResult", "Label", "LabelScore",
    "LatencySummary", "Limits", "ModelInfo", "SchemaBounds", "TaskCard", "ThresholdPoint", "Usage",
]


@dataclass(frozen=True, slots=True)
class Entity:
    """A labelled span: ``text == source_text[start:end]`` (code points, end exclusive)."""

    label: str
    text: str
    start: int
    end: int
    score: float | None = field(default=None, compare=False)
    """The model's confidence in the entity, in (0, 1] (``None`` where the model gives none); not part of the
    entity's identity: entities that differ only in score are equal."""

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "text": self.text, "start": self.start, "end": self.end}
        if self.score is not None:
            out["score"] = self.score
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and server-side timings of one extraction."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0
    """Waiting in the server's queue."""
    engine_seconds: float = 0.0
    """In the engine (prefill and decoding)."""
    total_seconds: float = 0.0
    """Server receipt to result ready (for a batch item: from the batch's arrival)."""
    cached_prompt_tokens: int = 0
    """Prompt tokens the server took from its prefix cache instead of computing them."""


@dataclass(frozen=True, slots=True)
class ExtractResult:
    """The entities of one text, in order of occurrence."""

    entities: tuple[Entity, ...]
    usage: Usage
    raw: str | None = None
    """The model's raw JSON answer, when asked for with ``return_raw=True``."""
    hallucinated: int = 0
    """Mentions the model produced that were not found in the text (dropped)."""
    request_id: str | None = None
    """The call's request id (as echoed by the server), for support and log correlation."""

    def __iter__(self):
        return iter(self.entities)

    def __len__(self) -> int:
        return len(self.entities)


@dataclass(frozen=True, slots=True)
class Example:
    """A text with its gold entities, sent up by :meth:`Client.evaluate`.

    ``evaluate`` also accepts mappings ``{"text", "entities": [{label, text, start, end}], "id"?}`` and any
    object with ``text`` and ``entities`` attributes (such as ``nerve.ner.types.Example``).
    """

    text: str
    entities: tuple[Entity, ...] = ()
    id: str | None = None


@dataclass(frozen=True, slots=True)
class LabelScore:
    """Precision, recall and F1 with the counts behind them (``support`` = tp + fn)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Server-side per-example latency percentiles, in seconds."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    mean: float = 0.0


@dataclass(frozen=True, slots=True)
class ExampleError:
    """The mistakes on one evaluated example."""

    index: int
    """0-based position in the evaluated sequence."""
    id: str | None
    missing: tuple[Entity, ...]
    """Gold entities not predicted."""
    spurious: tuple[Entity, ...]
    """Predicted entities that are not gold."""
    hallucinated: int = 0
    parsed: bool = True


@dataclass(frozen=True, slots=True)
class EvalProgress:
    """Progress of a running evaluation."""

    done: int
    total: int | None
    """Examples the run will score, when the server knows: a dataset's size, the number of examples the client
    said it would send while it is still sending (a list's length; a generator has none), then the number sent."""
    elapsed_seconds: float

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


@dataclass(frozen=True, slots=True)
class ThresholdPoint:
    """Micro precision and recall counting only predictions scored at least ``threshold``."""

    threshold: float
    precision: float
    recall: float
    f1: float
    predicted: int


@dataclass(frozen=True)
class EvalReport:
    """Scores of an evaluation run (strict span matching on ``(start, end, label)``)."""

    labels: dict[str, LabelScore]
    """Per-label scores, in the task card's order, then other gold labels sorted."""
    micro: LabelScore
    macro: LabelScore
    exact_match: float
    parse_rate: float
    hallucination_rate: float
    examples: int
    latency: LatencySummary
    errors: tuple[ExampleError, ...] = ()
    """Per-example mistakes (only with ``include_errors=True``) of the first examples (see ``errors_omitted``)."""
    gold: int = 0
    predicted: int = 0
    hallucinated: int = 0
    unknown_labels: tuple[str, ...] = ()
    """Gold labels the task card does not know (scored: their entities are false negatives)."""
    elapsed_seconds: float = 0.0
    """Seconds on the server, from receiving the run's config to the report."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = None
    ignored_gold: int = 0
    """Gold entities left out of scoring: their card label is outside the ``labels`` the run asked for."""
    errors_omitted: int = 0
    """Examples with mistakes that ``errors`` leaves out (the server bounds the list in number and size)."""
    threshold_curve: tuple[ThresholdPoint, ...] = ()
    """Precision/recall over the entity-score threshold (0.00 to 0.99); empty when the model gives no scores."""

    @property
    def f1(self) -> float:
        """Micro-averaged F1, the headline number."""
        return self.micro.f1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    def to_markdown(self, digits: int = 4) -> str:
        """A per-label table with the averages and run-level rates."""

        def row(name: str, s: LabelScore) -> str:
            return f"| {name} | {s.precision:.{digits}f} | {s.recall:.{digits}f} | {s.f1:.{digits}f} | {s.support} |"

        lines = ["| label | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [row(name, s) for name, s in self.labels.items()]
        lines += [row("**micro**", self.micro), row("**macro**", self.macro), ""]
        lines.append(
            f"examples {self.examples}, exact match {self.exact_match:.{digits}f}, parse rate "
            f"{self.parse_rate:.{digits}f}, hallucination rate {self.hallucination_rate:.{digits}f}, "
            f"latency p50/p90/p99 {self.latency.p50:.3f}/{self.latency.p90:.3f}/{self.latency.p99:.3f} s"
        )
        if self.unknown_labels:
            lines.append(f"gold labels the task card does not know: {', '.join(self.unknown_labels)}")
        if self.ignored_gold:
            lines.append(f"{self.ignored_gold} gold entities of labels outside the requested ones were ignored")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class SchemaBounds:
    max_entities: int
    """Most entities one answer may hold; the upper limit of ``max_entities``."""
    max_entity_chars: int


@dataclass(frozen=True, slots=True)
class TaskCard:
    """The served checkpoint's task: labels, prompt template and output schema."""

    name: str
    language: str
    template_id: str
    labels: tuple[Label, ...]
    output_schema_json: str
    bounds: SchemaBounds
    base_model: str | None = None
    chat_template_sha256: str | None = None
    open_labels: bool = False
    """Whether requests may name labels outside ``labels`` (then the default list)."""

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The output JSON Schema, parsed (``None`` when the server sent none)."""
        return json.loads(self.output_schema_json) if self.output_schema_json else None


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits the server enforces (0: not reported / unlimited)."""

    max_text_chars: int = 0
    max_batch_texts: int = 0
    max_batch_bytes: int = 0
    max_message_bytes: int = 0
    max_evaluate_examples: int = 0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server runs."""

    model_name: str
    revision: str
    engine: str
    structured_output_backend: str
    task_card: TaskCard | None
    limits: Limits = field(default_factory=Limits)
    server_version: str = ""
    dtype: str = ""
    """The dtype the model runs in (``bfloat16``, ``float16``, ``float32``)."""
    dtype_reason: str = ""
