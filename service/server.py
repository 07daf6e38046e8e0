"""The gRPC server: life cycle, standard services, TLS, auth, metrics endpoint and graceful drain.

Start-up order: the port opens first with health NOT_SERVING (so probes and clients get a clear answer),
then the model loads and warms up, then health turns SERVING. On SIGTERM or SIGINT health turns
NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get ``drain_seconds`` to finish (calls still running
then end with UNAVAILABLE and are counted in ``nerve_drain_cancelled_total``), the engine shuts down and the
process exits 0. A second SIGTERM or SIGINT during the drain exits at once (status 128 + signal number).

A failed engine is not restarted in process: a watchdog checks it every :data:`WATCHDOG_SECONDS`, and when
vLLM's engine core has died (OOM kill, crash) or requests have been pending with no output for
``engine_stall_seconds``, health turns NOT_SERVING, calls get UNAVAILABLE (clients retry on another replica),
the server stops at once and the process exits with :data:`EXIT_ENGINE_FAILED`, so that the orchestrator
restarts it with a fresh engine.

Health checks are never refused because of other traffic: there is no global limit on concurrent calls (nerve
calls are admitted per text by the servicer), and the streams that stay open until their client ends them
(Health.Watch, reflection) are capped on their own (``max_watch_streams``). Keepalive pings end the streams of
clients that vanished; ``max_connection_age_seconds`` makes clients reconnect now and then, so that they
spread over new replicas.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import inspect
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nerve_client.pb import service_pb2

from nerve.engines.base import Engine
from nerve.engines.encoder import EncoderConfig
from nerve.extraction import Limits, load_card, open_extractor
from nerve.models import Merge

from .config import ServeConfig
from .errors import decoding, transport_of
from .http import Gateway, gateway_ssl_context
from .metrics import Metrics
from .servicer import NerveServicer, ServerState
from .tracing import Tracing, open_tracing

log = logging.getLogger("nerve.server")

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["NerveService"].full_name
WATCHDOG_SECONDS = 0.5
"""How often the engine's liveness and progress are checked."""
EXIT_ENGINE_FAILED = 3
"""Exit status of a server whose engine died or hung."""


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
"""gRPC's method-handler constructor for each (request streaming, response streaming)."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on nerve.v1 calls; health and reflection stay open."""

    def __init__(self, token: str, metrics: Metrics):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        supplied = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(supplied).encode(), self._expected):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        metrics = self._metrics

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            metrics.requests.labels(method, "UNAUTHENTICATED", transport_of(context.invocation_metadata())).inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext):
            await deny(request, context)
            yield  # pragma: no cover - abort raises

        factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(deny_stream if handler.response_streaming else deny,
                       request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


KEEPALIVE_SECONDS = 60
"""The server pings each connection that has calls open this often, so that the streams of a client that
vanished (no FIN, e.g. a partitioned node) are ended instead of held forever."""
KEEPALIVE_TIMEOUT_SECONDS = 20
"""An unanswered keepalive ping closes the connection after this long."""


def freeze_gc_heap() -> None:
    """Collect once, then move every object the collector tracks into its permanent generation (as vLLM's
    own API server does after start-up): later collections walk only what serving allocates."""
    gc.collect()
    gc.freeze()


def server_options(cfg: ServeConfig) -> list[tuple[str, Any]]:
    """The gRPC server's channel arguments: message sizes, keepalive, and the connection age limit."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECONDS * 1000),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a Watch stream that carries no data
    ]
    if cfg.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", max(1, round(cfg.max_connection_age_seconds * 1000))),
            ("grpc.max_connection_age_grace_ms", round(cfg.max_connection_age_grace_seconds * 1000)),
        ]
    return options


def server_credentials(cfg: ServeConfig) -> grpc.ServerCredentials:
    """TLS with ``tls_cert``/``tls_key``; with ``tls_client_ca`` also mutual TLS: a client must present a
    certificate signed by one of those CAs, or its handshake fails."""
    pair = [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())]
    if cfg.tls_client_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=Path(cfg.tls_client_ca).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def add_nerve_service(servicer: NerveServicer, server: grpc.aio.Server) -> None:
    """Register ``nerve.v1.NerveService`` as the generated code does, every method taken from the service
    descriptor, but with request deserializers that do not raise: a message that does not parse reaches the
    servicer's wrappers, which answer INVALID_ARGUMENT with the request id (gRPC would answer UNKNOWN)."""
    handlers = {}
    for method in service_pb2.DESCRIPTOR.services_by_name["NerveService"].methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(getattr(servicer, method.name),
                                        request_deserializer=decoding(request.FromString, method.input_type.full_name),
                                        response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class StreamLimit(grpc.aio.ServerInterceptor):
    """At most ``limit`` response streams of the standard services open at once (Health.Watch and reflection,
    which stay open until their client ends them); a further one gets RESOURCE_EXHAUSTED.

    Unary calls, Health.Check among them, are never counted, so open streams cannot crowd out the probes.
    nerve.v1 calls are not counted either: the servicer admits them per text (``max_queue``).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not handler.response_streaming or details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
        limiter = self

        async def bounded(request: Any, context: grpc.aio.ServicerContext) -> None:
            if limiter.open >= limiter.limit:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"{limiter.open} streams open, the server's limit (max_watch_streams); use "
                                    "Health.Check, or retry later")
            limiter.open += 1
            try:
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        await context.write(response)
                elif inspect.isawaitable(result):
                    await result
                else:  # a synchronous generator
                    for response in result:
                        await context.write(response)
            finally:
                limiter.open -= 1

        factory = _HANDLER_FACTORIES[(handler.request_streaming, True)]
        return factory(bounded, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Server reflection as ``grpc.reflection.v1`` (what current tools ask for first) and ``v1alpha``.

    grpcio-reflection implements v1alpha only. The v1 protocol has the same messages under another package
    name, so one servicer answers both: the v1 method is registered with v1alpha's (wire-identical) messages.
    """
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from grpc_reflection.v1alpha.reflection import aio as reflection_aio

    servicer = reflection_aio.ReflectionServicer((*services, reflection.SERVICE_NAME, REFLECTION_V1))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))


