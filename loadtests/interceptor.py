"""A gRPC client interceptor that reports every call as a locust ``request`` event.

It does not import locust: it is given the function to call (``environment.events.request.fire`` inside
locust, a recorder in tests), with locust's keyword arguments: ``request_type`` ("grpc"), ``name`` (the RPC's
method name, e.g. ``Extract``), ``response_time`` (milliseconds), ``response_length`` (serialized bytes of the
response messages), ``response``, ``context``, ``exception`` (``None`` or a :class:`GrpcCallError`) and
``start_time`` (epoch seconds).

Unary responses are timed until the response (or error) arrives. Streamed responses (``Evaluate``) are timed
until the stream ends, i.e. until the caller has read the last message; the event fires then, once, with the
summed size of all messages. A stream the caller abandons before its end reports nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

Fire = Callable[..., Any]


class GrpcCallError(Exception):
    """A failed call, as locust records it: ``CODE: details`` (short, so failures group by cause)."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        self.code = code
        self.details = details or ""
        name = code.name if code is not None else "UNKNOWN"
        super().__init__(f"{name}: {self.details}" if self.details else name)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> GrpcCallError:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code, details)


def method_name(full_method: str | bytes) -> str:
    """``/nerve.v1.NerveService/Extract`` -> ``Extract``."""
    if isinstance(full_method, bytes):
        full_method = full_method.decode()
    return full_method.rsplit("/", 1)[-1]


def _size(message: Any) -> int:
    try:
        return int(message.ByteSize())
    except Exception:  # noqa: BLE001 - a non-protobuf response (custom serializer) has no size
        return 0


class LocustInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Fires one event per call. Use with ``grpc.intercept_channel(channel, LocustInterceptor(fire))``."""

    def __init__(self, fire: Fire, request_type: str = "grpc", context: dict[str, Any] | None = None) -> None:
        self._fire = fire
        self._request_type = request_type
        self._context = context or {}

    def report(self, name: str, started: float, start_time: float, length: int, exception: Exception | None,
               response: Any = None) -> None:
        self._fire(
            request_type=self._request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            response=response,
            context=self._context,
            exception=exception,
            start_time=start_time,
        )

    # unary responses -----------------------------------------------------------------------------------

    def _unary_response(self, continuation, details, request_or_iterator):
        start_time, started = time.time(), time.perf_counter()
        call = continuation(details, request_or_iterator)
        try:
            response = call.result()  # waits; raises the call (an RpcError) on failure
        except grpc.RpcError as e:
            self.report(method_name(details.method), started, start_time, 0, GrpcCallError.from_rpc_error(e))
        else:
            self.report(method_name(details.method), started, start_time, _size(response), None, response)
        return call

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return self._unary_response(continuation, client_call_details, request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return self._unary_response(continuation, client_call_details, request_iterator)

    # streamed responses --------------------------------------------------------------------------------

    def _stream_response(self, continuation, details, request_or_iterator):
        start_time, started = time.time(), time.perf_counter()
        call = continuation(details, request_or_iterator)
        return _TimedStream(call, self, method_name(details.method), started, start_time)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return self._stream_response(continuation, client_call_details, request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return self._stream_response(continuation, client_call_details, request_iterator)


class _TimedStream:
    """Wraps a response-streaming call: iterates it, then fires the event when it ends or fails.

    Every other attribute (``code()``, ``details()``, ``cancel()``, ``trailing_metadata()``...) is the call's.
    """

    def __init__(self, call: Any, interceptor: LocustInterceptor, name: str, started: float, start_time: float):
        self._call = call
        self._interceptor = interceptor
        self._name = name
        self._started = started
        self._start_time = start_time
        self._length = 0
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            message = next(self._call)
        except StopIteration:
            self._finish(None)
            raise
        except grpc.RpcError as e:
            self._finish(GrpcCallError.from_rpc_error(e))
            raise
        self._length += _size(message)
        return message

    def _finish(self, exception: Exception | None) -> None:
        if not self._done:
            self._done = True
            self._interceptor.report(self._name, self._started, self._start_time, self._length, exception)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
