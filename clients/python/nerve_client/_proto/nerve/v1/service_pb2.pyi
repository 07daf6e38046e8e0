from . import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_JSONL: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CLUENER: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CONLL: _ClassVar[DatasetFormat]
    DATASET_FORMAT_BMES: _ClassVar[DatasetFormat]
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_JSONL: DatasetFormat
DATASET_FORMAT_CLUENER: DatasetFormat
DATASET_FORMAT_CONLL: DatasetFormat
DATASET_FORMAT_BMES: DatasetFormat

class ExtractRequest(_message.Message):
    __slots__ = ("text", "labels", "max_entities", "return_raw", "label_descriptions", "offset_unit", "min_score")
    class LabelDescriptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    RETURN_RAW_FIELD_NUMBER: _ClassVar[int]
    LABEL_DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_UNIT_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    text: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_entities: int
    return_raw: bool
    label_descriptions: _containers.ScalarMap[str, str]
    offset_unit: _types_pb2.OffsetUnit
    min_score: float
    def __init__(self, text: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., max_entities: _Optional[int] = ..., return_raw: bool = ..., label_descriptions: _Optional[_Mapping[str, str]] = ..., offset_unit: _Optional[_Union[_types_pb2.OffsetUnit, str]] = ..., min_score: _Optional[float] = ...) -> None: ...

class ExtractResponse(_message.Message):
    __slots__ = ("entities", "usage", "raw", "hallucinated")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    HALLUCINATED_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[_types_pb2.Entity]
    usage: _types_pb2.Usage
    raw: str
    hallucinated: int
    def __init__(self, entities: _Optional[_Iterable[_Union[_types_pb2.Entity, _Mapping]]] = ..., usage: _Optional[_Union[_types_pb2.Usage, _Mapping]] = ..., raw: _Optional[str] = ..., hallucinated: _Optional[int] = ...) -> None: ...

class ExtractBatchRequest(_message.Message):
    __slots__ = ("texts", "labels", "max_entities", "return_raw", "label_descriptions", "offset_unit", "min_score")
    class LabelDescriptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    RETURN_RAW_FIELD_NUMBER: _ClassVar[int]
    LABEL_DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_UNIT_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_entities: int
    return_raw: bool
    label_descriptions: _containers.ScalarMap[str, str]
    offset_unit: _types_pb2.OffsetUnit
    min_score: float
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., max_entities: _Optional[int] = ..., return_raw: bool = ..., label_descriptions: _Optional[_Mapping[str, str]] = ..., offset_unit: _Optional[_Union[_types_pb2.OffsetUnit, str]] = ..., min_score: _Optional[float] = ...) -> None: ...

class ExtractBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_types_pb2.ExtractResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.ExtractResult, _Mapping]]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("config", "example")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    config: EvaluateConfig
    example: _types_pb2.Example
    def __init__(self, config: _Optional[_Union[EvaluateConfig, _Mapping]] = ..., example: _Optional[_Union[_types_pb2.Example, _Mapping]] = ...) -> None: ...

class EvaluateConfig(_message.Message):
    __slots__ = ("inline_examples", "dataset", "limit", "include_errors", "labels", "max_entities")
    INLINE_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    inline_examples: InlineSource
    dataset: DatasetSource
    limit: int
    include_errors: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_entities: int
    def __init__(self, inline_examples: _Optional[_Union[InlineSource, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSource, _Mapping]] = ..., limit: _Optional[int] = ..., include_errors: bool = ..., labels: _Optional[_Iterable[str]] = ..., max_entities: _Optional[int] = ...) -> None: ...

class InlineSource(_message.Message):
    __slots__ = ("expected_examples",)
    EXPECTED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    expected_examples: int
    def __init__(self, expected_examples: _Optional[int] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("path", "format", "scheme")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    path: str
    format: DatasetFormat
    scheme: str
    def __init__(self, path: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., scheme: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluateProgress
    report: _types_pb2.ScoreReport
    def __init__(self, progress: _Optional[_Union[EvaluateProgress, _Mapping]] = ..., report: _Optional[_Union[_types_pb2.ScoreReport, _Mapping]] = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("done", "total", "elapsed_seconds")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    elapsed_seconds: float
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_info",)
    MODEL_INFO_FIELD_NUMBER: _ClassVar[int]
    model_info: _types_pb2.ModelInfo
    def __init__(self, model_info: _Optional[_Union[_types_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
