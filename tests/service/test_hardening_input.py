"""Production hardening: bad input of every kind ends INVALID_ARGUMENT (or FAILED_PRECONDITION) with the request
id, request ids are safe to log, dataset errors do not leak the file, settings that cannot work are refused at
start-up, mutual TLS, connection age, and health checks that other traffic cannot crowd out.

The servers here run on a loopback port over :class:`StubExtractor` (no model, no engine): what is tested is the
transport and the servicer's checks.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import types_pb2 as tpb

from nerve.extraction import ExtractionResult, ExtractorBase, InputError, Usage
from nerve.ner.card import TaskCard
from nerve.service.config import ServeConfig, load_config
from nerve.service.errors import MAX_REQUEST_ID, clean_request_id
from nerve.service.server import NerveServer, server_options
from nerve.service.servicer import _read_server_dataset
from tests.conftest import Running
from tests.helpers import StubEngine

EXTRACT = "/nerve.v1.NerveService/Extract"
EVALUATE = "/nerve.v1.NerveService/Evaluate"
MODEL_INFO = "/nerve.v1.NerveService/GetModelInfo"


class StubExtractor(ExtractorBase):
    """An extractor without an engine: CLUENER labels, no entities found."""

    def __init__(self) -> None:
        self.card = TaskCard.preset("cluener")
        self.engine = StubEngine()

    def prepare(self, text: str, labels=None, max_entities: int | None = None) -> None:
        if not text.strip():
            raise InputError("text is empty or whitespace only")

    async def extract(self, text: str, *, labels=None, max_entities: int | None = None,
                      request_id: str | None = None, prepared=None) -> ExtractionResult:
        return ExtractionResult([], "", True, usage=Usage(prompt_tokens=1, completion_tokens=1))


@pytest.fixture
def server(loop_thread):
    """Factory: a started server with the given settings, over :class:`StubExtractor` unless ``ready=False``."""
    running: list[Running] = []

    def start(ready: bool = True, **settings) -> Running:
        cfg = ServeConfig(port=0, metrics_port=0, host="127.0.0.1", **settings)
        srv = NerveServer(cfg)
        loop_thread.run(srv.start(load=False))
        r = Running(loop_thread, srv)
        if ready:
            r.make_ready(StubExtractor())
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__"):
            list(result)
    return info.value


def trailer(err: grpc.RpcError, key: str = "x-request-id") -> str | None:
    return dict(err.trailing_metadata() or ()).get(key)


def requests_counted(r: Running, method: str, code: str, expected: float) -> float:
    """The count of ``nerve_requests_total{method, code}`` once it reaches ``expected`` (it is recorded just after
    the status is sent), or after 2 s."""
    deadline = time.monotonic() + 2
    while (n := r.server.metrics.requests.labels(method, code, "grpc")._value.get()) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


# -- 1. a message that does not parse ----------------------------------------------------------------------------


def test_invalid_utf8_in_a_string_field_is_invalid_argument_with_the_request_id(server) -> None:
    r = server()
    raw = r.channel.unary_unary(EXTRACT, request_serializer=lambda b: b, response_deserializer=spb.ExtractResponse.FromString)
    bad = b"\x0a\x03a\xffb"  # field 1 (text), 3 bytes, not UTF-8
    err = rpc_error(raw, bad, metadata=(("x-request-id", "bad-utf8"),), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nerve.v1.ExtractRequest" in err.details() and "UTF-8" in err.details()
    assert trailer(err) == "bad-utf8"
    assert requests_counted(r, "Extract", "INVALID_ARGUMENT", 1) == 1
    ok = raw(spb.ExtractRequest(text="ab").SerializeToString(), timeout=10)  # the same method still serves
    assert list(ok.entities) == []


def test_invalid_utf8_in_a_streamed_evaluate_message_is_invalid_argument(server) -> None:
    r = server()
    raw = r.channel.stream_stream(EVALUATE, request_serializer=lambda b: b,
                                  response_deserializer=spb.EvaluateResponse.FromString)
    config = spb.EvaluateRequest(config=spb.EvaluateConfig(inline_examples=spb.InlineSource())).SerializeToString()
    example = spb.EvaluateRequest(example=tpb.Example(text="ab")).SerializeToString().replace(b"ab", b"\xff\xfe")
    err = rpc_error(raw, iter([config, example]), metadata=(("x-request-id", "bad-stream"),), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nerve.v1.EvaluateRequest" in err.details()
    assert trailer(err) == "bad-stream"


# -- 2. request ids ------------------------------------------------------------------------------------------------


def test_request_ids_are_cleaned_and_cut() -> None:
    assert clean_request_id("job-7/line-12:a.b_c@d+e=f") == "job-7/line-12:a.b_c@d+e=f"
    assert clean_request_id("a\nrpc=X code=OK\r\x00") == "a_rpc=X_code=OK__"
    assert clean_request_id("naïve") == "na_ve"
    assert clean_request_id(b"a\nb") == "a_b"
    assert len(clean_request_id("x" * 1000)) == MAX_REQUEST_ID


def test_a_request_id_with_a_newline_cannot_forge_a_log_line(server, caplog) -> None:
    r = server(ready=False)
    forged = b"abc\n2026-01-01 00:00:00 INFO nerve.service rpc=Extract request_id=x code=OK"
    with caplog.at_level(logging.INFO, logger="nerve.service"):
        blocks = raw_http2_call(r.server.port, MODEL_INFO, b"", [(b"x-request-id", forged)])
        time.sleep(0.2)  # the log line is written after the trailers are sent
    trailers = dict(blocks[-1])
    assert trailers["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])  # still loading
    rid = trailers["x-request-id"]
    assert rid == clean_request_id(forged.decode()) and rid.startswith("abc_2026-01-01_00:00:00_INFO")
    lines = [rec.getMessage() for rec in caplog.records if "rpc=" in rec.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and f"request_id={rid} " in lines[0]
    long = raw_http2_call(r.server.port, MODEL_INFO, b"", [(b"x-request-id", b"y" * 500)])
    assert dict(long[-1])["x-request-id"] == "y" * MAX_REQUEST_ID


# -- 3 and 4. server-side datasets ---------------------------------------------------------------------------------


def _evaluate_dataset(r: Running, path: str, rid: str) -> grpc.RpcError:
    config = spb.EvaluateRequest(config=spb.EvaluateConfig(dataset=spb.DatasetSource(path=path)))
    return rpc_error(r.stub.Evaluate, iter([config]), metadata=(("x-request-id", rid),), timeout=30)


def test_dataset_errors_name_the_file_and_line_but_never_its_content(server, tmp_path, caplog) -> None:
    root = tmp_path / "datasets"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "bad.conll").write_text("EU B-ORG\nSECRET-TOKEN-42\n", encoding="utf-8")
    (root / "sub" / "empty.jsonl").write_text('{"text": "private words", "entities": []}\n', encoding="utf-8")
    r = server(eval_dataset_roots=[str(root)])
    with caplog.at_level(logging.WARNING, logger="nerve.service"):
        err = _evaluate_dataset(r, "sub/bad.conll", "ds-1")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.details()
    assert details == "dataset sub/bad.conll:2: malformed; the reason is in the server log (request id ds-1)"
    assert "SECRET" not in details and str(tmp_path) not in details
    assert trailer(err) == "ds-1"
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "SECRET-TOKEN-42" in logged and str(root / "sub" / "bad.conll") in logged and "ds-1" in logged

    err = _evaluate_dataset(r, str(root / "sub" / "empty.jsonl"), "ds-2")  # an absolute path inside the root
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("dataset sub/empty.jsonl: 1 example(s), none with an entity (read as jsonl)")
    assert "private words" not in err.details() and str(tmp_path) not in err.details()

    (root / "broken.jsonl").write_text('{"text": "private words", "entities": []}\n{"text": "more private\n',
                                       encoding="utf-8")
    err = _evaluate_dataset(r, "broken.jsonl", "ds-3")  # a JSON syntax error quotes nothing: its reason is given
    assert err.details().startswith("dataset broken.jsonl:2: invalid JSON: Unterminated string")
    assert "private" not in err.details() and str(tmp_path) not in err.details()


def test_an_unreadable_dataset_is_failed_precondition_without_the_path(tmp_path) -> None:
    from nerve.service.errors import FailedPrecondition

    folder = tmp_path / "root" / "a-folder.jsonl"
    folder.mkdir(parents=True)
    with pytest.raises(FailedPrecondition) as info:
        list(_read_server_dataset(folder, "jsonl", "", [str(tmp_path / "root")]))
    assert str(info.value).startswith("dataset a-folder.jsonl: cannot be read (Is a directory)")
    assert str(tmp_path) not in str(info.value)


def test_odd_dataset_paths_are_client_errors(server, tmp_path) -> None:
    r = server(eval_dataset_roots=[str(tmp_path)])
    err = _evaluate_dataset(r, "data\x00.jsonl", "nul")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in err.details()
    assert trailer(err) == "nul"
    err = _evaluate_dataset(r, "x" * 300 + ".jsonl", "long-name")  # longer than a file name may be
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) < 300
    err = _evaluate_dataset(r, "x/" * 3000, "long-path")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 4096" in err.details()


# -- 5. unknown labels -----------------------------------------------------------------------------------------------


def test_unknown_label_names_are_echoed_within_bounds(server) -> None:
    r = server()
    labels = [f"{'x' * 5000}{i}" for i in range(200)]
    err = rpc_error(r.stub.Extract, spb.ExtractRequest(text="Ada", labels=labels), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown labels" in err.details() and "(200)" in err.details()
    assert len(err.details()) < 600


# -- 6. settings that cannot work ------------------------------------------------------------------------------------


def test_a_batch_larger_than_the_queue_is_refused_at_start_up(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"max_batch_texts \(300\) is larger than max_queue \(100\)"):
        load_config(overrides={"max_batch_texts": 300, "max_queue": 100}, environ={})
    load_config(overrides={"max_batch_texts": 100, "max_queue": 100}, environ={})  # equal is fine
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("max_queue: 16\nmax_batch_texts: 64\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "nerve.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "max_batch_texts (64) is larger than max_queue (16)" in " ".join(proc.stderr.split())


def test_other_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="tls_client_ca"):
        load_config(overrides={"tls_client_ca": "ca.pem"}, environ={})
    with pytest.raises(ValueError, match="auth_token is empty"):
        load_config(environ={"NERVE_AUTH_TOKEN": ""})
    for name in ("max_connection_age_seconds", "max_connection_age_grace_seconds"):
        with pytest.raises(ValueError, match=name):
            load_config(overrides={name: -1}, environ={})
    with pytest.raises(ValueError, match="max_watch_streams"):
        load_config(overrides={"max_watch_streams": 0}, environ={})


# -- 7. mutual TLS ---------------------------------------------------------------------------------------------------


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and a client certificate
    from another CA; PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    files: dict[str, Path] = {}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(label: str, key, cert: x509.Certificate) -> None:
        files[f"{label}.key"] = folder / f"{label}.key"
        files[f"{label}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        files[f"{label}.pem"] = folder / f"{label}.pem"
        files[f"{label}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def build(subject: str, issuer: x509.Name, signer, public, *, ca: bool = False, usage=None, san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(public)
             .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
             .not_valid_after(now + timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                              content_commitment=False, key_encipherment=False, data_encipherment=False,
                                              key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    import ipaddress

    for label in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        save(label, key, build(f"nerve test {label}", name(f"nerve test {label}"), key, key.public_key(), ca=True))
    ca_key = serialization.load_pem_private_key(files["ca.key"].read_bytes(), None)
    other_key = serialization.load_pem_private_key(files["other-ca.key"].read_bytes(), None)
    leaves = [("server", ca_key, "ca", ExtendedKeyUsageOID.SERVER_AUTH,
               [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
              ("client", ca_key, "ca", ExtendedKeyUsageOID.CLIENT_AUTH, None),
              ("stranger", other_key, "other-ca", ExtendedKeyUsageOID.CLIENT_AUTH, None)]
    for label, signer, issuer, usage, san in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        save(label, key, build(label, name(f"nerve test {issuer}"), signer, key.public_key(), usage=usage, san=san))
    return files


def _check_over_tls(port: int, ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> int:
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(server, tmp_path) -> None:
    pytest.importorskip("cryptography")
    from nerve_client import Client, UnavailableError

    f = _certificates(tmp_path)
    ca = f["ca.pem"].read_bytes()
    r = server(ready=False, tls_cert=str(f["server.pem"]), tls_key=str(f["server.key"]), tls_client_ca=str(f["ca.pem"]))
    port = r.server.port
    assert _check_over_tls(port, ca, f["client.pem"].read_bytes(), f["client.key"].read_bytes()) == \
        health_pb2.HealthCheckResponse.NOT_SERVING
    for cert, key in [(None, None), (f["stranger.pem"].read_bytes(), f["stranger.key"].read_bytes())]:
        with pytest.raises(grpc.RpcError) as info:
            _check_over_tls(port, ca, cert, key)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # the SDK: client_cert and client_key, as paths or PEM bytes
    with Client(f"127.0.0.1:{port}", tls=str(f["ca.pem"]), client_cert=str(f["client.pem"]),
                client_key=str(f["client.key"])) as client:
        assert client.health() == "NOT_SERVING"
    with Client(f"127.0.0.1:{port}", tls=ca, client_cert=f["client.pem"].read_bytes(),
                client_key=f["client.key"].read_bytes()) as client:
        assert client.health() == "NOT_SERVING"
    with Client(f"127.0.0.1:{port}", tls=ca, retries=0, timeout=5) as client, pytest.raises(UnavailableError):
        client.health()


def test_tls_without_a_client_ca_accepts_any_client(server, tmp_path) -> None:
    pytest.importorskip("cryptography")
    f = _certificates(tmp_path)
    r = server(ready=False, tls_cert=str(f["server.pem"]), tls_key=str(f["server.key"]))
    assert _check_over_tls(r.server.port, f["ca.pem"].read_bytes()) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_sdk_checks_its_client_certificate_arguments() -> None:
    from nerve_client import Client

    with pytest.raises(ValueError, match="together"):
        Client("127.0.0.1:1", tls=True, client_cert=b"cert")
    with pytest.raises(ValueError, match="needs TLS"):
        Client("127.0.0.1:1", client_cert=b"cert", client_key=b"key")


# -- 8. connection age -----------------------------------------------------------------------------------------------


def test_connection_age_options() -> None:
    default = dict(server_options(ServeConfig()))
    assert "grpc.max_connection_age_ms" not in default and "grpc.max_connection_age_grace_ms" not in default
    aged = dict(server_options(ServeConfig(max_connection_age_seconds=300, max_connection_age_grace_seconds=45)))
    assert aged["grpc.max_connection_age_ms"] == 300_000 and aged["grpc.max_connection_age_grace_ms"] == 45_000


def test_connections_are_closed_after_their_age_and_clients_reconnect(server) -> None:
    r = server(ready=False, max_connection_age_seconds=1, max_connection_age_grace_seconds=1)
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(r.target) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE
        deadline = time.monotonic() + 10
        while ready not in states or idle not in states[states.index(ready):]:  # the callbacks come on their own thread
            assert time.monotonic() < deadline, f"the connection was not closed for its age: {states}"
            time.sleep(0.1)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status  # a new connection serves
        channel.unsubscribe(states.append)


# -- 9. health under other traffic -----------------------------------------------------------------------------------


def _open_watches(channel: grpc.Channel, n: int) -> list:
    stub = health_pb2_grpc.HealthStub(channel)
    streams = []
    for _ in range(n):
        stream = stub.Watch(health_pb2.HealthCheckRequest())
        streams.append(stream)
        next(stream)  # the current status: the stream is open on the server
    return streams


def test_health_check_answers_with_many_watch_streams_open(server) -> None:
    r = server(ready=False, max_queue=16)  # the old global limit was max_queue + 64 = 80 calls
    channels = [grpc.insecure_channel(r.target) for _ in range(3)]
    try:
        streams = [s for ch in channels for s in _open_watches(ch, 50)]
        assert len(streams) == 150
        with grpc.insecure_channel(r.target) as probe:  # the kubelet connects afresh for each probe
            started = time.monotonic()
            status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=1).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() - started < 1
        assert r.status() == health_pb2.HealthCheckResponse.NOT_SERVING  # and on a busy connection
        for s in streams:
            s.cancel()
    finally:
        for ch in channels:
            ch.close()


def test_watch_streams_are_capped_and_checks_are_not(server) -> None:
    r = server(ready=False, max_watch_streams=3)
    streams = _open_watches(r.channel, 3)
    err = rpc_error(lambda: next(health_pb2_grpc.HealthStub(r.channel).Watch(health_pb2.HealthCheckRequest())))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_watch_streams" in err.details()
    assert r.status() == health_pb2.HealthCheckResponse.NOT_SERVING
    streams.pop().cancel()
    deadline = time.monotonic() + 5
    while True:  # the server learns of the cancellation shortly after
        try:
            streams += _open_watches(r.channel, 1)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    for s in streams:
        s.cancel()


def test_health_is_answered_while_nerve_calls_fill_the_queue(server, loop_thread) -> None:
    """Calls beyond the queue are refused per text; health checks are not counted with them."""
    import asyncio

    gate = asyncio.Event()

    class Slow(StubExtractor):
        async def extract(self, text, **kwargs):
            await gate.wait()
            return await super().extract(text)

    r = server(ready=False, max_queue=2, max_batch_texts=2)
    r.make_ready(Slow())
    futures = [r.stub.Extract.future(spb.ExtractRequest(text="Ada"), timeout=30) for _ in range(2)]
    deadline = time.monotonic() + 5
    while r.server.state.inflight < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    err = rpc_error(r.stub.Extract, spb.ExtractRequest(text="Bob"), timeout=5)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert r.status() == health_pb2.HealthCheckResponse.SERVING
    loop_thread.loop.call_soon_threadsafe(gate.set)
    assert all(f.result(timeout=10) is not None for f in futures)


# -- 10. the fail-closed auth component ------------------------------------------------------------------------------


def test_require_auth_component_fails_closed_without_the_secret(tmp_path) -> None:
    from tests.deploy.conftest import DEPLOY_DIR, _load_validate, require_kubectl

    require_kubectl()
    validate = _load_validate()
    k8s = DEPLOY_DIR / "k8s"
    overlay, component = (os.path.relpath(k8s / sub, tmp_path) for sub in ("overlays/cpu", "components/require-auth"))
    (tmp_path / "kustomization.yaml").write_text(  # kustomize takes relative paths only
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {overlay}\ncomponents:\n  - {component}\n", encoding="utf-8")
    objs = validate.render(tmp_path)
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "nerve")
    token = next(e for e in container["env"] if e["name"] == "NERVE_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "nerve-auth", "key": "token", "optional": False}
    assert any(e["name"] == "OMP_NUM_THREADS" for e in container["env"])  # the overlay's env is kept
    errors = validate.policy_errors(objs)
    assert any("needs Secret nerve-auth" in e for e in errors)  # the pod cannot start without it
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nerve-auth", "namespace": "nerve"},
              "stringData": {"token": "t"}}
    assert not [e for e in validate.policy_errors([*objs, secret]) if "Secret" in e]


# -- a raw HTTP/2 client ---------------------------------------------------------------------------------------------
# gRPC clients refuse to send control characters in metadata; other HTTP/2 clients do not. This one sends one
# unary call with literal (not Huffman-coded) headers and decodes the answer's header blocks, which grpc's
# encoder writes without Huffman coding.

_HPACK_STATIC = [
    ":authority", ":method", ":method", ":path", ":path", ":scheme", ":scheme", ":status", ":status", ":status",
    ":status", ":status", ":status", ":status", "accept-charset", "accept-encoding", "accept-language",
    "accept-ranges", "accept", "access-control-allow-origin", "age", "allow", "authorization", "cache-control",
    "content-disposition", "content-encoding", "content-language", "content-length", "content-location",
    "content-range", "content-type", "cookie", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "link", "location",
    "max-forwards", "proxy-authenticate", "proxy-authorization", "range", "referer", "refresh", "retry-after",
    "server", "set-cookie", "strict-transport-security", "transfer-encoding", "user-agent", "vary", "via",
    "www-authenticate",
]
_HPACK_STATIC_VALUES = {2: "GET", 3: "POST", 4: "/", 5: "/index.html", 6: "http", 7: "https", 8: "200", 9: "204",
                        10: "206", 11: "304", 12: "400", 13: "404", 14: "500", 16: "gzip, deflate"}


def _hpack_int(n: int, prefix: int, flags: int = 0) -> bytes:
    top = (1 << prefix) - 1
    if n < top:
        return bytes([flags | n])
    out, n = [flags | top], n - top
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    return bytes([*out, n])


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _read_int(data: bytes, i: int, prefix: int) -> tuple[int, int]:
    top = (1 << prefix) - 1
    n, i = data[i] & top, i + 1
    if n < top:
        return n, i
    shift = 0
    while True:
        b, i = data[i], i + 1
        n += (b & 127) << shift
        shift += 7
        if not b & 128:
            return n, i


def _read_str(data: bytes, i: int) -> tuple[str, int]:
    huffman = data[i] & 128
    n, i = _read_int(data, i, 7)
    assert not huffman, "a Huffman-coded header: this test client cannot read it"
    return data[i:i + n].decode("latin-1"), i + n


def _decode_headers(block: bytes, table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def entry(index: int) -> tuple[str, str]:
        if index <= len(_HPACK_STATIC):
            return _HPACK_STATIC[index - 1], _HPACK_STATIC_VALUES.get(index, "")
        return table[index - len(_HPACK_STATIC) - 1]

    out, i = [], 0
    while i < len(block):
        b = block[i]
        if b & 0x80:  # indexed field
            index, i = _read_int(block, i, 7)
            out.append(entry(index))
        elif b & 0xE0 == 0x20:  # dynamic table size update
            _, i = _read_int(block, i, 5)
        else:  # literal, with incremental indexing (0x40) or without
            indexed = bool(b & 0x40)
            index, i = _read_int(block, i, 6 if indexed else 4)
            if index:
                name = entry(index)[0]
            else:
                name, i = _read_str(block, i)
            value, i = _read_str(block, i)
            if indexed:
                table.insert(0, (name, value))
            out.append((name, value))
    return out


def raw_http2_call(port: int, path: str, message: bytes, headers: list[tuple[bytes, bytes]]) -> list[list[tuple[str, str]]]:
    """One unary gRPC call over plaintext HTTP/2; the header blocks of the answer (the last are the trailers)."""
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"127.0.0.1"),
              (b"content-type", b"application/grpc"), (b"te", b"trailers"), *headers]
    block = b"".join(b"\x00" + _hpack_int(len(k), 7) + k + _hpack_int(len(v), 7) + v for k, v in fields)
    body = b"\x00" + struct.pack(">I", len(message)) + message
    blocks: list[list[tuple[str, str]]] = []
    table: list[tuple[str, str]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(1, 0x4, 1, block)
                     + _frame(0, 0x1, 1, body))
        buf = b""
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                chunk = sock.recv(65536)
                if not chunk:
                    return blocks
                buf += chunk
            size, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
            payload, buf = buf[9:9 + size], buf[9 + size:]
            if kind == 4 and not flags & 0x1:  # SETTINGS: acknowledge
                sock.sendall(_frame(4, 0x1, 0, b""))
            elif kind == 1:  # HEADERS (no padding or priority from grpc)
                blocks.append(_decode_headers(payload, table))
                if flags & 0x1:  # END_STREAM: the trailers
                    return blocks
            elif kind in (3, 7):  # RST_STREAM, GOAWAY
                return blocks

