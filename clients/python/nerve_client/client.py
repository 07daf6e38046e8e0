"""Synchronous and asynchronous clients of the nerve gRPC service.

Both clients share one behaviour:

* **Deadlines.** Every unary call has a deadline (``timeout`` seconds, the client's default unless given per
  call); retries happen inside it, each attempt bounded by the time that remains. ``evaluate`` has no deadline
  unless given one, because a dataset run can take minutes.
* **Retries** with exponential backoff and jitter, only on UNAVAILABLE (server loading, draining or
  unreachable) and RESOURCE_EXHAUSTED (queue full; not when gRPC reports an oversized message). Never on
  INVALID_ARGUMENT, DEADLINE_EXCEEDED or anything else. ``evaluate`` retries only before the server answered
  anything, and only when its examples can be sent again (a list or tuple, or a server-side dataset).
* **Metadata.** ``authorization: Bearer <token>`` when a token is given, and ``x-request-id``: the
  ``request_id`` passed to the call, or a fresh one, kept across the retries of that call.
* **Errors** are :class:`~nerve_client.errors.NerveError` subclasses named after the status code, carrying
  the server's request id (trailing metadata ``x-request-id``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from . import _convert as cv
from ._health import CHECK_METHOD, HealthCheckRequest, HealthCheckResponse, status_name
from ._proto.nerve.v1 import service_pb2 as pb
from ._proto.nerve.v1.service_pb2_grpc import NerveServiceStub
from .errors import REQUEST_ID_KEY, NerveError, UnavailableError, from_rpc_error, request_id_of
from .types import EvalProgress, EvalReport, ExtractResult, ModelInfo

__all__ = ["AsyncClient", "Client"]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default max send/receive message size of the client's channel (gRPC's own default receive limit is 4 MiB)."""

_MAX_REQUEST_ID = 128

ProgressCallback = Callable[[EvalProgress], Any]


Pem = str | os.PathLike[str] | bytes
"""A PEM file's path, or its bytes."""


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _channel_credentials(tls: bool | Pem, client_cert: Pem | None = None,
                         client_key: Pem | None = None) -> grpc.ChannelCredentials | None:
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key must be given together")
    if tls is False or tls is None:
        if client_cert is not None:
            raise ValueError("client_cert needs TLS: pass tls=True or the server's root certificates")
        return None
    roots = None if tls is True else _pem(tls)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=_pem(client_key),
                                        certificate_chain=_pem(client_cert))


def _channel_options(options: Sequence[tuple[str, Any]] | dict[str, Any]) -> list[tuple[str, Any]]:
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": DEFAULT_MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": DEFAULT_MAX_MESSAGE_BYTES,
    }
    merged.update(dict(options.items() if isinstance(options, dict) else options))
    return list(merged.items())


class _Settings:
    """What both clients share: call options, metadata and the retry policy."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        retries: int,
        backoff: float,
        max_backoff: float,
        tls: bool | Pem,
        token: str | None,
        metadata: Sequence[tuple[str, str]],
        options: Sequence[tuple[str, Any]] | dict[str, Any],
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
    ) -> None:
        if not target or not isinstance(target, str):
            raise ValueError("target must be a 'host:port' string")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.credentials = _channel_credentials(tls, client_cert, client_key)
        self.options = _channel_options(options)
        static = [(k.lower(), v) for k, v in metadata]
        if token:
            static.append(("authorization", f"Bearer {token}"))
        self.static_metadata = tuple(static)

    def metadata(self, request_id: str | None) -> tuple[tuple[tuple[str, str], ...], str]:
        """The call's metadata and its request id (the caller's, or a new one)."""
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isascii() or not (
            request_id.isprintable()
        ):
            raise ValueError(f"request_id must be 1-{_MAX_REQUEST_ID} printable ASCII characters")
        return (*self.static_metadata, (REQUEST_ID_KEY, request_id)), request_id

    def deadline(self, timeout: float | None, default: bool = True) -> float | None:
        """The monotonic deadline of a call (``None``: no deadline)."""
        seconds = timeout if timeout is not None else (self.timeout if default else None)
        if seconds is None:
            return None
        if seconds <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {seconds}")
        return time.monotonic() + seconds

    def retry_delay(self, error: NerveError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before retrying after ``error`` on 0-based ``attempt``; ``None``: give up."""
        if not error.retryable or attempt >= self.retries:
            return None
        # Exponential backoff with "equal jitter": between half and all of backoff * 2**attempt, capped.
        ceiling = min(self.max_backoff, self.backoff * (2**attempt))
        delay = ceiling * random.uniform(0.5, 1.0)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None  # no time left for another attempt: report the real cause, not a deadline
        return delay


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.001)


