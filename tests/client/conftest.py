"""Fixtures of the SDK tests: a fake nerve server on a free loopback port (see fake.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

try:  # the SDK is its own distribution: use the installed one, else the source tree
    import nerve_client  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(REPO_ROOT / "clients" / "python"))

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402
from nerve_client.pb import service_pb2, service_pb2_grpc  # noqa: E402

from .fake import FakeNerve  # noqa: E402

SERVER_MAX_RECEIVE_BYTES = 1 << 20


@dataclass
class FakeServer:
    target: str
    servicer: FakeNerve
    health: health.HealthServicer

    def set_health(self, status: str, service: str = "") -> None:
        self.health.set(service, health_pb2.HealthCheckResponse.ServingStatus.Value(status))


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A started in-process server on 127.0.0.1:<free port> with the fake servicer and a health service."""
    servicer = FakeNerve()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", SERVER_MAX_RECEIVE_BYTES)],
    )
    service_pb2_grpc.add_NerveServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_pb2.DESCRIPTOR.services_by_name["NerveService"].full_name, health.SERVICE_NAME,
         reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "could not bind a loopback port"
    server.start()
    fake = FakeServer(target=f"127.0.0.1:{port}", servicer=servicer, health=health_servicer)
    fake.set_health("SERVING")
    try:
        yield fake
    finally:
        server.stop(grace=None)


@pytest.fixture
def unused_target() -> str:
    """A loopback address where nothing listens (the port was bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"
