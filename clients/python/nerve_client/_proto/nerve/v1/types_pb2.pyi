from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OffsetUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OFFSET_UNIT_UNSPECIFIED: _ClassVar[OffsetUnit]
    OFFSET_UNIT_CODE_POINT: _ClassVar[OffsetUnit]
    OFFSET_UNIT_UTF16: _ClassVar[OffsetUnit]
    OFFSET_UNIT_UTF8: _ClassVar[OffsetUnit]
OFFSET_UNIT_UNSPECIFIED: OffsetUnit
OFFSET_UNIT_CODE_POINT: OffsetUnit
OFFSET_UNIT_UTF16: OffsetUnit
OFFSET_UNIT_UTF8: OffsetUnit

class Entity(_message.Message):
    __slots__ = ("label", "text", "start", "end", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    text: str
    start: int
    end: int
    score: float
    def __init__(self, label: _Optional[str] = ..., text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "queue_seconds", "engine_seconds", "total_seconds", "cached_prompt_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    engine_seconds: float
    total_seconds: float
    cached_prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., queue_seconds: _Optional[float] = ..., engine_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class ExtractResult(_message.Message):
    __slots__ = ("entities", "usage", "raw", "hallucinated")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    HALLUCINATED_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    usage: Usage
    raw: str
    hallucinated: int
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., raw: _Optional[str] = ..., hallucinated: _Optional[int] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("text", "entities", "id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    id: str
    def __init__(self, text: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., id: _Optional[str] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class SchemaBounds(_message.Message):
    __slots__ = ("max_entities", "max_entity_chars")
    MAX_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTITY_CHARS_FIELD_NUMBER: _ClassVar[int]
    max_entities: int
    max_entity_chars: int
    def __init__(self, max_entities: _Optional[int] = ..., max_entity_chars: _Optional[int] = ...) -> None: ...

class TaskCard(_message.Message):
    __slots__ = ("name", "language", "template_id", "labels", "output_schema_json", "bounds", "base_model", "chat_template_sha256", "open_labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    OPEN_LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    template_id: str
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    output_schema_json: str
    bounds: SchemaBounds
    base_model: str
    chat_template_sha256: str
    open_labels: bool
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., template_id: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., output_schema_json: _Optional[str] = ..., bounds: _Optional[_Union[SchemaBounds, _Mapping]] = ..., base_model: _Optional[str] = ..., chat_template_sha256: _Optional[str] = ..., open_labels: bool = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_text_chars", "max_batch_texts", "max_batch_bytes", "max_message_bytes", "max_evaluate_examples")
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATE_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    max_text_chars: int
    max_batch_texts: int
    max_batch_bytes: int
    max_message_bytes: int
    max_evaluate_examples: int
    def __init__(self, max_text_chars: _Optional[int] = ..., max_batch_texts: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_evaluate_examples: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "revision", "engine", "structured_output_backend", "task_card", "limits", "server_version", "dtype", "dtype_reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    TASK_CARD_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    revision: str
    engine: str
    structured_output_backend: str
    task_card: TaskCard
    limits: Limits
    server_version: str
    dtype: str
    dtype_reason: str
    def __init__(self, model_name: _Optional[str] = ..., revision: _Optional[str] = ..., engine: _Optional[str] = ..., structured_output_backend: _Optional[str] = ..., task_card: _Optional[_Union[TaskCard, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., server_version: _Optional[str] = ..., dtype: _Optional[str] = ..., dtype_reason: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "precision", "recall", "f1", "support", "tp", "fp", "fn")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    FP_FIELD_NUMBER: _ClassVar[int]
    FN_FIELD_NUMBER: _ClassVar[int]
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    tp: int
    fp: int
    fn: int
    def __init__(self, label: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ..., tp: _Optional[int] = ..., fp: _Optional[int] = ..., fn: _Optional[int] = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50_seconds", "p90_seconds", "p99_seconds", "mean_seconds")
    P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P90_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    p50_seconds: float
    p90_seconds: float
    p99_seconds: float
    mean_seconds: float
    def __init__(self, p50_seconds: _Optional[float] = ..., p90_seconds: _Optional[float] = ..., p99_seconds: _Optional[float] = ..., mean_seconds: _Optional[float] = ...) -> None: ...

class ExampleError(_message.Message):
    __slots__ = ("index", "id", "missing", "spurious", "hallucinated", "parsed")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    SPURIOUS_FIELD_NUMBER: _ClassVar[int]
    HALLUCINATED_FIELD_NUMBER: _ClassVar[int]
    PARSED_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    missing: _containers.RepeatedCompositeFieldContainer[Entity]
    spurious: _containers.RepeatedCompositeFieldContainer[Entity]
    hallucinated: int
    parsed: bool
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., missing: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., spurious: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., hallucinated: _Optional[int] = ..., parsed: bool = ...) -> None: ...

class ScoreReport(_message.Message):
    __slots__ = ("labels", "micro", "macro", "exact_match", "parse_rate", "hallucination_rate", "examples", "latency", "errors", "gold", "predicted", "hallucinated", "unknown_labels", "elapsed_seconds", "prompt_tokens", "completion_tokens", "ignored_gold", "errors_omitted", "threshold_curve")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MICRO_FIELD_NUMBER: _ClassVar[int]
    MACRO_FIELD_NUMBER: _ClassVar[int]
    EXACT_MATCH_FIELD_NUMBER: _ClassVar[int]
    PARSE_RATE_FIELD_NUMBER: _ClassVar[int]
    HALLUCINATION_RATE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    HALLUCINATED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_LABELS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IGNORED_GOLD_FIELD_NUMBER: _ClassVar[int]
    ERRORS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_CURVE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    micro: LabelScore
    macro: LabelScore
    exact_match: float
    parse_rate: float
    hallucination_rate: float
    examples: int
    latency: LatencySummary
    errors: _containers.RepeatedCompositeFieldContainer[ExampleError]
    gold: int
    predicted: int
    hallucinated: int
    unknown_labels: _containers.RepeatedScalarFieldContainer[str]
    elapsed_seconds: float
    prompt_tokens: int
    completion_tokens: int
    ignored_gold: int
    errors_omitted: int
    threshold_curve: _containers.RepeatedCompositeFieldContainer[ThresholdPoint]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., micro: _Optional[_Union[LabelScore, _Mapping]] = ..., macro: _Optional[_Union[LabelScore, _Mapping]] = ..., exact_match: _Optional[float] = ..., parse_rate: _Optional[float] = ..., hallucination_rate: _Optional[float] = ..., examples: _Optional[int] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ..., errors: _Optional[_Iterable[_Union[ExampleError, _Mapping]]] = ..., gold: _Optional[int] = ..., predicted: _Optional[int] = ..., hallucinated: _Optional[int] = ..., unknown_labels: _Optional[_Iterable[str]] = ..., elapsed_seconds: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., ignored_gold: _Optional[int] = ..., errors_omitted: _Optional[int] = ..., threshold_curve: _Optional[_Iterable[_Union[ThresholdPoint, _Mapping]]] = ...) -> None: ...

class ThresholdPoint(_message.Message):
    __slots__ = ("threshold", "precision", "recall", "f1", "predicted")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    precision: float
    recall: float
    f1: float
    predicted: int
    def __init__(self, threshold: _Optional[float] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., predicted: _Optional[int] = ...) -> None: ...
