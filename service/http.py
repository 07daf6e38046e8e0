"""nerve's API as JSON over HTTP, from the same process and the same pipeline as gRPC.

The gateway transcodes, the way grpc-gateway and Envoy's gRPC-JSON transcoder do: each route parses its JSON
body into the method's request message with protobuf's JSON mapping, makes the gRPC call to this very server
over a private Unix socket, and writes the answer back with the same mapping. Every RPC therefore runs
through the one servicer with its interceptors: the same validation, admission and limits, the same bearer
token (``Authorization`` is passed on), the same request ids (``x-request-id`` both ways) and the same
metrics (``nerve_requests_total{transport="http"}``, plus ``nerve_http_responses_total`` for the gateway's
own answers). TLS and client certificates are the gRPC port's (``tls_cert``, ``tls_key``, ``tls_client_ca``).

Routes (``POST``, JSON in and out; ``GET`` where a route needs no body)::

    POST /v1/extract            ExtractRequest -> ExtractResponse
    POST /v1/extract_batch      ExtractBatchRequest -> ExtractBatchResponse
    POST /v1/evaluate           EvaluateRequest per line (NDJSON) -> EvaluateResponse per line, streamed
    POST|GET /v1/get_model_info GetModelInfoRequest -> GetModelInfoResponse
    GET  /v1/health             grpc.health.v1 Check: 200 SERVING, 503 otherwise
    GET  /openapi.json          the OpenAPI 3.1 document (:mod:`.openapi`, from the same descriptors)

Errors are ``{"error": {"code", "status", "message", "request_id"}}`` with the HTTP status of the gRPC code
as in Google's mapping (:data:`HTTP_STATUS`). A deadline is the ``X-Server-Timeout`` header, in seconds. A
streamed Evaluate that fails after its first line ends with one ``{"error": ...}`` line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nerve_client.pb import service_pb2, service_pb2_grpc

from .errors import clean_request_id

log = logging.getLogger("nerve.http")

TRANSPORT_KEY = "x-nerve-transport"
"""Metadata the gateway adds to its gRPC calls, so that the servicer labels their metrics ``http``."""
TIMEOUT_HEADER = "X-Server-Timeout"

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
"""gRPC status -> HTTP status, as google.rpc.Code documents it."""

_SERVICE = service_pb2.DESCRIPTOR.services_by_name["NerveService"]


@dataclass(frozen=True)
class Route:
    """One HTTP route: a NerveService method."""

    name: str
    """The gRPC method name, e.g. ``ExtractBatch``."""
    path: str
    request: Descriptor
    response: Descriptor
    streaming: bool
    get: bool
    summary: str


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _routes() -> list[Route]:
    routes = []
    for m in _SERVICE.methods:
        streaming = m.client_streaming or m.server_streaming
        routes.append(Route(
            name=m.name, path=f"/v1/{_snake(m.name)}", request=m.input_type, response=m.output_type,
            streaming=streaming, get=not streaming and not m.input_type.fields,
            summary=f"{_SERVICE.full_name}.{m.name}"))
    return routes


ROUTES: list[Route] = _routes()
"""Every NerveService method, mapped mechanically: ``/v1/<method in snake_case>``."""


class HttpError(Exception):
    """An answer the gateway gives before (or instead of) a gRPC call: bad JSON, a bad header, a bad route."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS[code]
        """The HTTP status (that of ``code`` unless HTTP has a more precise one, like 413)."""


def error_body(code: grpc.StatusCode, message: str, request_id: str) -> dict[str, Any]:
    return {"error": {"code": HTTP_STATUS.get(code, 500), "status": code.name, "message": message,
                      "request_id": request_id}}


def _trailer(metadata: Any, key: str) -> str:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return ""


def parse_message(data: bytes | str, descriptor: Descriptor, where: str = "the request body") -> Any:
    """The request message of ``data`` (protobuf JSON); INVALID_ARGUMENT that says what is wrong otherwise."""
    message = service_pb2.__dict__[descriptor.name]()
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if not text.strip():
        return message
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{where} is not a valid {descriptor.name}: {exc}") from None
    return message


