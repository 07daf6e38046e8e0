"""Which targets a load test may hit: loopback only, unless a host is explicitly allowed.

A load test is a denial of service with a report. By default it may only target this machine
(127.0.0.0/8, ``localhost``, ``::1``); any other host must be named with ``--allow-host HOST`` (repeatable)
or in ``$NERVE_LOADTEST_ALLOWED_HOSTS`` (comma-separated), e.g. a staging Service you own.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

ALLOWED_ENV = "NERVE_LOADTEST_ALLOWED_HOSTS"


class HostNotAllowed(ValueError):
    """The target is neither loopback nor explicitly allowed."""


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6; an optional ``grpc://`` or ``dns:///`` prefix) -> (host, port)."""
    t = target.strip()
    for prefix in ("grpc://", "dns:///", "ipv4:", "ipv6:"):
        if t.lower().startswith(prefix):
            t = t[len(prefix):]
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{target!r}: expected [IPv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = t.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{target!r}: expected host:port (IPv6 as [addr]:port)")
    if not host:
        raise ValueError(f"{target!r}: no host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{target!r}: invalid port {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or the name ``localhost``. Other names are not resolved."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def allowed_hosts(extra: Iterable[str] = (), environ: dict[str, str] | None = None) -> set[str]:
    env = (os.environ if environ is None else environ).get(ALLOWED_ENV, "")
    return {h.strip().lower() for h in [*extra, *env.split(",")] if h.strip()}


def check_target(target: str, allow: Iterable[str] = (), environ: dict[str, str] | None = None) -> tuple[str, int]:
    """(host, port) of ``target`` if a load test may hit it, else :class:`HostNotAllowed`.

    An allowed entry matches the host alone or ``host:port`` exactly (case-insensitive).
    """
    host, port = split_target(target)
    if is_loopback(host):
        return host, port
    allowed = allowed_hosts(allow, environ)
    if host.lower() in allowed or f"{host.lower()}:{port}" in allowed:
        return host, port
    raise HostNotAllowed(
        f"refusing to load-test {target!r}: only loopback targets (127.0.0.0/8, localhost, ::1) are allowed "
        f"unless the host is explicitly allowed (run.py --allow-host HOST, locust --nerve-allow-host HOST, "
        f"or ${ALLOWED_ENV})")
