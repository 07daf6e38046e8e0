"""Typed server configuration: defaults < YAML file < ``NERVE_*`` environment < command-line flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerve import settings
from nerve.engines.vllm import EngineConfig
from nerve.models import DEFAULT_MODEL

from .tracing import TRACING_MODES, check_tracing

ENV_PREFIX = "NERVE_"
"""``NERVE_MAX_QUEUE`` sets ``max_queue``, ``NERVE_ENGINE_DTYPE`` sets ``engine.dtype``."""


@dataclass
class ServeConfig:
    """Settings of ``nerve serve``. Every field can be set in YAML, as ``NERVE_<FIELD>`` or as a flag."""

    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "Registry model name (pulled if missing) or checkpoint folder."})
    task: str | None = field(default=None, metadata={
        "help": "Task card: preset (cluener, conll2003) or card file; default: the checkpoint's nerve_task.json."})
    host: str = field(default="127.0.0.1", metadata={"help": "gRPC listen address (0.0.0.0 in containers)."})
    port: int = field(default=50051, metadata={"help": "gRPC port."})
    metrics_port: int = field(default=9400, metadata={"help": "Prometheus /metrics port; 0 disables."})
    metrics_host: str | None = field(default=None, metadata={"help": "Metrics listen address; default: host."})
    http_port: int = field(default=0, metadata={
        "help": "Port of the HTTP/JSON gateway (the same API as JSON over HTTP, docs/api.md; `make serve` uses "
                "8000); 0: no gateway."})
    max_queue: int = field(default=256, metadata={
        "help": "Most texts admitted at once (in the engine or waiting); beyond it calls get RESOURCE_EXHAUSTED."})
    shed_late_calls: bool = field(default=True, metadata={
        "help": "Refuse at once (RESOURCE_EXHAUSTED) a call that would wait for an engine slot and, at the recent "
                "rate of finished texts, finish after its deadline, instead of letting it expire in the queue."})
    max_text_chars: int = field(default=4000, metadata={"help": "Longest text accepted, in characters."})
    max_batch_texts: int = field(default=64, metadata={"help": "Most texts in one ExtractBatch call."})
    max_batch_bytes: int = field(default=1 << 20, metadata={"help": "Most UTF-8 bytes of text in one ExtractBatch call."})
    max_message_bytes: int = field(default=8 << 20, metadata={"help": "gRPC max send/receive message size."})
    max_new_schemas_per_minute: int = field(default=60, metadata={
        "help": "Most requests per minute with an output schema not seen before (a new label set or bound: one "
                "grammar compilation each, about 1.2 CPU-seconds on a 2-core CPU, bench/reports/grammar.md); "
                "beyond it they get RESOURCE_EXHAUSTED. Size it to the pod's cores. 0: no limit."})
    max_eval_examples: int = field(default=20000, metadata={"help": "Most examples one Evaluate call may score."})
    max_concurrent_evaluations: int = field(default=2, metadata={
        "help": "Most Evaluate calls running at once; a further one gets RESOURCE_EXHAUSTED."})
    max_report_errors: int = field(default=1000, metadata={
        "help": "Most per-example errors an Evaluate report lists (include_errors); the others are only counted."})
    eval_idle_seconds: float = field(default=60.0, metadata={
        "help": "Longest wait for the next message of an Evaluate stream before the call ends DEADLINE_EXCEEDED;"
                " 0: no limit (the client's deadline still applies)."})
    eval_dataset_roots: list[str] = field(default_factory=list, metadata={
        "help": "Folders whose datasets Evaluate may read by path (none: only streamed examples)."})
    drain_seconds: float = field(default=30.0, metadata={
        "help": "On SIGTERM: health goes NOT_SERVING, new calls are refused, in-flight calls get this long to finish."})
    engine_stall_seconds: float = field(default=120.0, metadata={
        "help": "A hung engine: requests pending and no output for this long turns health NOT_SERVING and exits "
                "the server (status 3) so that it is restarted; 0 disables the check."})
    tls_cert: str | None = field(default=None, metadata={"help": "PEM certificate chain file; enables TLS with tls_key."})
    tls_key: str | None = field(default=None, metadata={"help": "PEM private key file."})
    tls_client_ca: str | None = field(default=None, metadata={
        "help": "PEM file of the CAs whose client certificates are accepted: mutual TLS, a client without such a "
                "certificate is refused (needs tls_cert and tls_key)."})
    max_connection_age_seconds: float = field(default=0.0, metadata={
        "help": "Close each client connection (HTTP/2 GOAWAY) after about this long, so that clients reconnect and "
                "spread over new replicas; calls in flight continue. 0: connections are never closed for age."})
    max_connection_age_grace_seconds: float = field(default=30.0, metadata={
        "help": "How long calls on a connection closed for its age may still run before they are cancelled."})
    max_watch_streams: int = field(default=1000, metadata={
        "help": "Most Health.Watch and reflection streams open at once (they stay open until the client ends "
                "them); a further one gets RESOURCE_EXHAUSTED. Health.Check and nerve.v1 calls do not count."})
    auth_token: str | None = field(default=None, metadata={
        "keep_empty": True,  # an empty token is refused, not read as "no token"
        "help": "Require 'authorization: Bearer <token>' on nerve calls (health stays open). Prefer NERVE_AUTH_TOKEN."})
    grounded: bool = field(default=False, metadata={
        "help": "Decode under a per-request grammar that only admits substrings of the input (xgrammar only)."})
    encoder_max_batch: int = field(default=32, metadata={
        "help": "Token-classification checkpoints: most texts tagged in one forward pass (micro-batcher)."})
    encoder_max_wait_ms: float = field(default=5.0, metadata={
        "help": "Token-classification checkpoints: longest wait after the first queued text for a batch to fill."})
    warmup: bool = field(default=True, metadata={"help": "Run warm-up generations before reporting SERVING."})
    log_level: str = field(default="INFO", metadata={"help": "Log level."})
    log_texts: bool = field(default=False, metadata={"help": "Log request texts (user data) at INFO."})
    tracing: str = field(default="off", metadata={
        "choices": TRACING_MODES,
        "help": "otlp: an OpenTelemetry span per call (joining the caller's W3C traceparent), exported over OTLP "
                "to OTEL_EXPORTER_OTLP_ENDPOINT (needs nerve[otel]); off: no tracing."})
    engine: EngineConfig = field(default_factory=EngineConfig, metadata={"help": "vLLM engine settings."})

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token is empty: set a token, or leave the setting (and NERVE_AUTH_TOKEN) unset")
        for name in ("max_queue", "max_text_chars", "max_batch_texts", "max_batch_bytes", "max_message_bytes",
                     "encoder_max_batch", "max_concurrent_evaluations", "max_watch_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_batch_texts > self.max_queue:
            raise ValueError(f"max_batch_texts ({self.max_batch_texts}) is larger than max_queue ({self.max_queue}):"
                             " a full ExtractBatch call could never be admitted; raise max_queue or lower"
                             " max_batch_texts")
        for name in ("max_report_errors", "eval_idle_seconds", "max_connection_age_seconds",
                     "max_connection_age_grace_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 < self.port < 65536 or not 0 <= self.metrics_port < 65536 or not 0 <= self.http_port < 65536:
            raise ValueError("ports must be in 1..65535 (metrics_port 0 disables metrics, http_port 0 the gateway)")
        if self.tracing != "off":
            check_tracing()  # the optional packages are installed


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> ServeConfig:
    """A :class:`ServeConfig` from defaults < the YAML file at ``path`` < ``NERVE_*`` variables of ``environ``
    (default: the process environment) < ``overrides`` (a mapping, or ``--field value`` / ``--engine.field
    value`` words), checked as a whole (:mod:`nerve.settings`)."""
    cfg = settings.load(ServeConfig, path=path, env_prefix=ENV_PREFIX, environ=environ, flags=overrides or {})
    cfg.validate()
    return cfg
