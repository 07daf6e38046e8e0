"""`nerve serve` as a real process with a real small model: every RPC, metrics over HTTP, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import service_pb2_grpc
from nerve_client.pb import types_pb2 as tpb

pytestmark = [pytest.mark.engine, pytest.mark.real_model]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(channel: grpc.Channel, proc: subprocess.Popen, timeout: float = 300) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited during start-up"
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(1)
    raise AssertionError("server did not become SERVING")


def test_serve_real_model_then_drain_on_sigterm(smollm_dir: Path, tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(f"model: {smollm_dir}\nport: {port}\nmetrics_port: {mport}\ndrain_seconds: 60\n"
                      f"eval_dataset_roots: [{tmp_path}]\nengine:\n  kv_cache_gb: 1\n")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "nerve.cli", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(channel, proc)
        stub = service_pb2_grpc.NerveServiceStub(channel)
        info = stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10).model_info
        assert [lab.name for lab in info.task_card.labels] == ["PER", "LOC", "ORG", "MISC"]
        from nerve.hardware import choose_dtype

        auto = choose_dtype("auto")  # the server resolved `dtype: auto` for this machine, and says why
        assert (info.dtype, info.dtype_reason) == (auto.dtype, auto.reason)

        text = "Peter Blackburn met officials of the European Commission in Brussels on Friday ."
        resp = stub.Extract(spb.ExtractRequest(text=text, return_raw=True), timeout=120)
        json.loads(resp.raw)
        assert all(text[e.start:e.end] == e.text for e in resp.entities)

        batch = stub.ExtractBatch(spb.ExtractBatchRequest(texts=[text, "EU rejects German call ."]), timeout=120)
        assert len(batch.results) == 2

        data = tmp_path / "gold.jsonl"
        data.write_text(json.dumps({"text": text, "entities": [
            {"label": "PER", "text": "Peter Blackburn", "start": 0, "end": 15}]}) + "\n")
        cfg = spb.EvaluateConfig(dataset=spb.DatasetSource(path=str(data)))
        report = list(stub.Evaluate(iter([spb.EvaluateRequest(config=cfg)]), timeout=120))[-1].report
        assert report.examples == 1 and report.parse_rate == 1.0

        scrape = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        assert 'nerve_requests_total{code="OK",method="Extract",transport="grpc"} 1.0' in scrape
        assert "nerve_ready 1.0" in scrape
        assert f'dtype="{auto.dtype}"' in scrape  # nerve_model_info carries the dtype

        # Drain: calls in flight when SIGTERM arrives all complete; the process exits 0.
        futures = [stub.Extract.future(spb.ExtractRequest(text=f"{text} {i}"), timeout=120) for i in range(8)]
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert [f.code() for f in futures] == [grpc.StatusCode.OK] * 8
        assert proc.wait(120) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
        log.close()
    server_log = (tmp_path / "server.log").read_text()
    assert "draining" in server_log and "stopped" in server_log
    assert "Evaluate" in server_log and "request_id=" in server_log


def test_serve_rejects_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1\n")
    proc = subprocess.run([sys.executable, "-m", "nerve.cli", "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:" in proc.stderr and "invalid YAML" in proc.stderr
    bad.write_text("nope: 1\n")
    proc = subprocess.run([sys.executable, "-m", "nerve.cli", "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert "unknown setting 'nope'" in proc.stderr


def test_evaluate_example_types_round_trip() -> None:
    e = tpb.Example(text="ab", entities=[tpb.Entity(label="PER", text="a", start=0, end=1)])
    assert tpb.Example.FromString(e.SerializeToString()) == e