def _metadata_get(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def _check_evaluate_source(examples: Any, dataset_path: Any) -> None:
    if (examples is None) == (dataset_path is None):
        raise ValueError("evaluate() needs either examples or dataset_path (not both)")


class Client:
    """A blocking client.

    >>> with Client("127.0.0.1:50051") as client:            # doctest: +SKIP
    ...     result = client.extract("Angela Merkel visited Paris.")
    ...     [(e.label, e.text, e.start, e.end) for e in result.entities]
    [('PER', 'Angela Merkel', 0, 13), ('LOC', 'Paris', 22, 27)]

    Args:
        target: ``host:port`` of the server (any gRPC target string, e.g. ``dns:///nerve:50051``).
        timeout: Default deadline of unary calls in seconds, retries included (``None``: no deadline).
        retries: Retries after the first attempt on UNAVAILABLE and RESOURCE_EXHAUSTED (0: none).
        backoff: Base delay in seconds; attempt ``n`` waits ``backoff * 2**n`` seconds, jittered down to half.
        max_backoff: Upper bound of one wait.
        tls: ``False`` for plaintext, ``True`` for TLS with the system's roots, or a root certificates PEM path
            (or the PEM bytes).
        client_cert, client_key: The client's certificate chain and private key (PEM paths or bytes), for a
            server that requires client certificates (mutual TLS, its ``tls_client_ca``). Need ``tls``.
        token: Bearer token sent as ``authorization: Bearer <token>`` (use TLS beyond localhost).
        metadata: Extra metadata sent with every call, as ``(key, value)`` pairs.
        options: gRPC channel options (``[("grpc.keepalive_time_ms", 30000)]``), overriding the defaults
            (64 MiB max send and receive message sizes).
        interceptors: gRPC client interceptors (e.g. to time calls for a load test).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        tls: bool | Pem = False,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] | dict[str, Any] = (),
        interceptors: Sequence[Any] = (),
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
    ) -> None:
        self._s = _Settings(
            target, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff, tls=tls,
            token=token, metadata=metadata, options=options, client_cert=client_cert, client_key=client_key,
        )
        if self._s.credentials is None:
            channel = grpc.insecure_channel(target, options=self._s.options)
        else:
            channel = grpc.secure_channel(target, self._s.credentials, options=self._s.options)
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._channel = channel
        self._stub = NerveServiceStub(channel)
        self._health = channel.unary_unary(
            CHECK_METHOD,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )

    @property
    def target(self) -> str:
        return self._s.target

    # ------------------------------------------------------------------------------------------ plumbing

    def _unary(self, method: Any, request: Any, timeout: float | None, request_id: str | None,
               *, retry: bool = True) -> tuple[Any, str]:
        metadata, rid = self._s.metadata(request_id)
        deadline = self._s.deadline(timeout)
        attempt = 0
        while True:
            try:
                response, call = method.with_call(request, timeout=_remaining(deadline), metadata=metadata)
            except grpc.RpcError as err:
                error = from_rpc_error(err, rid)
                delay = self._s.retry_delay(error, attempt, deadline) if retry else None
                if delay is None:
                    raise error from err
                time.sleep(delay)
                attempt += 1
                continue
            return response, request_id_of(call, rid)

    # ------------------------------------------------------------------------------------------- methods

    def extract(
        self,
        text: str,
        labels: cv.Labels = None,
        max_entities: int | None = None,
        return_raw: bool = False,
        *,
        offsets: str = "code_points",
        min_score: float | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ExtractResult:
        """The entities of ``text``, in order of occurrence.

        Args:
            text: The input text (at most the server's ``limits.max_text_chars`` characters).
            labels: Labels to extract: names (a subset of the task's, or any names when the task card has open
                labels), or a mapping of names to descriptions (open labels only); ``None`` for the card's.
            max_entities: Most entities to return (``None``: the task's bound).
            return_raw: Also return the model's raw JSON answer in ``result.raw``.
            offsets: Unit of the entity offsets: ``code_points`` (Python ``str`` indices, the default), ``utf16``
                (JavaScript, Java, C# string indices) or ``utf8`` (byte offsets).
            min_score: Leave out entities whose ``score`` is below this, in [0, 1] (``None``: all of them). The
                server refuses it (FailedPreconditionError) for a model that gives no scores.
            timeout: Deadline in seconds for this call, retries included (default: the client's).
            request_id: Sent as ``x-request-id`` (default: a random id).
        """
        request = cv.extract_request(text, labels, max_entities, return_raw, offsets, min_score)
        response, rid = self._unary(self._stub.Extract, request, timeout, request_id)
        return cv.extract_result_from_proto(response, return_raw, rid)

    def extract_batch(
        self,
        texts: Iterable[str],
        labels: cv.Labels = None,
        max_entities: int | None = None,
        return_raw: bool = False,
        *,
        offsets: str = "code_points",
        min_score: float | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> list[ExtractResult]:
        """The entities of each text, in input order, in one call.

        The server bounds a batch (``model_info().limits``: ``max_batch_texts`` texts and ``max_batch_bytes``
        UTF-8 bytes in all) and rejects a larger one with INVALID_ARGUMENT; split big jobs into batches.
        """
        request = cv.extract_batch_request(texts, labels, max_entities, return_raw, offsets, min_score)
        response, rid = self._unary(self._stub.ExtractBatch, request, timeout, request_id)
        return [cv.extract_result_from_proto(r, return_raw, rid) for r in response.results]

    def model_info(self, *, timeout: float | None = None, request_id: str | None = None) -> ModelInfo:
        """The served model, its task card and the server's limits."""
        response, _ = self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout, request_id)
        return cv.model_info_from_proto(response.model_info)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard health status: ``"SERVING"``, ``"NOT_SERVING"``, ``"UNKNOWN"`` or ``"SERVICE_UNKNOWN"``.

        ``service`` ``""`` asks about the server as a whole. Not retried: an unreachable server raises
        :class:`~nerve_client.errors.UnavailableError`.
        """
        response, _ = self._unary(self._health, HealthCheckRequest(service=service), timeout, None, retry=False)
        return status_name(response)

    def wait_until_serving(self, timeout: float = 300.0, poll: float = 1.0, service: str = "") -> None:
        """Block until :meth:`health` says SERVING (e.g. while the model loads); raise after ``timeout`` s."""
        end = time.monotonic() + timeout
        status = "UNREACHABLE"
        while True:
            try:
                status = self.health(service, timeout=max(min(poll * 5, end - time.monotonic()), 0.01))
            except UnavailableError:
                status = "UNREACHABLE"
            except NerveError as exc:
                if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            if status == "SERVING":
                return
            if time.monotonic() + poll > end:
                raise UnavailableError(f"{self.target} not serving after {timeout:g} s (last status {status})",
                                       code=grpc.StatusCode.UNAVAILABLE)
            time.sleep(poll)

    def evaluate(
        self,
        examples: Iterable[Any] | None = None,
        *,
        dataset_path: str | None = None,
        format: str | None = None,
        scheme: str | None = None,
        labels: Iterable[str] | None = None,
        max_entities: int | None = None,
        limit: int | None = None,
        include_errors: bool = False,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> EvalReport:
        """Score the model on labelled examples and return the report.

        Give either ``examples`` (streamed up lazily: :class:`~nerve_client.types.Example`, mappings or
        ``nerve.ner.types.Example``) or ``dataset_path`` (a file on the server, relative to a dataset directory the
        operator allowed; ``format`` ``auto``/``jsonl``/``cluener``/``conll``/``bmes``, ``scheme`` for CoNLL).

        Args:
            labels: Extract and score only these card labels; gold entities with another card label are ignored
                (counted in ``report.ignored_gold``).
            max_entities: Most entities per example, at most the card's ``bounds.max_entities``.
            limit: Score only the first ``limit`` examples.
            include_errors: Put each example's missing and spurious entities in ``report.errors``.
            on_progress: Called with an :class:`~nerve_client.types.EvalProgress` for each progress message;
                an exception it raises cancels the run and propagates.
            timeout: Deadline of the whole run in seconds (default: none).
        """
        _check_evaluate_source(examples, dataset_path)
        config = cv.evaluate_config(
            inline=examples is not None, expected_examples=cv.examples_hint(examples), dataset_path=dataset_path,
            format=format, scheme=scheme, labels=labels, max_entities=max_entities, limit=limit,
            include_errors=include_errors,
        )
        metadata, rid = self._s.metadata(request_id)
        deadline = self._s.deadline(timeout, default=False)
        replayable = examples is None or isinstance(examples, (list, tuple))
        attempt = 0
        while True:
            sink: list[BaseException] = []
            call = self._stub.Evaluate(
                cv.evaluate_requests(config, examples, limit, sink), timeout=_remaining(deadline), metadata=metadata
            )
            received = False
            try:
                report = None
                for response in call:
                    if sink:
                        break
                    received = True
                    kind = response.WhichOneof("kind")
                    if kind == "progress" and on_progress is not None:
                        on_progress(cv.progress_from_proto(response.progress))
                    elif kind == "report":
                        report = response.report
                if sink:
                    call.cancel()
                    raise sink[0]
            except grpc.RpcError as err:
                if sink:
                    raise sink[0] from None
                error = from_rpc_error(err, rid)
                delay = self._s.retry_delay(error, attempt, deadline) if replayable and not received else None
                if delay is None:
                    raise error from err
                time.sleep(delay)
                attempt += 1
                continue
            except BaseException:
                call.cancel()
                raise
            final_rid = request_id_of(call, rid)
            if report is None:
                raise NerveError("the server ended Evaluate without a report", request_id=final_rid)
            return cv.report_from_proto(report, final_rid)

    # --------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"


class AsyncClient:
    """An asyncio client with the same methods as :class:`Client` (coroutines).

    The channel is created on first use, inside the running event loop; use one client per event loop.
    ``evaluate`` also accepts an async iterable of examples, and an ``on_progress`` that is a coroutine
    function. Arguments as for :class:`Client` (interceptors must be ``grpc.aio`` interceptors).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        tls: bool | Pem = False,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] | dict[str, Any] = (),
        interceptors: Sequence[Any] = (),
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
    ) -> None:
        self._s = _Settings(
            target, timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff, tls=tls,
            token=token, metadata=metadata, options=options, client_cert=client_cert, client_key=client_key,
        )
        self._interceptors = list(interceptors) or None
        self._channel: grpc.aio.Channel | None = None
        self._stub: NerveServiceStub | None = None
        self._health: Any = None

    @property
    def target(self) -> str:
        return self._s.target

    def _ensure_channel(self) -> NerveServiceStub:
        if self._channel is None:
            if self._s.credentials is None:
                channel = grpc.aio.insecure_channel(
                    self._s.target, options=self._s.options, interceptors=self._interceptors
                )
            else:
                channel = grpc.aio.secure_channel(
                    self._s.target, self._s.credentials, options=self._s.options, interceptors=self._interceptors
                )
            self._channel = channel
            self._stub = NerveServiceStub(channel)
            self._health = channel.unary_unary(
                CHECK_METHOD,
                request_serializer=HealthCheckRequest.SerializeToString,
                response_deserializer=HealthCheckResponse.FromString,
            )
        assert self._stub is not None
        return self._stub

    async def _unary(self, name: str, request: Any, timeout: float | None, request_id: str | None,
                     *, retry: bool = True) -> tuple[Any, str]:
        stub = self._ensure_channel()
        method = self._health if name == "health" else getattr(stub, name)
        metadata, rid = self._s.metadata(request_id)
        deadline = self._s.deadline(timeout)
        attempt = 0
        while True:
            call = method(request, timeout=_remaining(deadline), metadata=metadata)
            try:
                response = await call
            except grpc.RpcError as err:
                error = from_rpc_error(err, rid)
                delay = self._s.retry_delay(error, attempt, deadline) if retry else None
                if delay is None:
                    raise error from err
                await asyncio.sleep(delay)
                attempt += 1
                continue
            return response, _metadata_get(await call.trailing_metadata(), REQUEST_ID_KEY) or rid

    async def extract(
        self,
        text: str,
        labels: cv.Labels = None,
        max_entities: int | None = None,
        return_raw: bool = False,
        *,
        offsets: str = "code_points",
        min_score: float | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ExtractResult:
        """See :meth:`Client.extract`."""
        request = cv.extract_request(text, labels, max_entities, return_raw, offsets, min_score)
        response, rid = await self._unary("Extract", request, timeout, request_id)
        return cv.extract_result_from_proto(response, return_raw, rid)

    async def extract_batch(
        self,
        texts: Iterable[str],
        labels: cv.Labels = None,
        max_entities: int | None = None,
        return_raw: bool = False,
        *,
        offsets: str = "code_points",
        min_score: float | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> list[ExtractResult]:
        """See :meth:`Client.extract_batch`."""
        request = cv.extract_batch_request(texts, labels, max_entities, return_raw, offsets, min_score)
        response, rid = await self._unary("ExtractBatch", request, timeout, request_id)
        return [cv.extract_result_from_proto(r, return_raw, rid) for r in response.results]

    async def model_info(self, *, timeout: float | None = None, request_id: str | None = None) -> ModelInfo:
        """See :meth:`Client.model_info`."""
        response, _ = await self._unary("GetModelInfo", pb.GetModelInfoRequest(), timeout, request_id)
        return cv.model_info_from_proto(response.model_info)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """See :meth:`Client.health`."""
        response, _ = await self._unary("health", HealthCheckRequest(service=service), timeout, None, retry=False)
        return status_name(response)

    async def wait_until_serving(self, timeout: float = 300.0, poll: float = 1.0, service: str = "") -> None:
        """See :meth:`Client.wait_until_serving`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        status = "UNREACHABLE"
        while True:
            try:
                status = await self.health(service, timeout=max(min(poll * 5, end - loop.time()), 0.01))
            except UnavailableError:
                status = "UNREACHABLE"
            except NerveError as exc:
                if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            if status == "SERVING":
                return
            if loop.time() + poll > end:
                raise UnavailableError(f"{self.target} not serving after {timeout:g} s (last status {status})",
                                       code=grpc.StatusCode.UNAVAILABLE)
            await asyncio.sleep(poll)

    async def evaluate(
        self,
        examples: Any = None,
        *,
        dataset_path: str | None = None,
        format: str | None = None,
        scheme: str | None = None,
        labels: Iterable[str] | None = None,
        max_entities: int | None = None,
        limit: int | None = None,
        include_errors: bool = False,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> EvalReport:
        """See :meth:`Client.evaluate`; ``examples`` may also be an async iterable."""
        _check_evaluate_source(examples, dataset_path)
        stub = self._ensure_channel()
        config = cv.evaluate_config(
            inline=examples is not None, expected_examples=cv.examples_hint(examples), dataset_path=dataset_path,
            format=format, scheme=scheme, labels=labels, max_entities=max_entities, limit=limit,
            include_errors=include_errors,
        )
        metadata, rid = self._s.metadata(request_id)
        deadline = self._s.deadline(timeout, default=False)
        replayable = examples is None or isinstance(examples, (list, tuple))
        attempt = 0
        while True:
            sink: list[BaseException] = []
            call = stub.Evaluate(
                cv.evaluate_requests_async(config, examples, limit, sink),
                timeout=_remaining(deadline), metadata=metadata,
            )
            received = False
            try:
                report = None
                async for response in call:
                    if sink:
                        break
                    received = True
                    kind = response.WhichOneof("kind")
                    if kind == "progress" and on_progress is not None:
                        outcome = on_progress(cv.progress_from_proto(response.progress))
                        if inspect.isawaitable(outcome):
                            await outcome
                    elif kind == "report":
                        report = response.report
                if sink:
                    call.cancel()
                    raise sink[0]
            except grpc.RpcError as err:
                if sink:
                    raise sink[0] from None
                error = from_rpc_error(err, rid)
                delay = self._s.retry_delay(error, attempt, deadline) if replayable and not received else None
                if delay is None:
                    raise error from err
                await asyncio.sleep(delay)
                attempt += 1
                continue
            except BaseException:
                call.cancel()
                raise
            final_rid = _metadata_get(await call.trailing_metadata(), REQUEST_ID_KEY) or rid
            if report is None:
                raise NerveError("the server ended Evaluate without a report", request_id=final_rid)
            return cv.report_from_proto(report, final_rid)

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = self._health = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.target!r})"
