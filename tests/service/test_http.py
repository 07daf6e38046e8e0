"""The HTTP/JSON gateway: the same API, errors, auth, deadlines and metrics as gRPC, through a real server."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import grpc
import pytest
from google.protobuf import json_format
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import types_pb2 as tpb
from prometheus_client import generate_latest

from nerve.service.http import HTTP_STATUS, ROUTES
from nerve.service.openapi import openapi_document


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def call(self, path: str, body: bytes | str | dict | None = None, *, method: str = "POST",
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")

    def lines(self, path: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, list[dict]]:
        req = urllib.request.Request(self.base + path, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/x-ndjson", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
        except urllib.error.HTTPError as exc:
            return exc.code, [json.loads(exc.read())]


@pytest.fixture
def gateway(start_server):
    def start(**settings):
        r = start_server(http_port=free_port(), **settings)
        return r, Http(r.server.http_port)

    return start


def test_extract_over_http_equals_grpc(gateway) -> None:
    r, http = gateway()
    text = "Peter Blackburn met 浙商银行 in Berlin."
    status, headers, body = http.call("/v1/extract", {"text": text, "returnRaw": True},
                                      headers={"x-request-id": "req-http-1"})
    assert status == 200, body
    assert headers["x-request-id"] == "req-http-1"
    via_grpc = json_format.MessageToDict(r.stub.Extract(spb.ExtractRequest(text=text, return_raw=True), timeout=60))
    for answer in (body, via_grpc):
        answer.pop("usage")
    assert body == via_grpc
    for e in body.get("entities", []):
        assert text[e["start"]:e["end"]] == e["text"]
    # snake_case field names are accepted too, and enums by name
    status, _, body = http.call("/v1/extract", {"text": "🙂 Angela", "offset_unit": "OFFSET_UNIT_UTF16"})
    assert status == 200, body


def test_batch_model_info_and_health(gateway) -> None:
    r, http = gateway()
    status, _, body = http.call("/v1/extract_batch", {"texts": ["Angela Merkel", "巴黎"]})
    assert status == 200 and len(body["results"]) == 2
    for method in ("GET", "POST"):
        status, _, info = http.call("/v1/get_model_info", {} if method == "POST" else None, method=method)
        assert status == 200 and info["modelInfo"]["taskCard"]["labels"], info
    assert http.call("/v1/health", method="GET")[:1] == (200,)
    assert http.call("/v1/health", method="GET")[2] == {"status": "SERVING"}


def test_not_ready_is_503(gateway) -> None:
    _, http = gateway(ready=False)
    assert http.call("/v1/health", method="GET")[0] == 503
    status, _, body = http.call("/v1/extract", {"text": "Angela"})
    assert status == 503 and body["error"]["status"] == "UNAVAILABLE"


@pytest.mark.parametrize(("payload", "needle"), [
    ('{"text": "unterminated', "not a valid ExtractRequest"),
    ('{"text": "a", "no_such_field": 1}', "no_such_field"),
    ('{"text": 5}', "text"),
    ('[1, 2]', "ExtractRequest"),
    ('{"text": ""}', "text is empty"),  # from the servicer, like over gRPC
    ('{"text": "a", "offsetUnit": "OFFSET_UNIT_BOGUS"}', "OFFSET_UNIT_BOGUS"),
])
def test_bad_json_is_400_with_a_request_id(gateway, payload: str, needle: str) -> None:
    r, http = gateway()
    status, headers, body = http.call("/v1/extract", payload, headers={"x-request-id": "bad-1"})
    assert status == 400, body
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert needle in body["error"]["message"]
    assert body["error"]["request_id"] == headers["x-request-id"] == "bad-1"


def test_body_that_is_not_utf8_and_unknown_routes(gateway) -> None:
    _, http = gateway()
    status, _, body = http.call("/v1/extract", b'{"text": "\xff\xfe"}')
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    status, _, body = http.call("/v1/no_such_method", {})
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    status, _, body = http.call("/v1/extract", method="GET")
    assert status == 405


def test_oversized_body_is_413(gateway) -> None:
    _, http = gateway(max_message_bytes=64 << 10)
    status, _, body = http.call("/v1/extract", {"text": "a" * (100 << 10)})
    assert status == 413 and body["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_auth_is_the_grpc_servers(gateway) -> None:
    r, http = gateway(auth_token="s3cret")
    status, _, body = http.call("/v1/extract", {"text": "Angela"})
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    status, _, body = http.call("/v1/extract", {"text": "Angela"}, headers={"Authorization": "Bearer s3cret"})
    assert status == 200, body
    assert http.call("/v1/health", method="GET")[0] == 200  # health stays open, as over gRPC


def test_deadline_header(gateway) -> None:
    r, http = gateway(constrained=False)
    status, _, body = http.call("/v1/extract", {"text": "a" * 300}, headers={"X-Server-Timeout": "0.3"})
    assert status == 504 and body["error"]["status"] == "DEADLINE_EXCEEDED"
    for bad in ("soon", "-1", "0", "nan"):
        status, _, body = http.call("/v1/extract", {"text": "a"}, headers={"X-Server-Timeout": bad})
        assert status == 400 and "X-Server-Timeout" in body["error"]["message"], bad


def test_queue_full_is_429(gateway, tiny_engine) -> None:
    r, http = gateway(constrained=False, max_queue=1)
    busy = r.stub.Extract.future(spb.ExtractRequest(text="a" * 300), timeout=60)
    try:
        for _ in range(100):
            if r.server.state.inflight == 1:
                break
            time.sleep(0.05)
        status, _, body = http.call("/v1/extract", {"text": "b"})
        assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"
    finally:
        busy.cancel()


def test_evaluate_streams_ndjson(gateway) -> None:
    r, http = gateway()
    examples = [{"text": "Angela Merkel visited Paris .", "entities": []}, {"text": "巴黎", "entities": []}]
    lines = [{"config": {"inlineExamples": {"expectedExamples": 2}}}] + [{"example": e} for e in examples]
    status, out = http.lines("/v1/evaluate", "\n".join(json.dumps(x) for x in lines))
    assert status == 200, out
    assert "report" in out[-1] and all("progress" in x for x in out[:-1]), out
    assert out[-1]["report"]["examples"] == 2
    # the same as a JSON array
    status, out2 = http.lines("/v1/evaluate", json.dumps(lines))
    assert status == 200 and out2[-1]["report"]["examples"] == 2
    # an error before the stream starts has its status; a bad line names the line
    status, out = http.lines("/v1/evaluate", json.dumps({"example": examples[0]}))
    assert status == 400 and out[0]["error"]["status"] == "INVALID_ARGUMENT"
    status, out = http.lines("/v1/evaluate", json.dumps(lines[0]) + "\n{oops\n")
    assert status == 400 and "line 2" in out[0]["error"]["message"]


def test_metrics_are_labelled_by_transport(gateway) -> None:
    r, http = gateway()
    http.call("/v1/extract", {"text": "Angela"})
    http.call("/v1/extract", "{broken")
    r.stub.Extract(spb.ExtractRequest(text="Angela"), timeout=60)
    for _ in range(50):
        text = generate_latest(r.server.metrics.registry).decode()
        if 'transport="grpc"' in text:
            break
        time.sleep(0.1)
    assert 'nerve_requests_total{code="OK",method="Extract",transport="http"} 1.0' in text
    assert 'nerve_requests_total{code="OK",method="Extract",transport="grpc"} 1.0' in text
    assert 'nerve_http_responses_total{route="/v1/extract",status="200"} 1.0' in text
    assert 'nerve_http_responses_total{route="/v1/extract",status="400"} 1.0' in text


def test_openapi_document_is_valid_and_matches_answers(gateway) -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    r, http = gateway()
    status, _, doc = http.call("/openapi.json", method="GET")
    assert status == 200
    validate(doc)
    assert doc == json.loads(json.dumps(openapi_document(ROUTES)))
    assert {route.path for route in ROUTES} <= set(doc["paths"])
    _, _, answer = http.call("/v1/extract", {"text": "Peter Blackburn"})
    schema = {"$ref": "#/components/schemas/nerve.v1.ExtractResponse", "components": doc["components"]}
    Draft202012Validator(schema).validate(answer)
    bad = dict(answer, entities=[{"label": 1}])
    assert list(Draft202012Validator(schema).iter_errors(bad))
    # every request message's schema accepts what json_format writes for a filled-in message
    request = spb.ExtractRequest(text="a", labels=["name"], label_descriptions={"name": "people"},
                                 offset_unit=tpb.OFFSET_UNIT_UTF8, max_entities=3)
    schema["$ref"] = "#/components/schemas/nerve.v1.ExtractRequest"
    Draft202012Validator(schema).validate(json_format.MessageToDict(request))


def test_every_grpc_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504


def test_routes_are_every_method() -> None:
    names = [m.name for m in spb.DESCRIPTOR.services_by_name["NerveService"].methods]
    assert [r.name for r in ROUTES] == names
    assert {r.path for r in ROUTES} == {"/v1/extract", "/v1/extract_batch", "/v1/evaluate", "/v1/get_model_info"}


def test_the_readme_curl_command_works(gateway) -> None:
    import re
    import shlex
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    command = re.search(r"^curl .*127\.0\.0\.1:8000/v1/extract.*$", readme, flags=re.M).group(0)
    _, http = gateway()
    argv = [a.replace("127.0.0.1:8000", http.base.removeprefix("http://")) for a in shlex.split(command)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    answer = json.loads(out)
    assert "error" not in answer and "usage" in answer, answer


def test_https_with_the_grpc_ports_certificates_and_client_ca(start_server, tmp_path) -> None:
    import ssl

    pytest.importorskip("cryptography")
    from tests.service.test_hardening_input import _certificates

    f = _certificates(tmp_path)
    r = start_server(http_port=free_port(), tls_cert=str(f["server.pem"]), tls_key=str(f["server.key"]),
                     tls_client_ca=str(f["ca.pem"]))
    url = f"https://127.0.0.1:{r.server.http_port}/v1/extract"
    body = json.dumps({"text": "Angela"}).encode()

    def post(cert: str | None) -> int:
        ctx = ssl.create_default_context(cafile=str(f["ca.pem"]))
        if cert:
            ctx.load_cert_chain(str(f[f"{cert}.pem"]), str(f[f"{cert}.key"]))
        req = urllib.request.Request(url, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60, context=ctx) as answer:
            return answer.status

    assert post("client") == 200
    for cert in (None, "stranger"):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            post(cert)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served on a TLS port
        urllib.request.urlopen(url.replace("https", "http"), data=body, timeout=10)


def test_drain_closes_the_gateway(gateway) -> None:
    import os

    r, http = gateway()
    assert http.call("/v1/health", method="GET")[0] == 200
    folder = os.path.dirname(r.server.http.socket)
    r.loop_thread.run(r.server.drain(0))
    assert not os.path.exists(folder)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(http.base + "/v1/health", timeout=5)
