"""Retry policy, error helpers and result types, without a server."""

from __future__ import annotations

import time

import grpc
import pytest
from nerve_client import EvalProgress, ResourceExhaustedError, UnavailableError
from nerve_client import errors as E
from nerve_client.client import _Settings


def settings(**kw):
    base = dict(timeout=30.0, retries=5, backoff=0.2, max_backoff=1.0, tls=False, token=None, metadata=(),
                options=())
    base.update(kw)
    return _Settings("127.0.0.1:1", **base)


def test_backoff_is_exponential_jittered_and_capped():
    s = settings()
    err = UnavailableError("x", code=grpc.StatusCode.UNAVAILABLE)
    for attempt, ceiling in enumerate([0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = [s.retry_delay(err, attempt, None) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter
    assert s.retry_delay(err, 5, None) is None  # retries exhausted


def test_no_retry_when_the_wait_would_pass_the_deadline():
    s = settings(backoff=0.5)
    err = UnavailableError("x", code=grpc.StatusCode.UNAVAILABLE)
    assert s.retry_delay(err, 0, time.monotonic() + 0.1) is None
    assert s.retry_delay(err, 0, time.monotonic() + 10) is not None


@pytest.mark.parametrize(
    "code, details, retryable",
    [
        (grpc.StatusCode.UNAVAILABLE, "", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "", False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", False),
        (grpc.StatusCode.INTERNAL, "", False),
        (None, "", False),
    ],
)
def test_is_retryable(code, details, retryable):
    assert E.is_retryable(code, details) is retryable


def test_metadata_has_token_request_id_and_extras():
    s = settings(token="abc", metadata=[("X-Tenant", "t1")])
    metadata, rid = s.metadata("r1")
    assert rid == "r1"
    assert metadata == (("x-tenant", "t1"), ("authorization", "Bearer abc"), ("x-request-id", "r1"))
    _, generated = s.metadata(None)
    assert len(generated) == 32 and generated != s.metadata(None)[1]


def test_channel_options_override_defaults():
    s = settings(options=[("grpc.max_receive_message_length", 123), ("grpc.keepalive_time_ms", 1000)])
    opts = dict(s.options)
    assert opts["grpc.max_receive_message_length"] == 123 and opts["grpc.max_send_message_length"] == 64 << 20
    assert opts["grpc.keepalive_time_ms"] == 1000


def test_error_str_and_repr():
    err = ResourceExhaustedError("queue full", code=grpc.StatusCode.RESOURCE_EXHAUSTED, request_id="r9")
    assert str(err) == "RESOURCE_EXHAUSTED: queue full [request id r9]"
    assert "request_id='r9'" in repr(err) and err.retryable
    assert isinstance(err, E.NerveError)


def test_progress_fraction():
    assert EvalProgress(done=1, total=4, elapsed_seconds=0.1).fraction == 0.25
    assert EvalProgress(done=1, total=None, elapsed_seconds=0.1).fraction is None
