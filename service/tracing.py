"""OpenTelemetry traces of the gRPC calls (``tracing: otlp``): one server span per call, exported over OTLP.

Each traced call gets a span named after its gRPC method (``nerve.v1.NerveService/Extract``), of kind SERVER,
with the attributes of OpenTelemetry's RPC conventions (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``) and the call's request id (``nerve.request_id``, the id echoed in the logs and the
``x-request-id`` trailer). A call that ends with any status but OK has the span status ERROR, described by its
status code and message. The caller's W3C ``traceparent`` and ``tracestate`` metadata make the span a child of
the caller's span, so that the call shows up inside the client's trace.

Health checks (``grpc.health.v1``) are not traced: the kubelet's probes would be most of the spans.

What the SDK does is configured by its standard environment variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) names the collector, ``OTEL_EXPORTER_OTLP_PROTOCOL`` is ``grpc`` (the
default, port 4317) or ``http/protobuf`` (port 4318), ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
describe the process (``service.name`` defaults to ``nerve``), ``OTEL_TRACES_SAMPLER`` samples (default: every
call whose caller did not decide otherwise), ``OTEL_PROPAGATORS`` chooses the header formats (default W3C trace
context and baggage), ``OTEL_BSP_*`` size the export batches.

OpenTelemetry is an optional dependency (``pip install 'nerve[otel]'``): this module imports it only when
tracing is on, so that with tracing off nothing of OpenTelemetry is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("nerve.server")

TRACING_MODES = ("off", "otlp")
"""Values of the ``tracing`` setting."""
UNTRACED_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods that get no span."""
REQUEST_ID_ATTRIBUTE = "nerve.request_id"
FLUSH_SECONDS = 5.0
"""Longest wait, when the server stops, for the spans still buffered to reach the collector."""
REQUIRED_MODULES = {
    "opentelemetry.sdk.trace": "opentelemetry-sdk",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter": "opentelemetry-exporter-otlp",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter": "opentelemetry-exporter-otlp",
}
"""The modules tracing needs, and the distribution that brings each."""
PROTOCOLS = ("grpc", "http/protobuf")


class TracingError(ValueError):
    """``tracing`` is on but cannot work: OpenTelemetry's SDK or OTLP exporter is not installed, or the
    environment asks for an OTLP protocol that is not supported."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def check_tracing(environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`TracingError`, naming what to install or to set, unless the SDK and the OTLP exporters
    are importable and the OTLP protocol asked for is one of :data:`PROTOCOLS`."""
    missing = sorted({dist for module, dist in REQUIRED_MODULES.items() if not _installed(module)})
    if missing:
        raise TracingError(f"tracing: otlp needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
                           " not installed: pip install 'nerve[otel]', or set tracing: off")
    otlp_protocol(environ)


def otlp_protocol(environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP transport from ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``."""
    value = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
             or "grpc").strip()
    if value not in PROTOCOLS:
        raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL is {value!r}; nerve exports traces over "
                           f"{' or '.join(PROTOCOLS)}")
    return value


def span_exporter() -> SpanExporter:
    """The OTLP span exporter for the protocol the environment asks for; the exporter itself reads the
    endpoint, headers, timeout and TLS settings (``OTEL_EXPORTER_OTLP_*``)."""
    if otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def tracer_provider(exporter: SpanExporter) -> TracerProvider:
    """A tracer provider of this process that sends its spans to ``exporter`` in batches."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from nerve import __version__

    resource = Resource.create({SERVICE_VERSION: __version__})  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "nerve"}))
    # The sampler comes from OTEL_TRACES_SAMPLER; the server shuts the provider down itself (Tracing.close).
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# The same table as nerve.service.server's, which imports this module (importing it back would be a cycle).
_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _carrier(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, list[str]]:
    """Text metadata as a propagator carrier: each key with all its values (binary ``-bin`` keys left out)."""
    carrier: dict[str, list[str]] = {}
    for key, value in metadata or ():
        if not key.endswith("-bin") and isinstance(value, str):
            carrier.setdefault(key.lower(), []).append(value)
    return carrier


class Tracing(grpc.aio.ServerInterceptor):
    """A server interceptor that runs each traced call inside its own span (the outermost interceptor, so that
    calls refused by the others, e.g. UNAUTHENTICATED, are traced too)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import propagate, trace

        from nerve import __version__

        self.provider = provider
        self._tracer: Tracer = provider.get_tracer("nerve.service", __version__)
        self._propagate = propagate
        self._trace = trace

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNTRACED_PREFIXES):
            return handler
        if handler.request_streaming:
            behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
        else:
            behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
        service, _, method = details.method.lstrip("/").rpartition("/")
        name = f"{service}/{method}"
        tracing = self

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = tracing._propagate.extract(_carrier(context.invocation_metadata()))
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            with tracing._tracer.start_as_current_span(name, context=parent, kind=tracing._trace.SpanKind.SERVER,
                                                       attributes=attributes, record_exception=False,
                                                       set_status_on_exception=False) as span:
                try:
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for response in result:
                            await context.write(response)
                        result = None
                    elif inspect.isawaitable(result):
                        result = await result
                    elif handler.response_streaming:  # a synchronous generator
                        for response in result:
                            await context.write(response)
                        result = None
                except grpc.aio.AbortError:
                    tracing._finish(span, context)
                    raise
                except asyncio.CancelledError:
                    remaining = context.time_remaining()
                    expired = remaining is not None and remaining <= 0
                    code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                    tracing._finish(span, context, code, "the call was cancelled")
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    tracing._finish(span, context, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
                    raise
                tracing._finish(span, context)
                return result

        factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(traced, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)

    def _finish(self, span: Span, context: grpc.aio.ServicerContext, code: grpc.StatusCode | None = None,
                message: str = "") -> None:
        """Record the call's status code, its request id, and for a status other than OK the error."""
        code = code or context.code() or grpc.StatusCode.OK
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        rid = dict(context.trailing_metadata() or ()).get("x-request-id")
        if rid:
            span.set_attribute(REQUEST_ID_ATTRIBUTE, rid)
        if code != grpc.StatusCode.OK:
            details = message or context.details() or ""
            if isinstance(details, bytes):
                details = details.decode("utf-8", "replace")
            description = f"{code.name}: {details}" if details else code.name
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, description))

    def flush(self) -> bool:
        """Export the spans ended so far, in the calling thread (False once closed)."""
        return self.provider.force_flush()

    async def close(self, timeout: float | None = None) -> None:
        """Export what is buffered and stop the exporter, waiting at most ``timeout`` seconds (default
        :data:`FLUSH_SECONDS`): a collector that does not answer must not hold up the shutdown (the spans it has
        not taken by then are lost).

        The export runs on a daemon thread, so that a stuck one cannot keep the process from exiting either.
        """
        timeout = FLUSH_SECONDS if timeout is None else timeout
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def shut_down() -> None:
            try:
                self.provider.shutdown()  # exports every span still queued, then closes the exporter
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(done.set_result, None)

        threading.Thread(target=shut_down, name="nerve-tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            log.warning("tracing: the collector did not take the last spans within %g s; they are dropped", timeout)


def open_tracing(mode: str) -> Tracing | None:
    """The tracing interceptor for the ``tracing`` setting (None when it is ``off``); raises
    :class:`TracingError` when OpenTelemetry is missing."""
    if mode not in TRACING_MODES:
        raise TracingError(f"tracing is {mode!r}; expected one of {', '.join(TRACING_MODES)}")
    if mode == "off":
        return None
    check_tracing()
    return Tracing(tracer_provider(span_exporter()))
