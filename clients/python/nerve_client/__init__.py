"""Python SDK of the nerve named-entity extraction service.

>>> from nerve_client import Client                       # doctest: +SKIP
>>> with Client("127.0.0.1:50051") as client:
...     for e in client.extract("Angela Merkel visited Paris.").entities:
...         print(e.label, e.text, e.start, e.end)
PER Angela Merkel 0 13
LOC Paris 22 27
"""

from .client import AsyncClient, Client
from .errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NerveError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from .types import (
    Entity,
    EvalProgress,
    EvalReport,
    Example,
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

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "CancelledError", "Client", "DeadlineExceededError", "Entity", "EvalProgress", "EvalReport",
    "Example", "ExampleError", "ExtractResult", "FailedPreconditionError", "InternalError", "InvalidArgumentError",
    "Label", "LabelScore", "LatencySummary", "Limits", "ModelInfo", "NerveError", "NotFoundError",
    "PermissionDeniedError", "ResourceExhaustedError", "SchemaBounds", "TaskCard", "ThresholdPoint", "UnauthenticatedError",
    "UnavailableError", "UnimplementedError", "Usage", "__version__",
]
