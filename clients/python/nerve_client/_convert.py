"""Translation between the generated protobuf messages and the SDK's dataclasses (no I/O here)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ._proto.nerve.v1 import service_pb2 as pb
from ._proto.nerve.v1 import types_pb2 as tpb
from .types import (
    Entity,
    EvalProgress,
    EvalReport,
    ExampleError,
    ExtractResult,
    Label,
    LabelScore,
    LatencySummary,
    Limits,
    ModelInfo,
    SchemaBounds,
    TaskCard,
    ThresholdPoint,
    Usage,
)

DATASET_FORMATS: Mapping[str, int] = {
    "auto": pb.DATASET_FORMAT_UNSPECIFIED,
    "jsonl": pb.DATASET_FORMAT_JSONL,
    "cluener": pb.DATASET_FORMAT_CLUENER,
    "conll": pb.DATASET_FORMAT_CONLL,
    "bmes": pb.DATASET_FORMAT_BMES,
}


# ---------------------------------------------------------------------------------------------- requests


Labels = Iterable[str] | Mapping[str, str] | None
"""Label names, or a mapping of names to descriptions (descriptions need a task card with open labels)."""


def _labels(labels: Labels) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str):
        return [labels]
    return list(labels)


def _descriptions(labels: Labels) -> dict[str, str]:
    if isinstance(labels, Mapping):
        return {str(k): str(v) for k, v in labels.items() if v}
    return {}


def _max_entities(max_entities: int | None) -> int:
    if max_entities is None:
        return 0
    if max_entities < 1:
        raise ValueError(f"max_entities must be >= 1 (or None for the task's bound), got {max_entities}")
    return int(max_entities)


OFFSET_UNITS = {"code_points": tpb.OFFSET_UNIT_CODE_POINT, "utf16": tpb.OFFSET_UNIT_UTF16, "utf8": tpb.OFFSET_UNIT_UTF8}
"""``offsets=`` values: code points (Python ``str`` indices), UTF-16 code units (JavaScript, Java, C#), UTF-8 bytes."""


def offset_unit(offsets: str) -> int:
    try:
        return OFFSET_UNITS[offsets]
    except KeyError:
        raise ValueError(f"offsets must be one of {', '.join(OFFSET_UNITS)}, not {offsets!r}") from None


def _min_score(min_score: float | None) -> float:
    if min_score is None:
        return 0.0
    value = float(min_score)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_score must be in [0, 1] (or None for all entities), got {min_score}")
    return value


def extract_request(
    text: str, labels: Labels, max_entities: int | None, return_raw: bool, offsets: str = "code_points",
    min_score: float | None = None,
) -> pb.ExtractRequest:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return pb.ExtractRequest(
        text=text, labels=_labels(labels), max_entities=_max_entities(max_entities), return_raw=bool(return_raw),
        label_descriptions=_descriptions(labels), offset_unit=offset_unit(offsets), min_score=_min_score(min_score),
    )


def extract_batch_request(
    texts: Iterable[str], labels: Labels, max_entities: int | None, return_raw: bool, offsets: str = "code_points",
    min_score: float | None = None,
) -> pb.ExtractBatchRequest:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a str (use extract() for one text)")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a str")
    return pb.ExtractBatchRequest(
        texts=texts, labels=_labels(labels), max_entities=_max_entities(max_entities), return_raw=bool(return_raw),
        label_descriptions=_descriptions(labels), offset_unit=offset_unit(offsets), min_score=_min_score(min_score),
    )


