"""A server whose engine dies or hangs stops serving and exits; signals during load and drain end it cleanly.

The process tests run `nerve serve` on the tiny random Qwen2 and act on vLLM's real engine core process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import service_pb2_grpc

from tests.service.test_serve_process import free_port, wait_serving

pytestmark = pytest.mark.engine

TEXT = "Peter Blackburn met officials of the European Commission in Brussels on Friday and left for Paris ."


class Served:
    """`nerve serve` as a child process, with a channel to it and its log."""

    def __init__(self, model: Path, tmp_path: Path, **settings):
        self.port = free_port()
        lines = [f"model: {model}", f"port: {self.port}", "metrics_port: 0", "warmup: false"]
        lines += [f"{k}: {v}" for k, v in settings.items()]
        lines += ["engine:", "  kv_cache_gb: 1"]
        config = tmp_path / "serve.yaml"
        config.write_text("\n".join(lines) + "\n")
        self.log_path = tmp_path / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "nerve.cli", "serve", "--config", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = service_pb2_grpc.NerveServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text()

    def engine_core(self) -> psutil.Process:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        raise AssertionError("no vLLM engine core process under the server")

    def load(self, calls: int = 6, texts: int = 32) -> list:
        """ExtractBatch calls in flight (enough work to keep the engine busy for a while)."""
        batch = spb.ExtractBatchRequest(texts=[f"{TEXT} {i}" for i in range(texts)])
        futures = [self.stub.ExtractBatch.future(batch, timeout=300) for _ in range(calls)]
        time.sleep(1.0)
        return futures

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()


@pytest.fixture
def serve(tiny_qwen_dir: Path, tmp_path: Path):
    started: list[Served] = []

    def start(**settings) -> Served:
        s = Served(tiny_qwen_dir, tmp_path, **settings)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def codes(futures: list) -> set[grpc.StatusCode]:
    return {f.code() for f in futures}


def test_engine_core_killed_under_load(serve) -> None:
    s = serve()
    wait_serving(s.channel, s.proc)
    futures = s.load()
    s.engine_core().kill()  # SIGKILL, as the OOM killer does
    t0 = time.monotonic()
    status = s.proc.wait(30)
    assert status == 3, s.log()
    assert time.monotonic() - t0 < 20
    # Calls in flight end UNAVAILABLE (the SDK retries those elsewhere), never INTERNAL.
    assert grpc.StatusCode.UNAVAILABLE in codes(futures)
    assert codes(futures) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    log = s.log()
    assert "the engine process died; health NOT_SERVING" in log
    assert "Traceback" not in log.split("the engine process died")[0].splitlines()[-1]


def test_hung_engine_is_noticed(serve) -> None:
    s = serve(engine_stall_seconds=3)
    wait_serving(s.channel, s.proc)
    futures = s.load()
    core = s.engine_core()
    core.suspend()  # SIGSTOP: alive, but no step ever finishes
    try:
        status = s.proc.wait(60)
    finally:
        if core.is_running():
            core.kill()
    assert status == 3
    assert codes(futures) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert grpc.StatusCode.UNAVAILABLE in codes(futures)
    assert "requests have been pending for 3 s with no engine output" in s.log()


def test_health_answers_during_load_and_sigterm_during_load_exits_cleanly(serve) -> None:
    s = serve()
    latencies = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(latencies) < 5:  # the port opens first, then the model loads
        t0 = time.monotonic()
        try:
            status = s.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            time.sleep(0.2)
            continue
        latencies.append(time.monotonic() - t0)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        time.sleep(0.5)
    assert len(latencies) == 5 and max(latencies) < 1.0, latencies
    assert "engine ready" not in s.log(), "the model loaded before the checks: no check ran during the load"
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0
    log = s.log()
    assert "Traceback" not in log and "stopped during model load" in log
    assert s.proc.pid not in {p.pid for p in psutil.process_iter()}


def test_second_signal_during_drain_exits_at_once(serve) -> None:
    s = serve(drain_seconds=300)
    wait_serving(s.channel, s.proc)
    s.load(calls=8, texts=32)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(20) == 128 + signal.SIGINT
    assert "during the drain: exiting now" in s.log()


def test_calls_still_running_when_the_grace_period_ends_get_unavailable(start_server) -> None:
    r = start_server()

    async def slow(*args, **kwargs):
        await asyncio.sleep(60)

    r.server.state.extractor.extract = slow
    futures = [r.stub.Extract.future(spb.ExtractRequest(text=f"Peter {i}"), timeout=60) for i in range(3)]
    for _ in range(500):
        if r.server.state.inflight == 3:
            break
        time.sleep(0.01)
    assert r.server.state.inflight == 3
    t0 = time.monotonic()
    r.loop_thread.run(r.server.drain(0.5))
    assert time.monotonic() - t0 < 10
    assert codes(futures) == {grpc.StatusCode.UNAVAILABLE}
    assert all("grace period" in f.details() for f in futures)
    assert r.server.metrics.drain_cancelled._value.get() == 3
    assert r.server.metrics.requests.labels("Extract", "UNAVAILABLE", "grpc")._value.get() == 3


def test_a_failed_engine_makes_every_call_unavailable(start_server) -> None:
    r = start_server()
    r.server.state.failure = "the engine process died"
    try:
        r.stub.Extract(spb.ExtractRequest(text="Peter"), timeout=10)
        raise AssertionError("expected UNAVAILABLE")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        assert "the engine process died; retry on another replica" in exc.details()


def test_the_deploy_guide_lists_every_metric() -> None:
    import re

    from nerve.service.metrics import ENGINE_PREFIX, Metrics

    docs = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")
    table = {name for row in re.findall(r"^\| `(nerve_[^|]*)\|", docs, re.M) for name in re.findall(r"nerve_\w+", row)}
    exported = set()
    for family in Metrics().registry.collect():
        if not family.name.startswith(ENGINE_PREFIX):  # the engine's own families: vLLM documents them
            exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert exported <= table, f"missing from docs/deploy.md's metrics table: {sorted(exported - table)}"
    assert table <= exported, f"documented but not exported: {sorted(table - exported)}"
