"""Prometheus metrics of the service: one registry, names prefixed ``nerve_``, base units, and beside them the
engine's own families (``vllm:*``: running and waiting requests, KV-cache usage, prefix-cache hits,
preemptions, time to first token), which vLLM records in the process's default registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

ENGINE_PREFIX = "vllm:"
"""The name prefix of vLLM's metric families."""


class EngineFamilies(Collector):
    """The engine's metric families, read from ``source`` (the default registry, where vLLM's Prometheus
    stat logger puts them) at every scrape, so that one ``/metrics`` serves nerve's and the engine's."""

    def __init__(self, source: CollectorRegistry = REGISTRY, prefix: str = ENGINE_PREFIX) -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name.startswith(self.prefix):
                yield family

    def describe(self) -> list[Metric]:
        return []  # names are the engine's; none clash with nerve_*

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All metric families of one server (a fresh registry per instance, so tests can run several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("nerve_requests_total",
                                "RPCs finished, by method, status code and transport (grpc, or http through the "
                                "HTTP/JSON gateway).", ["method", "code", "transport"], registry=r)
        self.http_responses = Counter("nerve_http_responses_total",
                                      "Answers of the HTTP/JSON gateway, by route and HTTP status.",
                                      ["route", "status"], registry=r)
        self.request_seconds = Histogram("nerve_request_seconds", "End-to-end RPC latency.", ["method"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("nerve_queue_seconds", "Time a text waited in the engine before scheduling.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.first_token_seconds = Histogram("nerve_first_token_seconds",
                                             "Time from scheduling to the first generated token.",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.engine_seconds = Histogram("nerve_engine_seconds", "Time from scheduling to the last token of a text.",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_texts = Histogram("nerve_batch_texts", "Texts per RPC (1 for Extract).", ["method"],
                                     buckets=_BATCH_BUCKETS, registry=r)
        self.prompt_tokens = Counter("nerve_prompt_tokens_total", "Prompt tokens sent to the engine.", registry=r)
        self.cached_prompt_tokens = Counter("nerve_cached_prompt_tokens_total",
                                            "Prompt tokens served from the engine's prefix cache (not computed).",
                                            registry=r)
        self.completion_tokens = Counter("nerve_completion_tokens_total", "Tokens generated.", registry=r)
        self.entities = Counter("nerve_entities_total", "Grounded entities returned.", registry=r)
        self.hallucinated = Counter("nerve_hallucinated_entities_total",
                                    "Predicted mentions dropped because their text is not in the input.", registry=r)
        self.parse_failures = Counter("nerve_parse_failures_total",
                                      "Answers that did not parse (0 under constrained decoding).", registry=r)
        self.inflight = Gauge("nerve_inflight_requests", "Texts admitted and not finished.", registry=r)
        self.queued = Gauge("nerve_queued_requests",
                            "Admitted texts beyond the engine's batch capacity (waiting for a slot).", registry=r)
        self.rejected = Counter("nerve_rejected_requests_total",
                                "Texts refused because the queue was full or would outlast their call's deadline.",
                                registry=r)
        self.shed_late = Counter("nerve_shed_late_texts_total",
                                 "Texts refused at admission because the queue ahead would outlast their call's "
                                 "deadline (also counted in nerve_rejected_requests_total).", registry=r)
        self.grammar_schemas = Counter("nerve_grammar_schemas_total",
                                       "Requests by whether their output schema was new (grammar compiled) or reused.",
                                       ["result"], registry=r)
        self.grammar_first_use_seconds = Histogram(
            "nerve_grammar_first_use_seconds",
            "Time to first token of requests that introduced a new schema (includes grammar compilation).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("nerve_model_info", "The served model (value 1).",
                                ["model", "engine", "backend", "task", "dtype"], registry=r)
        self.engine_failures = Counter("nerve_engine_failures_total",
                                       "Times the engine was given up, by kind: dead (its process died) or stalled.",
                                       ["kind"], registry=r)
        self.drain_cancelled = Counter("nerve_drain_cancelled_total",
                                       "Calls still running when the drain's grace period ended (ended UNAVAILABLE).",
                                       registry=r)
        self.ready = Gauge("nerve_ready", "1 when the model is loaded and warmed up and the server is not draining.",
                           registry=r)
        r.register(EngineFamilies())

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
