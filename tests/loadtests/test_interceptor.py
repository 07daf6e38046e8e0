"""The client interceptor fires one locust request event per call, with the RPC's name, timing, size and
error, against a fake server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from nerve_client.pb import service_pb2 as pb
from nerve_client.pb import service_pb2_grpc
from nerve_client.pb import types_pb2 as tpb

from loadtests.interceptor import GrpcCallError, LocustInterceptor, method_name


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.events.append(kwargs)


@pytest.fixture
def stub_and_events(fake_server):
    events = Recorder()
    channel = grpc.insecure_channel(fake_server.target)
    stub = service_pb2_grpc.NerveServiceStub(grpc.intercept_channel(channel, LocustInterceptor(events)))
    yield stub, events
    channel.close()


def test_method_name() -> None:
    assert method_name("/nerve.v1.NerveService/Extract") == "Extract"
    assert method_name(b"/grpc.health.v1.Health/Check") == "Check"


def test_successful_unary_call(stub_and_events) -> None:
    stub, events = stub_and_events
    response = stub.Extract(pb.ExtractRequest(text="Alice met Bob"), timeout=5)
    assert [e.text for e in response.entities] == ["Alice", "Bob"]
    [event] = events.events
    assert event["request_type"] == "grpc" and event["name"] == "Extract"
    assert event["exception"] is None
    assert event["response_length"] == response.ByteSize() > 0
    assert 0 < event["response_time"] < 5000  # milliseconds
    assert event["start_time"] > 1e9  # epoch seconds, as locust expects


def test_failed_call_reports_the_status_and_still_raises(stub_and_events) -> None:
    stub, events = stub_and_events
    with pytest.raises(grpc.RpcError) as info:
        stub.Extract(pb.ExtractRequest(text="FAIL"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the caller sees the normal error
    [event] = events.events
    assert event["name"] == "Extract" and event["response_length"] == 0
    exc = event["exception"]
    assert isinstance(exc, GrpcCallError)
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(exc) == "INVALID_ARGUMENT: text is invalid"  # short: locust groups failures by this


def test_deadline_exceeded(stub_and_events) -> None:
    stub, events = stub_and_events
    with pytest.raises(grpc.RpcError):
        stub.Extract(pb.ExtractRequest(text="SLOW"), timeout=0.2)
    [event] = events.events
    assert event["exception"].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 150 <= event["response_time"] < 1000


def test_batch_and_model_info_names(stub_and_events) -> None:
    stub, events = stub_and_events
    stub.ExtractBatch(pb.ExtractBatchRequest(texts=["Alice", "Bob"]), timeout=5)
    stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert [e["name"] for e in events.events] == ["ExtractBatch", "GetModelInfo"]
    assert all(e["exception"] is None for e in events.events)


def _evaluate_requests(n: int, first_is_config: bool = True):
    if first_is_config:
        yield pb.EvaluateRequest(config=pb.EvaluateConfig(inline_examples=pb.InlineSource(expected_examples=n)))
    for i in range(n):
        yield pb.EvaluateRequest(example=tpb.Example(text=f"Alice {i}", id=str(i)))


def test_streamed_evaluate_fires_once_when_the_stream_ends(stub_and_events) -> None:
    stub, events = stub_and_events
    call = stub.Evaluate(_evaluate_requests(3), timeout=5)
    messages = []
    for message in call:
        assert events.events == [], "the event fires at the end of the stream, not per message"
        messages.append(message)
    assert [m.WhichOneof("kind") for m in messages] == ["progress"] * 3 + ["report"]
    assert messages[-1].report.examples == 3
    [event] = events.events
    assert event["name"] == "Evaluate" and event["exception"] is None
    assert event["response_length"] == sum(m.ByteSize() for m in messages)
    assert call.code() == grpc.StatusCode.OK  # other attributes are the call's


def test_streamed_error(stub_and_events) -> None:
    stub, events = stub_and_events
    with pytest.raises(grpc.RpcError):
        list(stub.Evaluate(_evaluate_requests(2, first_is_config=False), timeout=5))
    [event] = events.events
    assert event["name"] == "Evaluate"
    assert event["exception"].code == grpc.StatusCode.INVALID_ARGUMENT


def test_unreachable_server_is_unavailable() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events = Recorder()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.NerveServiceStub(grpc.intercept_channel(channel, LocustInterceptor(events)))
        with pytest.raises(grpc.RpcError):
            stub.Extract(pb.ExtractRequest(text="x"), timeout=2)
    [event] = events.events
    assert event["exception"].code == grpc.StatusCode.UNAVAILABLE
