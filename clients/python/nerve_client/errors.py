"""Exceptions of the nerve client, one per gRPC status code the service uses.

Every error the client raises for a failed call is a :class:`NerveError` carrying the status ``code``, the
server's ``details`` message and the ``request_id`` (from the trailing metadata ``x-request-id``, else the id
the client sent), so a failure can be matched with the server's logs.
"""

from __future__ import annotations

import grpc

__all__ = [
    "CancelledError", "DeadlineExceededError", "FailedPreconditionError", "InternalError", "InvalidArgumentError",
    "NerveError", "NotFoundError", "PermissionDeniedError", "ResourceExhaustedError", "UnauthenticatedError",
    "UnavailableError", "UnimplementedError", "from_rpc_error",
]

REQUEST_ID_KEY = "x-request-id"


class NerveError(Exception):
    """A failed call. Subclasses name the status code; other codes (e.g. UNKNOWN) raise this class."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        """Whether retrying the same call later may succeed (see :func:`is_retryable`)."""
        return is_retryable(self.code, self.message)

    def __str__(self) -> str:
        code = self.code.name if self.code is not None else "ERROR"
        rid = f" [request id {self.request_id}]" if self.request_id else ""
        return f"{code}: {self.message}{rid}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code}, request_id={self.request_id!r})"


class InvalidArgumentError(NerveError):
    """Bad input: empty or too long text, unknown label, out-of-range option, malformed example."""


class NotFoundError(NerveError):
    """A named resource (an Evaluate dataset) does not exist."""


class PermissionDeniedError(NerveError):
    """Authenticated, but not allowed (e.g. an Evaluate dataset path outside the operator's directories)."""


class FailedPreconditionError(NerveError):
    """The server cannot serve the call as is (e.g. a malformed server-side dataset)."""


class UnauthenticatedError(NerveError):
    """Missing or wrong bearer token."""


class ResourceExhaustedError(NerveError):
    """The server's queue is full (retried with backoff), or a message is larger than allowed (not retried)."""


class UnavailableError(NerveError):
    """The server is unreachable, loading its model or draining; retried with backoff."""


class DeadlineExceededError(NerveError):
    """The call's deadline passed before it completed; never retried."""


class CancelledError(NerveError):
    """The call was cancelled (by the server shutting down, or by this client)."""


class UnimplementedError(NerveError):
    """The server does not implement the method (an older or different server)."""


class InternalError(NerveError):
    """A server bug; the message is generic, the request id finds the details in the server's logs."""


_BY_CODE: dict[grpc.StatusCode, type[NerveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def is_retryable(code: grpc.StatusCode | None, details: str = "") -> bool:
    """UNAVAILABLE, and RESOURCE_EXHAUSTED unless gRPC reports a message over the size limit."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "larger than max" not in details  # gRPC's own "Received/Sent message larger than max (a vs. b)"
    return False


def _metadata_value(metadata, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def request_id_of(call, fallback: str | None = None) -> str | None:
    """The ``x-request-id`` of a finished call (trailing, then initial metadata), else ``fallback``."""
    for getter in ("trailing_metadata", "initial_metadata"):
        try:
            value = _metadata_value(getattr(call, getter)(), REQUEST_ID_KEY)
        except Exception:  # noqa: BLE001 - metadata is best effort (e.g. a call that never started)
            value = None
        if value:
            return value
    return fallback


def from_rpc_error(err: grpc.RpcError, request_id: str | None = None) -> NerveError:
    """The :class:`NerveError` subclass for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    ``request_id`` is used when the server did not send one back (e.g. it was unreachable).
    """
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or (code.name if code else "unknown error")
    cls = _BY_CODE.get(code, NerveError)
    return cls(details, code=code, request_id=request_id_of(err, request_id))
