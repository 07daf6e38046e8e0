"""OpenTelemetry traces (``tracing: otlp``): a real server on a loopback port over the tiny engine; spans are caught
by the SDK's InMemorySpanExporter, or by a collector on loopback that speaks OTLP over gRPC or HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health_pb2
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import types_pb2 as tpb

from nerve.service import tracing
from nerve.service.config import ServeConfig, load_config
from nerve.service.server import NerveServer

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (opentelemetry-sdk) is not installed")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

pytestmark = pytest.mark.engine

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
EXTRACT = "nerve.v1.NerveService/Extract"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """The exporter every traced server of the test sends its spans to (instead of an OTLP collector)."""
    memory = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "span_exporter", lambda: memory)
    return memory


def finished(r, exporter: InMemorySpanExporter, *expected: str) -> dict[str, list]:
    """The spans the server has ended, by name, once one of each ``expected`` name is there, or after 2 s.

    A call that fails is aborted, and an abort sends the status at once: the client can see it a moment before
    the span ends."""
    deadline = time.monotonic() + 2
    while True:
        assert r.server.tracing.flush()  # export what the batch processor holds
        out: dict[str, list] = {}
        for span in exporter.get_finished_spans():
            out.setdefault(span.name, []).append(span)
        if set(expected) <= set(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.01)


def test_a_call_joins_the_callers_trace(start_server, exporter) -> None:
    r = start_server(tracing="otlp")
    _, call = r.stub.Extract.with_call(
        spb.ExtractRequest(text="Peter Blackburn"), timeout=60,
        metadata=(("traceparent", TRACEPARENT), ("tracestate", TRACESTATE), ("x-request-id", "req-7")))
    assert dict(call.trailing_metadata())["x-request-id"] == "req-7"
    [span] = finished(r, exporter, EXTRACT)[EXTRACT]
    assert span.kind == SpanKind.SERVER
    assert span.context.trace_id == int(TRACE_ID, 16)  # the caller's trace
    assert span.parent is not None and span.parent.is_remote and span.parent.span_id == int(PARENT_ID, 16)
    assert span.context.span_id != span.parent.span_id
    assert span.context.trace_state.get("congo") == "t61rcWkgMzE"
    assert dict(span.attributes) == {"rpc.system": "grpc", "rpc.service": "nerve.v1.NerveService",
                                     "rpc.method": "Extract", "rpc.grpc.status_code": 0,
                                     "nerve.request_id": "req-7"}
    assert span.status.status_code == StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "nerve"


def test_a_failed_call_records_its_status_and_the_generated_request_id(start_server, exporter) -> None:
    r = start_server(tracing="otlp")
    with pytest.raises(grpc.RpcError) as info:
        r.stub.Extract(spb.ExtractRequest(text=""), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rid = dict(info.value.trailing_metadata())["x-request-id"]
    [span] = finished(r, exporter, EXTRACT)[EXTRACT]
    assert span.parent is None  # no traceparent: the call starts a trace of its own
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.attributes["nerve.request_id"] == rid and len(rid) == 32
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "INVALID_ARGUMENT: text is empty or whitespace only"


def test_streams_and_refused_calls_are_traced_and_health_checks_are_not(start_server, exporter) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    r = start_server(tracing="otlp", auth_token="s3cret")
    with pytest.raises(grpc.RpcError) as info:
        r.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10, metadata=(("traceparent", TRACEPARENT),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert r.status() == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(r.channel).get_services()  # a reflection stream, through tracing
    assert "nerve.v1.NerveService" in services
    stream = [spb.EvaluateRequest(config=spb.EvaluateConfig(inline_examples=spb.InlineSource())),
              spb.EvaluateRequest(example=tpb.Example(text="Peter Blackburn"))]
    responses = list(r.stub.Evaluate(iter(stream), timeout=120, metadata=(("authorization", "Bearer s3cret"),
                                                                          ("x-request-id", "eval-1"))))
    assert responses[-1].WhichOneof("kind") == "report"
    spans = finished(r, exporter, "nerve.v1.NerveService/GetModelInfo", "nerve.v1.NerveService/Evaluate")
    assert not any(name.startswith("grpc.health.v1") for name in spans)
    [denied] = spans["nerve.v1.NerveService/GetModelInfo"]
    assert denied.context.trace_id == int(TRACE_ID, 16)
    assert denied.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert denied.status.description == "UNAUTHENTICATED: missing or invalid bearer token"
    assert "nerve.request_id" not in denied.attributes  # refused before the servicer gave it an id
    [evaluate] = spans["nerve.v1.NerveService/Evaluate"]
    assert evaluate.attributes["nerve.request_id"] == "eval-1"
    assert evaluate.attributes["rpc.grpc.status_code"] == 0 and evaluate.status.status_code == StatusCode.UNSET
    [reflection] = spans["grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"]
    assert reflection.attributes["rpc.method"] == "ServerReflectionInfo"


def test_a_collector_that_does_not_answer_does_not_hold_up_the_shutdown(start_server, monkeypatch, caplog) -> None:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans) -> SpanExportResult:
            release.wait(30)
            return SpanExportResult.FAILURE

    monkeypatch.setattr(tracing, "span_exporter", Stuck)
    monkeypatch.setattr(tracing, "FLUSH_SECONDS", 0.5)
    r = start_server(tracing="otlp")
    r.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10)
    start = time.monotonic()
    try:
        r.stop()
        assert time.monotonic() - start < 5
    finally:
        release.set()
    assert "the collector did not take the last spans within 0.5 s" in caplog.text


def test_off_makes_no_spans(start_server, exporter) -> None:
    r = start_server()
    assert r.server.cfg.tracing == "off" and r.server.tracing is None
    r.stub.Extract(spb.ExtractRequest(text="Peter"), timeout=60, metadata=(("traceparent", TRACEPARENT),))
    assert exporter.get_finished_spans() == ()


def test_off_imports_nothing_of_opentelemetry() -> None:
    code = """
