"""The blocking Client against the fake server: results, errors, retries, deadlines and metadata."""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import nerve_client
import pytest
from nerve_client import (
    Client,
    Entity,
    ExtractResult,
    InvalidArgumentError,
    ModelInfo,
    NerveError,
    ResourceExhaustedError,
    UnavailableError,
    Usage,
)
from nerve_client import errors as E
from nerve_client.pb import service_pb2_grpc

from .fake import FakeNerve

pytestmark = pytest.mark.timeout(60)


def test_extract_converts_entities_with_code_point_offsets(fake_server):
    # "😀" is one code point but two UTF-16 units and four UTF-8 bytes: offsets must count code points.
    text = "😀 Zoë met Angela in Zürich."
    with Client(fake_server.target) as client:
        result = client.extract(text)
    assert isinstance(result, ExtractResult)
    assert result.entities == (
        Entity(label="PER", text="Zoë", start=2, end=5),
        Entity(label="PER", text="Angela", start=10, end=16),
        Entity(label="LOC", text="Zürich", start=20, end=26),
    )
    assert all(text[e.start : e.end] == e.text for e in result.entities)
    assert list(result) == list(result.entities) and len(result) == 3
    assert result.usage == Usage(prompt_tokens=10 + len(text), completion_tokens=11, queue_seconds=0.001,
                                 engine_seconds=0.01, total_seconds=0.012)
    assert result.raw is None and result.hallucinated == 0


def test_extract_sends_options_and_returns_raw(fake_server):
    with Client(fake_server.target) as client:
        result = client.extract("Ada went to Paris and Atlantis.", labels=["LOC"], max_entities=1, return_raw=True)
    request = fake_server.servicer.calls("Extract")[0].request
    assert list(request.labels) == ["LOC"] and request.max_entities == 1 and request.return_raw
    assert [e.text for e in result.entities] == ["Paris"]
    assert result.raw == '{"entities": [{"label": "LOC", "text": "Paris"}]}'
    assert result.hallucinated == 1


def test_scores_and_min_score_travel_both_ways(fake_server):
    text = "Ada went to Paris."
    with Client(fake_server.target) as client:
        every = client.extract(text)
        confident = client.extract(text, min_score=0.8)
        batch = client.extract_batch([text, "Bob"], min_score=0.8)
        with pytest.raises(ValueError, match="min_score"):
            client.extract(text, min_score=-0.5)
        with pytest.raises(ValueError, match="min_score"):
            client.extract_batch([text], min_score=float("nan"))
    assert [(e.text, e.score) for e in every.entities] == [("Ada", pytest.approx(0.6)), ("Paris", pytest.approx(0.9))]
    assert [e.text for e in confident.entities] == ["Paris"] and confident.entities[0].to_dict()["score"] > 0.8
    assert [[e.text for e in r.entities] for r in batch] == [["Paris"], []]
    sent = [c.request.min_score for c in fake_server.servicer.calls("Extract")]
    assert sent == [0.0, pytest.approx(0.8)]  # the bad values never left the client
    assert fake_server.servicer.calls("ExtractBatch")[0].request.min_score == pytest.approx(0.8)


def test_extract_defaults_send_unset_options(fake_server):
    with Client(fake_server.target) as client:
        client.extract("Ada")
    request = fake_server.servicer.calls("Extract")[0].request
    assert list(request.labels) == [] and request.max_entities == 0 and not request.return_raw


@pytest.mark.parametrize("bad", [0, -3])
def test_extract_rejects_bad_max_entities_locally(fake_server, bad):
    with Client(fake_server.target) as client, pytest.raises(ValueError, match="max_entities"):
        client.extract("Ada", max_entities=bad)
    assert fake_server.servicer.calls("Extract") == []