class NerveServer:
    """One nerve server process (usable in-process by tests)."""

    def __init__(self, cfg: ServeConfig, *, metrics: Metrics | None = None, merge: Merge | None = None):
        """``merge`` lets the server pull a registry model that is an adapter merged into its base
        (:data:`nerve.models.Merge`); without it such a model must have been pulled before."""
        self.cfg = cfg
        self._merge = merge
        self.metrics = metrics or Metrics()
        self.state = ServerState()
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.engine: Engine | None = None
        self.port: int | None = None
        self.servicer: NerveServicer | None = None
        self.http: Gateway | None = None
        """The HTTP/JSON gateway when ``http_port`` is set."""
        self.http_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._load_task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        self.tracing: Tracing | None = None
        """The tracing interceptor when ``tracing`` is on."""

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def start(self, *, load: bool = True) -> int:
        """Open the port (health NOT_SERVING) and, with ``load``, start loading the model in the background."""
        cfg = self.cfg
        # No maximum_concurrent_rpcs: it would count health checks and never-ending Watch streams alongside
        # nerve calls, so enough open streams would refuse the kubelet's probes. Nerve calls are admitted per
        # text in the servicer; long-lived standard streams are bounded by StreamLimit.
        interceptors: list[grpc.aio.ServerInterceptor] = [StreamLimit(cfg.max_watch_streams)]
        if cfg.auth_token:
            interceptors.append(AuthInterceptor(cfg.auth_token, self.metrics))
        self.tracing = open_tracing(cfg.tracing)  # None when off (OpenTelemetry is then never imported)
        if self.tracing is not None:
            interceptors.insert(0, self.tracing)  # outermost: calls the others refuse are traced too
        server = grpc.aio.server(options=server_options(cfg), interceptors=interceptors)
        self.servicer = NerveServicer(cfg, self.state, self.metrics)
        add_nerve_service(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        add_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert:
            self.port = server.add_secure_port(address, server_credentials(cfg))
        else:
            self.port = server.add_insecure_port(address)
        if cfg.http_port:
            self.http = http_gateway(cfg, self.metrics)
            server.add_insecure_port(self.http.grpc_address)  # a private Unix socket, for the gateway only
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        if self.http is not None:
            self.http_port = await self.http.start(cfg.max_message_bytes)
            log.info("HTTP/JSON gateway on %s://%s:%s", "https" if cfg.tls_cert else "http", cfg.host, self.http_port)
        self.metrics.ready.set(0)
        log.info("listening on %s:%s (tls=%s, client certificates=%s, auth=%s)", cfg.host, self.port,
                 bool(cfg.tls_cert), bool(cfg.tls_client_ca), bool(cfg.auth_token))
        if load:
            self._load_task = asyncio.ensure_future(self._load())
        return self.port

    async def _load(self) -> None:
        from nerve.models import resolve_model

        try:
            path = await asyncio.to_thread(resolve_model, self.cfg.model, log=log.info, merge=self._merge)
            card = load_card(path, self.cfg.task)
            limits = Limits(max_text_chars=self.cfg.max_text_chars,
                            new_schemas_per_minute=self.cfg.max_new_schemas_per_minute)
            encoder = EncoderConfig(model=str(path), max_batch=self.cfg.encoder_max_batch,
                                    max_wait_ms=self.cfg.encoder_max_wait_ms)
            extractor = await open_extractor(path, card, engine=self.cfg.engine, encoder=encoder, limits=limits,
                                             grounded=self.cfg.grounded)
            self.engine = extractor.engine
            if self.cfg.warmup:
                await extractor.warm_up()
        except Exception:
            log.exception("model load failed; the server stays NOT_SERVING")
            raise
        self.state.model_name = Path(self.cfg.model).name
        self.state.model_path = str(path)
        self.metrics.model_info.labels(self.state.model_name, self.engine.version,
                                       self.engine.structured_backend, card.name, self.engine.dtype.dtype).set(1)
        if self.state.draining:
            return
        self.state.extractor = extractor
        # What loading made (modules, the model's Python objects, the tokenizer) lives as long as the server:
        # frozen out of the collector's generations, a full collection no longer walks it and stalls the loop.
        freeze_gc_heap()
        self.metrics.ready.set(1)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._watchdog = asyncio.ensure_future(self._watch_engine())
        log.info("serving %s (task %s, %d labels)", path, card.name, len(card.labels))

    def engine_problem(self) -> tuple[str, str] | None:
        """(kind, description) when the engine can no longer serve: ``dead`` or ``stalled``; None when healthy."""
        engine = self.engine
        if engine is None:
            return None
        if engine.dead:
            return "dead", engine.death
        stall = self.cfg.engine_stall_seconds
        if stall > 0 and engine.stalled(stall):
            return "stalled", f"requests have been pending for {stall:g} s with no engine output"
        return None

    async def _watch_engine(self) -> None:
        while not self.state.draining:
            await asyncio.sleep(WATCHDOG_SECONDS)
            problem = self.engine_problem()
            if problem is not None and not self.state.draining:
                await self.fail_engine(*problem)
                return

    async def fail_engine(self, kind: str, reason: str) -> None:
        """Give the engine up: NOT_SERVING, UNAVAILABLE for every call, stop now (the process exits non-zero)."""
        log.error("%s; health NOT_SERVING, stopping (exit status %d) so that the server is restarted",
                  reason, EXIT_ENGINE_FAILED)
        self.state.failure = reason
        self.metrics.engine_failures.labels(kind).inc()
        await self.drain(0)

    @property
    def failure(self) -> str | None:
        """Why the engine was given up (None while it is healthy)."""
        return self.state.failure

    async def wait_ready(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight calls finish within ``grace`` seconds, then release the engine."""
        if self.state.draining:
            await self._stopped.wait()
            return
        self.state.draining = True
        self.metrics.ready.set(0)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.cfg.drain_seconds if grace is None else grace
        log.info("draining: %d texts in flight, grace %.0f s", self.state.inflight, grace)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        # gRPC refuses new calls from here (GOAWAY: clients reconnect to another replica). Calls still running
        # at the end of the grace period are ended here, with a status that says so, before gRPC's own stop
        # (a little later) would cancel them with a bare CANCELLED.
        stopping = asyncio.ensure_future(self._server.stop(grace + 2)) if self._server is not None else None
        calls = set(self.state.calls)
        if calls and grace > 0:
            await asyncio.wait(calls, timeout=grace)
        late = [task for task in self.state.calls if not task.done()]
        if late:
            log.warning("%d calls still running after the %.0f s grace period: ending them with UNAVAILABLE",
                        len(late), grace)
            self.state.cut_off = True
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=1)
        if stopping is not None:
            await stopping
        if self.http is not None:
            await self.http.close()
        if self.engine is not None:
            self.engine.close()
        if self.tracing is not None:
            await self.tracing.close()  # export the spans still buffered
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def http_gateway(cfg: ServeConfig, metrics: Metrics) -> Gateway:
    """The HTTP/JSON gateway of ``cfg``: on ``host:http_port``, with the gRPC port's TLS settings."""
    context = gateway_ssl_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert and cfg.tls_key else None
    return Gateway(host=cfg.host, port=cfg.http_port, max_body_bytes=cfg.max_message_bytes, metrics=metrics,
                   ssl_context=context)


async def serve(cfg: ServeConfig, *, merge: Merge | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean drain, 1 if the model failed)."""
    server = NerveServer(cfg, merge=merge)
    if cfg.metrics_port:
        server.metrics.serve(cfg.metrics_port, cfg.metrics_host or cfg.host)
        log.info("metrics on http://%s:%s/metrics", cfg.metrics_host or cfg.host, cfg.metrics_port)
    await server.start()
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        name = signal.Signals(sig).name
        if server.state.draining:
            log.warning("received %s during the drain: exiting now", name)
            _force_exit(128 + sig)
        log.info("received %s", name)
        asyncio.ensure_future(server.drain())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.wait_ready()
    except asyncio.CancelledError:  # a signal arrived while the model was loading
        if not server.state.draining:
            raise
        await server.wait_stopped()
        # vLLM may still be starting in a worker thread, which cannot be interrupted: do not wait for it.
        log.info("stopped during model load")
        _force_exit(0)
    except Exception:
        await server.drain(0)
        return 1
    await server.wait_stopped()
    return EXIT_ENGINE_FAILED if server.failure else 0


def _force_exit(status: int) -> None:
    """Exit now: kill this process's children (vLLM's engine processes), flush the logs, skip clean-up."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
        for child in children:
            child.kill()
        psutil.wait_procs(children, timeout=5)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
    logging.shutdown()
    os._exit(status)
