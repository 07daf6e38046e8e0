"""The engine's own metric families (vLLM's ``vllm:*``) on the same /metrics as the ``nerve_*`` ones."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest

from nerve.service.metrics import EngineFamilies, Metrics


def test_only_the_engines_families_are_taken_from_the_default_registry() -> None:
    source = CollectorRegistry()
    Gauge("vllm:num_requests_waiting", "waiting", ["model_name"], registry=source).labels("m").set(3)
    Gauge("other_gauge", "not the engine's", registry=source).set(1)
    out = CollectorRegistry()
    out.register(EngineFamilies(source))
    text = generate_latest(out).decode()
    assert 'vllm:num_requests_waiting{model_name="m"} 3.0' in text and "other_gauge" not in text


def test_a_server_registry_serves_engine_families_at_scrape_time() -> None:
    metrics = Metrics()
    assert "vllm:nerve_test_family" not in generate_latest(metrics.registry).decode()
    g = Gauge("vllm:nerve_test_family", "registered after the server's registry was made", registry=REGISTRY)
    try:
        g.set(7)
        text = generate_latest(metrics.registry).decode()
        assert "vllm:nerve_test_family 7.0" in text and "nerve_ready" in text
    finally:
        REGISTRY.unregister(g)


@pytest.mark.engine
def test_the_real_engines_request_gauges_reach_the_servers_metrics(start_server) -> None:
    from nerve_client.pb import service_pb2 as spb

    r = start_server()
    r.stub.Extract(spb.ExtractRequest(text="Alice Smith visited Paris."), timeout=120)
    text = generate_latest(r.server.metrics.registry).decode()
    for family in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prefix_cache_queries"):
        assert family in text, family
    assert "/" not in text.split('model_name="', 1)[1].split('"', 1)[0]  # a folder name, not the model's path