def test_extract_batch_keeps_input_order(fake_server):
    texts = ["Ada in Paris", "nothing here", "Bob and Carl"]
    with Client(fake_server.target) as client:
        results = client.extract_batch(texts, return_raw=True)
    assert [[e.text for e in r.entities] for r in results] == [["Ada", "Paris"], [], ["Bob", "Carl"]]
    assert all(r.raw is not None for r in results)
    assert len({r.request_id for r in results}) == 1
    assert list(fake_server.servicer.calls("ExtractBatch")[0].request.texts) == texts


def test_extract_batch_rejects_a_single_string(fake_server):
    with Client(fake_server.target) as client, pytest.raises(TypeError, match="not a str"):
        client.extract_batch("Ada in Paris")


def test_extract_batch_over_the_server_limit_is_invalid_argument(fake_server):
    with Client(fake_server.target) as client, pytest.raises(InvalidArgumentError, match="at most 8"):
        client.extract_batch(["Ada"] * 9)


def test_model_info(fake_server):
    with Client(fake_server.target) as client:
        info = client.model_info()
    assert isinstance(info, ModelInfo)
    assert info.model_name == "toy/capitalised-words" and info.engine == "fake 0.0"
    assert info.task_card is not None and info.task_card.label_names == ["PER", "LOC"]
    assert info.task_card.labels[0].description == "people"
    assert info.task_card.output_schema == {"type": "object"}
    assert info.task_card.bounds.max_entities == 24 and info.task_card.base_model is None
    assert info.limits.max_batch_texts == 8 and info.limits.max_message_bytes == 1 << 20
    assert info.server_version == "0.0.0-fake"


def test_health(fake_server):
    with Client(fake_server.target) as client:
        assert client.health() == "SERVING"
        fake_server.set_health("NOT_SERVING")
        assert client.health() == "NOT_SERVING"
        fake_server.set_health("SERVING", "nerve.v1.NerveService")
        assert client.health("nerve.v1.NerveService") == "SERVING"
        with pytest.raises(nerve_client.NotFoundError):
            client.health("no.such.Service")


def test_health_of_an_unreachable_server_raises_unavailable_without_retrying(unused_target):
    with Client(unused_target, retries=5, backoff=5.0, max_backoff=5.0) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            client.health(timeout=10)
        assert time.monotonic() - start < 2.0  # one retry would have slept at least 2.5 s


def test_wait_until_serving(fake_server):
    fake_server.set_health("NOT_SERVING")
    with Client(fake_server.target) as client:
        with pytest.raises(UnavailableError, match="NOT_SERVING"):
            client.wait_until_serving(timeout=0.3, poll=0.05)
        fake_server.set_health("SERVING")
        client.wait_until_serving(timeout=5, poll=0.05)


# ------------------------------------------------------------------------------------------------ errors

ERROR_CLASSES = {
    "INVALID_ARGUMENT": E.InvalidArgumentError,
    "NOT_FOUND": E.NotFoundError,
    "PERMISSION_DENIED": E.PermissionDeniedError,
    "FAILED_PRECONDITION": E.FailedPreconditionError,
    "UNAUTHENTICATED": E.UnauthenticatedError,
    "RESOURCE_EXHAUSTED": E.ResourceExhaustedError,
    "UNAVAILABLE": E.UnavailableError,
    "DEADLINE_EXCEEDED": E.DeadlineExceededError,
    "CANCELLED": E.CancelledError,
    "UNIMPLEMENTED": E.UnimplementedError,
    "INTERNAL": E.InternalError,
    "UNKNOWN": E.NerveError,
    "ABORTED": E.NerveError,
}


@pytest.mark.parametrize("code_name", sorted(ERROR_CLASSES))
def test_status_codes_map_to_exceptions_with_request_id(fake_server, code_name):
    with Client(fake_server.target, retries=0) as client:
        with pytest.raises(NerveError) as info:
            client.extract(f"fail:{code_name}", request_id=f"req-{code_name}")
    err = info.value
    assert type(err) is ERROR_CLASSES[code_name]
    assert err.code == grpc.StatusCode[code_name]
    assert err.message == f"scripted {code_name}"
    assert err.request_id == f"req-{code_name}"
    assert code_name in str(err) and f"req-{code_name}" in str(err)
    assert isinstance(err.__cause__, grpc.RpcError)