def evaluate_config(
    *,
    inline: bool,
    expected_examples: int | None,
    dataset_path: str | None,
    format: str | None,
    scheme: str | None,
    labels: Iterable[str] | None,
    max_entities: int | None,
    limit: int | None,
    include_errors: bool,
) -> pb.EvaluateRequest:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for all examples), got {limit}")
    config = pb.EvaluateConfig(
        limit=int(limit or 0),
        include_errors=bool(include_errors),
        labels=_labels(labels),
        max_entities=_max_entities(max_entities),
    )
    if inline:
        if format is not None or scheme is not None:
            raise ValueError("format and scheme apply to dataset_path only")
        total = expected_examples if expected_examples is not None else 0
        if limit is not None and total:
            total = min(total, limit)
        config.inline_examples.CopyFrom(pb.InlineSource(expected_examples=total))
    else:
        key = (format or "auto").lower()
        if key not in DATASET_FORMATS:
            raise ValueError(f"unknown dataset format {format!r}; choose one of {sorted(DATASET_FORMATS)}")
        config.dataset.CopyFrom(pb.DatasetSource(path=str(dataset_path), format=DATASET_FORMATS[key],
                                                 scheme=scheme or ""))
    return pb.EvaluateRequest(config=config)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def entity_to_proto(entity: Any) -> tpb.Entity:
    """An Entity (ours, ``nerve.ner.types.Entity`` or a mapping with label/text/start/end) as a message."""
    try:
        return tpb.Entity(
            label=str(_get(entity, "label")), text=str(_get(entity, "text")),
            start=int(_get(entity, "start")), end=int(_get(entity, "end")),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an entity (need label, text, start, end): {entity!r}") from exc


def example_to_proto(example: Any) -> tpb.Example:
    """An :class:`Example`, a mapping or any object with ``text``/``entities`` (and ``id``) as a message."""
    text = _get(example, "text")
    if not isinstance(text, str):
        raise ValueError(f"an example needs a str text, got {example!r}")
    ex_id = _get(example, "id")
    return tpb.Example(
        text=text,
        entities=[entity_to_proto(e) for e in (_get(example, "entities") or ())],
        id="" if ex_id is None else str(ex_id),
    )


def evaluate_requests(
    config: pb.EvaluateRequest, examples: Iterable[Any] | None, limit: int | None, sink: list[BaseException]
) -> Iterator[pb.EvaluateRequest]:
    """The request stream: the config, then (inline) up to ``limit`` examples.

    A conversion error ends the stream early and is put into ``sink``, for the caller to cancel the call and
    raise it (an exception raised inside gRPC's request thread would only surface as a vague UNKNOWN).
    """
    yield config
    if examples is None:
        return
    try:
        for i, example in enumerate(examples):
            if limit is not None and i >= limit:
                return
            yield pb.EvaluateRequest(example=example_to_proto(example))
    except Exception as exc:  # noqa: BLE001 - handed to the caller through ``sink``
        sink.append(exc)


async def evaluate_requests_async(
    config: pb.EvaluateRequest, examples: Any, limit: int | None, sink: list[BaseException]
):
    """:func:`evaluate_requests` for an iterable or an async iterable of examples."""
    if not hasattr(examples, "__aiter__"):
        for request in evaluate_requests(config, examples, limit, sink):
            yield request
        return
    yield config
    i = 0
    try:
        async for example in examples:
            if limit is not None and i >= limit:
                return
            yield pb.EvaluateRequest(example=example_to_proto(example))
            i += 1
    except Exception as exc:  # noqa: BLE001
        sink.append(exc)


# --------------------------------------------------------------------------------------------- responses


def entity_from_proto(m: tpb.Entity) -> Entity:
    return Entity(label=m.label, text=m.text, start=m.start, end=m.end,
                  score=m.score if m.HasField("score") else None)


def _entities(ms: Sequence[tpb.Entity]) -> tuple[Entity, ...]:
    return tuple(entity_from_proto(m) for m in ms)


def usage_from_proto(m: tpb.Usage) -> Usage:
    return Usage(
        prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens, queue_seconds=m.queue_seconds,
        engine_seconds=m.engine_seconds, total_seconds=m.total_seconds, cached_prompt_tokens=m.cached_prompt_tokens,
    )


def extract_result_from_proto(
    m: pb.ExtractResponse | tpb.ExtractResult, return_raw: bool, request_id: str | None
) -> ExtractResult:
    return ExtractResult(
        entities=_entities(m.entities),
        usage=usage_from_proto(m.usage),
        raw=m.raw if return_raw else None,
        hallucinated=m.hallucinated,
        request_id=request_id,
    )


def label_score_from_proto(m: tpb.LabelScore) -> LabelScore:
    return LabelScore(
        label=m.label, precision=m.precision, recall=m.recall, f1=m.f1, support=m.support, tp=m.tp, fp=m.fp,
        fn=m.fn,
    )


def progress_from_proto(m: pb.EvaluateProgress) -> EvalProgress:
    return EvalProgress(
        done=m.done, total=m.total if m.HasField("total") else None, elapsed_seconds=m.elapsed_seconds
    )


def report_from_proto(m: tpb.ScoreReport, request_id: str | None) -> EvalReport:
    lat = m.latency
    return EvalReport(
        labels={s.label: label_score_from_proto(s) for s in m.labels},
        micro=label_score_from_proto(m.micro),
        macro=label_score_from_proto(m.macro),
        exact_match=m.exact_match,
        parse_rate=m.parse_rate,
        hallucination_rate=m.hallucination_rate,
        examples=m.examples,
        latency=LatencySummary(p50=lat.p50_seconds, p90=lat.p90_seconds, p99=lat.p99_seconds,
                               mean=lat.mean_seconds),
        errors=tuple(
            ExampleError(
                index=e.index, id=e.id or None, missing=_entities(e.missing), spurious=_entities(e.spurious),
                hallucinated=e.hallucinated, parsed=e.parsed,
            )
            for e in m.errors
        ),
        gold=m.gold,
        predicted=m.predicted,
        hallucinated=m.hallucinated,
        unknown_labels=tuple(m.unknown_labels),
        elapsed_seconds=m.elapsed_seconds,
        prompt_tokens=m.prompt_tokens,
        completion_tokens=m.completion_tokens,
        request_id=request_id,
        ignored_gold=m.ignored_gold,
        errors_omitted=m.errors_omitted,
        threshold_curve=tuple(ThresholdPoint(threshold=p.threshold, precision=p.precision, recall=p.recall, f1=p.f1,
                                             predicted=p.predicted) for p in m.threshold_curve),
    )


def model_info_from_proto(m: tpb.ModelInfo) -> ModelInfo:
    card = None
    if m.HasField("task_card"):
        c = m.task_card
        card = TaskCard(
            name=c.name,
            language=c.language,
            template_id=c.template_id,
            labels=tuple(Label(name=lab.name, description=lab.description) for lab in c.labels),
            output_schema_json=c.output_schema_json,
            bounds=SchemaBounds(max_entities=c.bounds.max_entities, max_entity_chars=c.bounds.max_entity_chars),
            base_model=c.base_model or None,
            chat_template_sha256=c.chat_template_sha256 or None,
            open_labels=c.open_labels,
        )
    lim = m.limits
    return ModelInfo(
        model_name=m.model_name,
        revision=m.revision,
        engine=m.engine,
        structured_output_backend=m.structured_output_backend,
        task_card=card,
        limits=Limits(
            max_text_chars=lim.max_text_chars, max_batch_texts=lim.max_batch_texts,
            max_batch_bytes=lim.max_batch_bytes, max_message_bytes=lim.max_message_bytes,
            max_evaluate_examples=lim.max_evaluate_examples,
        ),
        server_version=m.server_version,
        dtype=m.dtype,
        dtype_reason=m.dtype_reason,
    )


def examples_hint(examples: Any) -> int | None:
    """The number of examples when the iterable knows it (for the server's progress total)."""
    try:
        return len(examples)
    except TypeError:
        return None