import asyncio, sys
from nerve.service.config import ServeConfig, load_config
from nerve.service.server import NerveServer

async def main():
    load_config(environ={})
    server = NerveServer(ServeConfig(port=0, metrics_port=0))
    await server.start(load=False)
    await server.drain(0)

asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_missing_packages_fail_at_start_up_naming_the_extra(monkeypatch: pytest.MonkeyPatch, loop_thread) -> None:
    for module in tracing.REQUIRED_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ValueError, match=r"opentelemetry-exporter-otlp and opentelemetry-sdk, which are not "
                                         r"installed: pip install 'nerve\[otel\]', or set tracing: off"):
        load_config(overrides={"tracing": "otlp"}, environ={})
    server = NerveServer(ServeConfig(port=0, metrics_port=0, tracing="otlp"))  # settings not validated
    with pytest.raises(tracing.TracingError, match=r"nerve\[otel\]"):
        loop_thread.run(server.start(load=False))
    assert server.port is None  # refused before the port opened
    assert load_config(overrides={"tracing": "off"}, environ={}).tracing == "off"


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServeConfig().tracing == "off"
    assert load_config(environ={"NERVE_TRACING": "otlp"}).tracing == "otlp"
    with pytest.raises(ValueError, match="'jaeger' is not one of off, otlp"):
        load_config(overrides={"tracing": "jaeger"}, environ={})
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL is 'http/json'"):
        load_config(overrides={"tracing": "otlp"}, environ={})


# -- OTLP to a collector ---------------------------------------------------------------------------------------


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # noqa: N802
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_collector():
    """An OTLP/gRPC trace collector on loopback: (endpoint, the export requests it received)."""
    collector = _GrpcCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", collector.requests
    server.stop(0)


@pytest.fixture
def http_collector():
    """An OTLP/HTTP (protobuf) trace collector on loopback: (endpoint, the export requests it received)."""
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()
    thread.join(5)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_reach_an_otlp_collector_by_the_standard_environment(start_server, monkeypatch, request,
                                                                   protocol: str) -> None:
    endpoint, received = request.getfixturevalue("grpc_collector" if protocol == "grpc" else "http_collector")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME",
                 "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=nerve-0")
    r = start_server(tracing="otlp")
    r.stub.Extract(spb.ExtractRequest(text="Peter"), timeout=60,
                   metadata=(("traceparent", TRACEPARENT), ("x-request-id", "otlp-1")))
    r.stop()  # the drain exports what is buffered
    spans = [(resource.resource, span) for req in received for resource in req.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    [(resource, span)] = [(res, s) for res, s in spans if s.name == EXTRACT]
    attributes = {a.key: a.value for a in resource.attributes}
    assert attributes["service.name"].string_value == "nerve"
    assert attributes["k8s.pod.name"].string_value == "nerve-0"
    assert span.trace_id == bytes.fromhex(TRACE_ID) and span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.kind == span.SPAN_KIND_SERVER
    assert {a.key: a.value.string_value for a in span.attributes}["nerve.request_id"] == "otlp-1"
