"""Fixtures of the load-test tests. Nothing here imports locust: it monkey-patches the whole process with
gevent, so locust only ever runs in a subprocess (loadtests/run.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

try:  # the SDK is its own distribution: use the installed one, else the source tree
    import nerve_client  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(REPO_ROOT / "clients" / "python"))

from .fake_server import Running, start  # noqa: E402


@pytest.fixture
def fake_server() -> Iterator[Running]:
    """A fake nerve server on 127.0.0.1:<free port>, health SERVING."""
    running = start()
    try:
        yield running
    finally:
        running.server.stop(grace=None)


def locust_available() -> None:
    import importlib.util

    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (pip install 'nerve[loadtest]')")