def test_error_request_id_comes_from_trailing_metadata(fake_server):
    fake_server.servicer.echo_request_id = "server-side-id"
    with Client(fake_server.target, retries=0) as client, pytest.raises(InvalidArgumentError) as info:
        client.extract("fail:INVALID_ARGUMENT", request_id="client-side-id")
    assert info.value.request_id == "server-side-id"


def test_unreachable_server_error_carries_the_client_request_id(unused_target):
    with Client(unused_target, retries=0) as client, pytest.raises(UnavailableError) as info:
        client.extract("Ada", request_id="rid-unreachable")
    assert info.value.request_id == "rid-unreachable"


# ----------------------------------------------------------------------------------------------- retries


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_retries_transient_errors_then_succeeds(fake_server, code):
    fake_server.servicer.failures["Extract"] = [(code, "loading"), (code, "still loading")]
    with Client(fake_server.target, retries=3, backoff=0.01) as client:
        result = client.extract("Ada in Paris", request_id="same-id")
    assert [e.text for e in result.entities] == ["Ada", "Paris"]
    calls = fake_server.servicer.calls("Extract")
    assert len(calls) == 3
    assert {c.metadata["x-request-id"] for c in calls} == {"same-id"}


def test_gives_up_after_the_configured_retries(fake_server):
    fake_server.servicer.failures["Extract"] = [(grpc.StatusCode.UNAVAILABLE, "draining")] * 10
    with Client(fake_server.target, retries=2, backoff=0.01) as client, pytest.raises(UnavailableError):
        client.extract("Ada")
    assert len(fake_server.servicer.calls("Extract")) == 3


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
     grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED],
)
def test_never_retries_other_errors(fake_server, code):
    fake_server.servicer.failures["Extract"] = [(code, "no")]
    with Client(fake_server.target, retries=3, backoff=0.01) as client, pytest.raises(NerveError) as info:
        client.extract("Ada")
    assert info.value.code == code
    assert len(fake_server.servicer.calls("Extract")) == 1


def test_retries_zero_means_one_attempt(fake_server):
    fake_server.servicer.failures["Extract"] = [(grpc.StatusCode.UNAVAILABLE, "loading")]
    with Client(fake_server.target, retries=0) as client, pytest.raises(UnavailableError):
        client.extract("Ada")
    assert len(fake_server.servicer.calls("Extract")) == 1


class _CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.methods.append(client_call_details.method)
        return continuation(client_call_details, request)


def test_oversized_message_is_not_retried(fake_server):
    counter = _CountingInterceptor()
    with Client(fake_server.target, retries=3, backoff=0.5, interceptors=[counter]) as client:
        with pytest.raises(ResourceExhaustedError) as info:
            client.extract("a" * (2 << 20))
    assert "larger than max" in info.value.message and not info.value.retryable
    assert counter.methods == ["/nerve.v1.NerveService/Extract"]


# --------------------------------------------------------------------------------------------- deadlines


def test_deadline_exceeded(fake_server):
    with Client(fake_server.target, timeout=0.3) as client:
        start = time.monotonic()
        with pytest.raises(E.DeadlineExceededError) as info:
            client.extract("slow")
        assert time.monotonic() - start < 2.0
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_per_call_timeout_overrides_the_default(fake_server):
    with Client(fake_server.target, timeout=30) as client, pytest.raises(E.DeadlineExceededError):
        client.extract("slow", timeout=0.2)
    remaining = fake_server.servicer.calls("Extract")[0].time_remaining
    assert remaining is not None and remaining <= 0.21


