"""The host guard: load tests hit loopback only, unless a host is explicitly allowed."""

from __future__ import annotations

import pytest

from loadtests.hosts import HostNotAllowed, check_target, is_loopback, split_target
from loadtests.run import main


@pytest.mark.parametrize("target", [
    "127.0.0.1:50051", "127.1.2.3:1", "localhost:50051", "LOCALHOST:9", "[::1]:50051", "[::ffff:127.0.0.1]:80",
    "grpc://127.0.0.1:50051", "dns:///localhost:50051",
])
def test_loopback_targets_pass(target: str) -> None:
    host, port = check_target(target, environ={})
    assert is_loopback(host) and 0 < port < 65536


@pytest.mark.parametrize("target", [
    "10.0.0.5:50051", "192.168.1.10:50051", "0.0.0.0:50051", "[::]:50051", "[2001:db8::1]:50051",
    "nerve.nerve.svc.cluster.local:50051", "localhost.example.com:50051", "127.0.0.1.nip.io:50051",
    "example.com:443",
])
def test_other_targets_are_refused(target: str) -> None:
    with pytest.raises(HostNotAllowed, match="refusing to load-test"):
        check_target(target, environ={})


@pytest.mark.parametrize("target", ["127.0.0.1", "::1:50051", "127.0.0.1:0", "127.0.0.1:http", ":50051", "[::1]50051"])
def test_malformed_targets(target: str) -> None:
    with pytest.raises(ValueError):
        split_target(target)


def test_explicitly_allowed_hosts() -> None:
    assert check_target("staging.example.com:50051", allow=["staging.example.com"], environ={})
    assert check_target("10.0.0.5:50051", allow=["10.0.0.5:50051"], environ={})
    with pytest.raises(HostNotAllowed):  # host:port entries match that port only
        check_target("10.0.0.5:50052", allow=["10.0.0.5:50051"], environ={})
    env = {"NERVE_LOADTEST_ALLOWED_HOSTS": "a.example.com, b.example.com"}
    assert check_target("b.example.com:1", environ=env)


def test_runner_refuses_before_starting_anything(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("NERVE_LOADTEST_ALLOWED_HOSTS", raising=False)
    rc = main(["--host", "10.1.2.3:50051", "--duration", "1s", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "refusing to load-test '10.1.2.3:50051'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists(), "nothing ran"
