"""Exceptions of the service and the one place that maps them to gRPC status codes."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from nerve.engines.base import EngineDead, EngineError
from nerve.extraction import InputError, SchemaBudgetExceeded
from nerve.ner.readers import DatasetFormatError

log = logging.getLogger("nerve.service")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class CutOff(ServiceError):
    """The drain's grace period ended before the call finished."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Forbidden(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception. Bugs get a generic message."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if isinstance(exc, InputError | DatasetFormatError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, SchemaBudgetExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, EngineDead):
        return grpc.StatusCode.UNAVAILABLE, "the engine failed; retry on another replica"
    if isinstance(exc, EngineError):
        return grpc.StatusCode.INTERNAL, f"the engine failed (request id {REQUEST_ID.get()})"
    return grpc.StatusCode.INTERNAL, f"internal error (request id {REQUEST_ID.get()})"


MAX_REQUEST_ID = 128
"""Longest client request id kept; a longer one is cut."""
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:/@+=-]")


def clean_request_id(value: str | bytes) -> str:
    """A client's ``x-request-id`` made safe for logs and trailing metadata: cut to :data:`MAX_REQUEST_ID`
    characters, every character outside ``A-Z a-z 0-9 . _ : / @ + = -`` replaced by ``_``.

    gRPC clients refuse to send control characters in metadata, but other HTTP/2 clients can: without this a
    newline in the id would start a forged log line, and the id could not be sent back as a trailer.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _UNSAFE_ID_CHARS.sub("_", value[:MAX_REQUEST_ID])


def transport_of(metadata: Any) -> str:
    """``http`` for a call the HTTP/JSON gateway makes (:mod:`nerve.service.http`), else ``grpc``."""
    for key, value in metadata or ():
        if key == "x-nerve-transport" and value == "http":
            return "http"
    return "grpc"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return clean_request_id(value)
    return uuid.uuid4().hex


class Undecodable:
    """What :func:`decoding` gives for a request message that does not parse (the servicer wrappers turn it
    into INVALID_ARGUMENT, with the request id, like any other bad input)."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InputError:
        return InputError(f"the request is not a valid {self.type_name} message (is every string field valid"
                          " UTF-8?)")


def decoding(deserializer: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """``deserializer`` returning an :class:`Undecodable` instead of raising for a message that does not parse
    (a string field that is not valid UTF-8, a truncated message). gRPC itself would end such a call UNKNOWN,
    without a request id."""

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Undecodable(type_name)

    return decode


async def _decoded(messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream whose first message that did not parse raises INVALID_ARGUMENT."""
    async for message in messages:
        if isinstance(message, Undecodable):
            raise message.error()
        yield message


def _checked(request: Any) -> Any:
    """The request of a wrapped call: a message that did not parse raises; a request stream is checked as read."""
    if isinstance(request, Undecodable):
        raise request.error()
    if hasattr(request, "__aiter__"):
        return _decoded(request)
    return request


class RpcRecorder:
    """Per-call bookkeeping: request id, status code, metrics and the one log line."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext, metrics: Any):
        self.method = method
        self.context = context
        self.metrics = metrics
        self.rid = _request_id(context)
        self.transport = transport_of(context.invocation_metadata())
        self.token = REQUEST_ID.set(self.rid)
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.fields: dict[str, Any] = {}
        self.texts: list[str] | None = None
        """The request's texts, logged (as a JSON list, last on the line) when set: user data, opt-in only."""
        context.set_trailing_metadata((("x-request-id", self.rid),))

    async def fail(self, exc: BaseException) -> None:
        self.code, message = status_for(exc)
        if self.code == grpc.StatusCode.INTERNAL:
            log.exception("%s request_id=%s failed", self.method, self.rid, exc_info=exc)
        await self.context.abort(self.code, message)

    def cancelled(self) -> None:
        remaining = self.context.time_remaining()
        expired = remaining is not None and remaining <= 0
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    def close(self) -> None:
        elapsed = time.perf_counter() - self.start
        self.metrics.requests.labels(self.method, self.code.name, self.transport).inc()
        self.metrics.request_seconds.labels(self.method).observe(elapsed)
        parts = [f"{k}={v}" for k, v in self.fields.items()]
        if self.texts is not None:
            parts.append(f"request_texts={json.dumps(self.texts, ensure_ascii=False)}")
        extra = " ".join(parts)
        log.info("rpc=%s request_id=%s code=%s seconds=%.3f %s", self.method, self.rid, self.code.name, elapsed, extra)
        REQUEST_ID.reset(self.token)


def unary(method: str) -> Callable:
    """Wrap a unary servicer method with request ids, status mapping, metrics and logging."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            rec = RpcRecorder(method, context, self.metrics)
            calls = _track(self)
            try:
                return await fn(self, _checked(request), context, rec)
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:  # noqa: BLE001 - mapped to a status; CancelledError re-raised
                if _is_cancel(exc):
                    await _cancelled(self, rec, exc)
                    raise
                await rec.fail(exc)
            finally:
                calls.discard(asyncio.current_task())
                rec.close()

        return wrapper

    return deco


def streaming(method: str) -> Callable:
    """The same for a server-streaming (async generator) servicer method."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rec = RpcRecorder(method, context, self.metrics)
            calls = _track(self)
            try:
                async for item in fn(self, _checked(request), context, rec):
                    yield item
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:  # noqa: BLE001
                if _is_cancel(exc):
                    await _cancelled(self, rec, exc)
                    raise
                await rec.fail(exc)
            finally:
                calls.discard(asyncio.current_task())
                rec.close()

        return wrapper

    return deco


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError | GeneratorExit)


def _track(servicer: Any) -> set:
    """Register the running call with the server state (the drain waits for these tasks)."""
    state = getattr(servicer, "state", None)
    calls = state.calls if state is not None else set()
    calls.add(asyncio.current_task())
    return calls


async def _cancelled(servicer: Any, rec: RpcRecorder, exc: BaseException) -> None:
    """A cancelled call: cancelled by its client, by its deadline, or by the end of the drain's grace period.

    In the last case the client gets UNAVAILABLE with a message saying so (this raises AbortError) and the
    call is counted in ``nerve_drain_cancelled_total``.
    """
    state = getattr(servicer, "state", None)
    if state is not None and state.cut_off and isinstance(exc, asyncio.CancelledError):
        servicer.metrics.drain_cancelled.inc()
        await rec.fail(CutOff("the server shut down before the call finished (drain grace period over); retry"))
    rec.cancelled()