def test_retries_stay_within_the_deadline(fake_server):
    fake_server.servicer.failures["Extract"] = [(grpc.StatusCode.UNAVAILABLE, "loading")] * 100
    with Client(fake_server.target, timeout=0.6, retries=100, backoff=0.05, max_backoff=0.1) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            client.extract("Ada")
        elapsed = time.monotonic() - start
    assert elapsed < 1.5  # without the deadline, 100 retries would take seconds
    remaining = [c.time_remaining for c in fake_server.servicer.calls("Extract")]
    assert len(remaining) >= 3
    assert all(r is not None and r <= 0.61 for r in remaining)  # the wire rounds timeouts up a little
    # each attempt gets what is left of the one deadline, not a fresh budget
    assert all(later < earlier for earlier, later in zip(remaining, remaining[1:], strict=False))
    assert remaining[-1] < 0.5


def test_no_timeout_means_no_deadline(fake_server):
    with Client(fake_server.target, timeout=None) as client:
        client.extract("Ada")
    assert fake_server.servicer.calls("Extract")[0].time_remaining is None or (
        fake_server.servicer.calls("Extract")[0].time_remaining > 1e6
    )


# ---------------------------------------------------------------------------------------------- metadata


def test_bearer_token_is_sent(fake_server):
    fake_server.servicer.required_token = "s3cret"
    with Client(fake_server.target, token="s3cret", metadata=[("x-tenant", "acme")]) as client:
        client.extract("Ada")
    metadata = fake_server.servicer.calls("Extract")[0].metadata
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-tenant"] == "acme"


def test_missing_token_is_unauthenticated(fake_server):
    fake_server.servicer.required_token = "s3cret"
    with Client(fake_server.target) as client, pytest.raises(E.UnauthenticatedError):
        client.extract("Ada")
    assert "authorization" not in fake_server.servicer.calls("Extract")[0].metadata


def test_request_id_is_propagated(fake_server):
    with Client(fake_server.target) as client:
        result = client.extract("Ada", request_id="req-123")
        generated = client.extract("Ada")
    assert fake_server.servicer.calls("Extract")[0].metadata["x-request-id"] == "req-123"
    assert result.request_id == "req-123"
    sent = fake_server.servicer.calls("Extract")[1].metadata["x-request-id"]
    assert len(sent) == 32 and generated.request_id == sent


def test_result_request_id_comes_from_trailing_metadata(fake_server):
    fake_server.servicer.echo_request_id = "server-chosen"
    with Client(fake_server.target) as client:
        assert client.extract("Ada", request_id="mine").request_id == "server-chosen"


@pytest.mark.parametrize("bad", ["", "x" * 129, "naïve", "a\nb"])
def test_invalid_request_ids_are_rejected_locally(fake_server, bad):
    with Client(fake_server.target) as client, pytest.raises(ValueError, match="request_id"):
        client.extract("Ada", request_id=bad)


def test_constructor_validation():
    with pytest.raises(ValueError):
        Client("")
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", retries=-1)


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server (self-signed certificate for 127.0.0.1 made with openssl) with the fake servicer."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    servicer = FakeNerve()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_NerveServiceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield f"127.0.0.1:{port}", cert
    finally:
        server.stop(None)


def test_tls_with_root_certificates(tls_server):
    target, cert = tls_server
    with Client(target, tls=str(cert)) as client:
        assert [e.text for e in client.extract("Ada").entities] == ["Ada"]
    with Client(target, tls=cert.read_bytes(), token="t") as client:
        assert client.extract("Bob").entities[0].text == "Bob"
    with Client(target, tls=False, retries=0, timeout=5) as client, pytest.raises(UnavailableError):
        client.extract("Ada")  # plaintext to a TLS port


def test_label_mapping_sends_names_and_descriptions() -> None:
    from nerve_client import _convert as cv

    req = cv.extract_request("Aspirin", {"drug": "medicines", "person": ""}, None, False)
    assert list(req.labels) == ["drug", "person"] and dict(req.label_descriptions) == {"drug": "medicines"}
    batch = cv.extract_batch_request(["a"], ["drug"], None, False)
    assert list(batch.labels) == ["drug"] and not batch.label_descriptions