def to_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class Gateway:
    """The HTTP/JSON gateway of one server: an aiohttp application over a gRPC channel to that server."""

    def __init__(self, *, host: str, port: int, max_body_bytes: int, metrics: Any,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._ssl = ssl_context
        self._dir = tempfile.mkdtemp(prefix="nerve-http-")
        os.chmod(self._dir, 0o700)
        self.socket = os.path.join(self._dir, "grpc.sock")
        """The Unix socket the gRPC server listens on for the gateway (in a folder only this user can enter)."""
        self._channel: grpc.aio.Channel | None = None
        self._runner: Any = None

    @property
    def grpc_address(self) -> str:
        return f"unix:{self.socket}"

    async def start(self, max_message_bytes: int) -> int:
        """Connect to the gRPC server (already listening on :attr:`grpc_address`) and open the HTTP port."""
        from aiohttp import web

        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)]
        self._channel = grpc.aio.insecure_channel(self.grpc_address, options=opts)
        self._stub = service_pb2_grpc.NerveServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        app = web.Application(client_max_size=self._max_body, middlewares=[self._errors])
        for route in ROUTES:
            handler = self._streaming(route) if route.streaming else self._unary(route)
            app.router.add_post(route.path, handler)
            if route.get:
                app.router.add_get(route.path, handler)
        app.router.add_get("/v1/health", self._check_health)
        app.router.add_get("/openapi.json", self._openapi)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp keeps the listening sockets there; the port is needed when it was 0
        self.port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else self.port
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- the pieces every route shares -------------------------------------------------------------------------

    def _count(self, route: str, status: int) -> None:
        self._metrics.http_responses.labels(route, str(status)).inc()

    def _call_options(self, request: Any) -> tuple[list[tuple[str, str]], float | None, str]:
        rid = clean_request_id(request.headers.get("x-request-id", "")) or uuid.uuid4().hex
        metadata = [(TRANSPORT_KEY, "http"), ("x-request-id", rid)]
        auth = request.headers.get("Authorization")
        if auth:
            metadata.append(("authorization", auth))
        timeout = None
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is not None:
            try:
                timeout = float(raw)
            except ValueError:
                timeout = -1.0
            if not timeout > 0 or timeout != timeout or timeout == float("inf"):
                raise HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{TIMEOUT_HEADER} must be a positive number of seconds, got {raw!r}")
        return metadata, timeout, rid

    def _json(self, route: str, body: dict[str, Any], status: int, rid: str) -> Any:
        from aiohttp import web

        self._count(route, status)
        return web.json_response(body, status=status, headers={"x-request-id": rid},
                                 dumps=lambda o: json.dumps(o, ensure_ascii=False))

    def _failure(self, route: str, exc: grpc.aio.AioRpcError, rid: str) -> Any:
        rid = _trailer(exc.trailing_metadata(), "x-request-id") or rid
        code = exc.code()
        return self._json(route, error_body(code, exc.details() or code.name, rid), HTTP_STATUS.get(code, 500), rid)

    @staticmethod
    def _route_of(request: Any) -> str:
        info = request.match_info.route.resource
        return info.canonical if info is not None else "unmatched"

    async def _errors_impl(self, request: Any, handler: Callable) -> Any:
        from aiohttp import web

        try:
            return await handler(request)
        except HttpError as exc:
            rid = clean_request_id(request.headers.get("x-request-id", "")) or uuid.uuid4().hex
            body = error_body(exc.code, exc.message, rid)
            body["error"]["code"] = exc.status
            return self._json(self._route_of(request), body, exc.status, rid)
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, body too large
            code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
                    413: grpc.StatusCode.RESOURCE_EXHAUSTED}.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
            rid = clean_request_id(request.headers.get("x-request-id", "")) or uuid.uuid4().hex
            return self._json(self._route_of(request), error_body(code, exc.reason, rid), exc.status, rid)

    @property
    def _errors(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def errors(request: Any, handler: Callable) -> Any:
            return await self._errors_impl(request, handler)

        return errors

    async def _body(self, request: Any) -> bytes:
        from aiohttp import web

        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the request body is larger than {self._max_body} bytes (max_message_bytes)",
                            413) from None

    # -- handlers ----------------------------------------------------------------------------------------------

    def _unary(self, route: Route) -> Callable:
        call = getattr(self._stub, route.name)

        async def handle(request: Any) -> Any:
            metadata, timeout, rid = self._call_options(request)
            body = b"" if request.method == "GET" else await self._body(request)
            try:
                message = parse_message(body, route.request)
            except UnicodeDecodeError:
                raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "the request body is not UTF-8") from None
            rpc = call(message, metadata=metadata, timeout=timeout)
            try:
                response = await rpc
            except grpc.aio.AioRpcError as exc:
                return self._failure(route.path, exc, rid)
            rid = _trailer(await rpc.trailing_metadata(), "x-request-id") or rid
            return self._json(route.path, to_json(response), 200, rid)

        return handle

    def _streaming(self, route: Route) -> Callable:
        call = getattr(self._stub, route.name)

        async def handle(request: Any) -> Any:
            from aiohttp import web

            metadata, timeout, rid = self._call_options(request)
            messages = await self._stream_messages(request, route)
            rpc = call(_aiter(messages), metadata=metadata, timeout=timeout)
            try:
                first = await rpc.read()
            except grpc.aio.AioRpcError as exc:
                return self._failure(route.path, exc, rid)
            rid = _trailer(await rpc.initial_metadata(), "x-request-id") or rid
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson",
                                                               "x-request-id": rid})
            await response.prepare(request)
            status = 200
            try:
                message = first
                while message is not grpc.aio.EOF:
                    await response.write((json.dumps(to_json(message), ensure_ascii=False) + "\n").encode())
                    message = await rpc.read()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                status = HTTP_STATUS.get(code, 500)
                line = error_body(code, exc.details() or code.name,
                                  _trailer(exc.trailing_metadata(), "x-request-id") or rid)
                await response.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            except (ConnectionResetError, asyncio.CancelledError):
                rpc.cancel()
                raise
            self._count(route.path, status)
            await response.write_eof()
            return response

        return handle

    async def _stream_messages(self, request: Any, route: Route) -> list[Any]:
        """The request messages of a streaming route: NDJSON (one per line) or a JSON array.

        The body is bounded by ``max_message_bytes`` like one gRPC message; larger evaluations stream over gRPC
        or name a server-side dataset.
        """
        body = await self._body(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "the request body is not UTF-8") from None
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"the request body is not JSON: {exc}") from None
            return [parse_message(json.dumps(item), route.request, f"message {i}") for i, item in enumerate(items)]
        return [parse_message(line, route.request, f"line {n}")
                for n, line in enumerate(text.splitlines(), 1) if line.strip()]

    async def _check_health(self, request: Any) -> Any:
        from aiohttp import web

        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        code = 200 if status == "SERVING" else 503
        self._count("/v1/health", code)
        return web.json_response({"status": status}, status=code)

    async def _openapi(self, request: Any) -> Any:
        from aiohttp import web

        from .openapi import openapi_document

        self._count("/openapi.json", 200)
        return web.json_response(openapi_document(ROUTES))


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def gateway_ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The HTTPS context of the gateway: the gRPC port's certificate, and its client CAs for mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
