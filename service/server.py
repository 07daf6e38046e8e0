"""The gRPC server: life cycle, standard services, TLS, auth, metrics endpoint and graceful drain.

Start-up order: the port opens first with health NOT_SERVING (so probes and clients get a clear answer),
then the model loads and warms up, then health turns SERVING. On SIGTERM or SIGINT health turns
NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get ``drain_seconds`` to finish, the engine shuts
down and the process exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nerve_client._proto.nerve.v1 import service_pb2, service_pb2_grpc

from .config import ServeConfig
from .encoder_engine import EncoderConfig, EncoderEngine, EncoderExtractor, is_encoder_checkpoint
from .engine import EngineConfig, VllmEngine
from .metrics import Metrics
from .pipeline import Extractor, Limits, load_card
from .servicer import NerveServicer, ServerState

log = logging.getLogger("nerve.server")

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["NerveService"].full_name


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
            metrics.requests.labels(method, "UNAUTHENTICATED").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext):
            await deny(request, context)
            yield  # pragma: no cover - abort raises

        kind = (handler.request_streaming, handler.response_streaming)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[kind]
        return factory(deny_stream if handler.response_streaming else deny,
                       request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


class NerveServer:
    """One nerve server process (usable in-process by tests)."""

    def __init__(self, cfg: ServeConfig, *, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.state = ServerState()
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.engine: VllmEngine | EncoderEngine | None = None
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._load_task: asyncio.Task | None = None

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def start(self, *, load: bool = True) -> int:
        """Open the port (health NOT_SERVING) and, with ``load``, start loading the model in the background."""
        cfg = self.cfg
        options = [
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        interceptors = [AuthInterceptor(cfg.auth_token, self.metrics)] if cfg.auth_token else []
        server = grpc.aio.server(options=options, interceptors=interceptors,
                                 maximum_concurrent_rpcs=cfg.max_queue + 64)
        service_pb2_grpc.add_NerveServiceServicer_to_server(NerveServicer(cfg, self.state, self.metrics), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        self.metrics.ready.set(0)
        log.info("listening on %s:%s (tls=%s, auth=%s)", cfg.host, self.port, bool(cfg.tls_cert), bool(cfg.auth_token))
        if load:
            self._load_task = asyncio.ensure_future(self._load())
        return self.port

    async def _load(self) -> None:
        from nerve.models import resolve_model

        try:
            path = await asyncio.to_thread(resolve_model, self.cfg.model, log=log.info)
            card = load_card(path, self.cfg.task)
            limits = Limits(max_text_chars=self.cfg.max_text_chars, max_batch_texts=self.cfg.max_batch_texts,
                            max_batch_bytes=self.cfg.max_batch_bytes)
            if is_encoder_checkpoint(path):  # token classification: no vLLM, a micro-batcher instead
                engine_cfg = EncoderConfig(model=str(path), max_batch=self.cfg.encoder_max_batch,
                                           max_wait_ms=self.cfg.encoder_max_wait_ms)
                self.engine = await EncoderEngine.start(engine_cfg)
                extractor = EncoderExtractor(self.engine, card, limits=limits)
            else:
                engine_cfg = EngineConfig(**{**vars(self.cfg.engine), "model": str(path)})
                self.engine = await VllmEngine.start(engine_cfg)
                extractor = Extractor(self.engine, card, grounded=self.cfg.grounded, limits=limits)
            if self.cfg.warmup:
                await extractor.warm_up()
        except Exception:
            log.exception("model load failed; the server stays NOT_SERVING")
            raise
        self.state.model_name = Path(self.cfg.model).name
        self.state.model_path = str(path)
        self.metrics.model_info.labels(self.state.model_name, self.engine.version,
                                       engine_cfg.structured_backend, card.name, self.engine.dtype.dtype).set(1)
        if self.state.draining:
            return
        self.state.extractor = extractor
        self.metrics.ready.set(1)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (task %s, %d labels)", path, card.name, len(card.labels))

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
        if self._server is not None:
            await self._server.stop(grace)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.engine is not None:
            self.engine.close()
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(cfg: ServeConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean drain, 1 if the model failed)."""
    server = NerveServer(cfg)
    if cfg.metrics_port:
        server.metrics.serve(cfg.metrics_port, cfg.metrics_host or cfg.host)
        log.info("metrics on http://%s:%s/metrics", cfg.metrics_host or cfg.host, cfg.metrics_port)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: (log.info("received %s", signal.Signals(s).name),
                                                    asyncio.ensure_future(server.drain())))
    try:
        await server.wait_ready()
    except Exception:
        await server.drain(0)
        return 1
    await server.wait_stopped()
    return 0
