"""An in-process fake of the nerve gRPC service, for testing the SDK without a model.

It implements the generated servicer with a toy extractor (every capitalised word is an entity, labelled
``LOC`` when it is in ``PLACES``, else ``PER``) and scoring by set comparison, and records what it received.
Knobs let a test script failures (``failures[method]``: status codes returned before the real answer),
delays, a required token, and the request id it echoes.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from nerve_client.pb import service_pb2 as pb
from nerve_client.pb import service_pb2_grpc
from nerve_client.pb import types_pb2 as tpb

PLACES = {"Paris", "Berlin", "London", "Zürich"}
LABELS = ("PER", "LOC")
MAX_TEXT_CHARS = 4000
MAX_ENTITIES = 24
_WORD = re.compile(r"[A-Z]\w+")


def toy_extract(text: str, labels: list[str] | None = None) -> list[tpb.Entity]:
    """Capitalised words, with code point offsets (Python str indices); places are scored 0.9, people 0.6."""
    found = []
    for m in _WORD.finditer(text):
        label = "LOC" if m.group() in PLACES else "PER"
        if not labels or label in labels:
            found.append(tpb.Entity(label=label, text=m.group(), start=m.start(), end=m.end(),
                                    score=0.9 if label == "LOC" else 0.6))
    return found


def _check_options(labels: list[str], max_entities: int) -> None:
    """The real server's checks of labels and max_entities (ValueError: INVALID_ARGUMENT)."""
    if labels and set(labels) - set(LABELS):
        raise ValueError(f"unknown labels {sorted(set(labels) - set(LABELS))}")
    if not 0 <= max_entities <= MAX_ENTITIES:
        raise ValueError(f"max_entities is {max_entities}; it must be in [1, {MAX_ENTITIES}] (the task card's bound),"
                         " or 0 for the bound")


def _entities(text: str, keys: set[tuple[int, int, str]]) -> list[tpb.Entity]:
    return [tpb.Entity(label=lab, text=text[s:e], start=s, end=e) for s, e, lab in sorted(keys)]


@dataclass
class Received:
    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeNerve(service_pb2_grpc.NerveServiceServicer):
    failures: dict[str, list[tuple[grpc.StatusCode, str]]] = field(default_factory=dict)
    """Per method, statuses to fail with (one per call, in order) before answering normally."""
    required_token: str | None = None
    echo_request_id: str | None = None
    """Request id to put in trailing metadata instead of the one received."""
    delay_seconds: float = 0.0
    datasets: dict[str, list[tpb.Example]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    evaluate_examples: list[tpb.Example] = field(default_factory=list)
    evaluate_cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------------------------------- helpers

    def calls(self, method: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.method == method]

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext, delay: bool = True) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.received.append(Received(method, request, metadata, context.time_remaining()))
            queued = self.failures.get(method)
            failure = queued.pop(0) if queued else None
        rid = self.echo_request_id or metadata.get("x-request-id") or "server-generated-id"
        context.set_trailing_metadata((("x-request-id", rid),))
        if self.required_token is not None and metadata.get("authorization") != f"Bearer {self.required_token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if failure is not None:
            context.abort(*failure)
        if isinstance(request, pb.ExtractRequest) and request.text.startswith("fail:"):
            code = grpc.StatusCode[request.text.split(":", 1)[1]]
            context.abort(code, f"scripted {code.name}")
        if (delay and self.delay_seconds) or (isinstance(request, pb.ExtractRequest) and request.text == "slow"):
            end = time.monotonic() + (self.delay_seconds or 5.0)
            while time.monotonic() < end and context.is_active():
                time.sleep(0.01)

    def _result(self, text: str, labels: list[str], max_entities: int, return_raw: bool,
                min_score: float = 0.0) -> tpb.ExtractResult:
        if not text:
            raise ValueError("text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
        _check_options(labels, max_entities)
        entities = toy_extract(text, list(labels))
        if max_entities:
            entities = entities[:max_entities]
        items = ", ".join(f'{{"label": "{e.label}", "text": "{e.text}"}}' for e in entities)
        raw = f'{{"entities": [{items}]}}'
        entities = [e for e in entities if e.score >= min_score]
        return tpb.ExtractResult(
            entities=entities,
            usage=tpb.Usage(prompt_tokens=10 + len(text), completion_tokens=3 * len(entities) + 2,
                            queue_seconds=0.001, engine_seconds=0.01, total_seconds=0.012),
            raw=raw if return_raw else "",
            hallucinated=1 if "Atlantis" in text else 0,
        )

    # ---------------------------------------------------------------------------------------------- RPCs

    def Extract(self, request, context):  # noqa: N802 - gRPC method name
        self._enter("Extract", request, context)
        try:
            r = self._result(request.text, list(request.labels), request.max_entities, request.return_raw,
                             request.min_score)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.ExtractResponse(entities=r.entities, usage=r.usage, raw=r.raw, hallucinated=r.hallucinated)

    def ExtractBatch(self, request, context):  # noqa: N802
        self._enter("ExtractBatch", request, context)
        if len(request.texts) > 8:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.texts)} texts; at most 8 per batch")
        try:
            results = [self._result(t, list(request.labels), request.max_entities, request.return_raw,
                                    request.min_score) for t in request.texts]
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.ExtractBatchResponse(results=results)

    def GetModelInfo(self, request, context):  # noqa: N802
        self._enter("GetModelInfo", request, context)
        return pb.GetModelInfoResponse(
            model_info=tpb.ModelInfo(
                model_name="toy/capitalised-words",
                revision="/models/toy",
                engine="fake 0.0",
                structured_output_backend="none",
                task_card=tpb.TaskCard(
                    name="toy", language="en", template_id="nerve-ner-v1",
                    labels=[tpb.Label(name="PER", description="people"), tpb.Label(name="LOC", description="places")],
                    output_schema_json='{"type": "object"}',
                    bounds=tpb.SchemaBounds(max_entities=MAX_ENTITIES, max_entity_chars=64),
                ),
                limits=tpb.Limits(max_text_chars=MAX_TEXT_CHARS, max_batch_texts=8, max_batch_bytes=65536,
                                  max_message_bytes=1 << 20),
                server_version="0.0.0-fake",
            )
        )

    def Evaluate(self, request_iterator, context):  # noqa: N802
        finished = threading.Event()
        context.add_callback(lambda: None if finished.is_set() else self.evaluate_cancelled.set())
        first = next(request_iterator, None)
        self._enter("Evaluate", first, context, delay=False)
        if first is None or first.WhichOneof("kind") != "config":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first Evaluate message must carry a config")
        config = first.config
        start = time.monotonic()
        limit = config.limit or None
        try:
            _check_options(list(config.labels), config.max_entities)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        scored = [lab for lab in LABELS if not config.labels or lab in config.labels]
        left_out = set(LABELS) - set(scored)
        source = config.WhichOneof("source")
        if source == "dataset":
            path = config.dataset.path
            if path.startswith("/") or ".." in path.split("/"):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{path}: outside the allowed dataset directories")
            if path not in self.datasets:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{path}: no such dataset")
            examples = iter(self.datasets[path][:limit])
            total: int | None = len(self.datasets[path][:limit])
        elif source == "inline_examples":
            total = min(config.inline_examples.expected_examples, limit or 1 << 31) or None
            examples = (r.example for r in request_iterator)
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "config.source is required")
        tp = fp = fn = exact = n = ignored = 0
        per_label = {lab: [0, 0, 0] for lab in scored}
        errors = []
        for i, ex in enumerate(examples):
            if limit is not None and i >= limit:
                break
            n = i + 1
            if not isinstance(ex, tpb.Example) or not ex.text:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"example {i}: not an example with a text")
            with self.lock:
                self.evaluate_examples.append(ex)
            gold = {(e.start, e.end, e.label) for e in ex.entities if e.label not in left_out}
            ignored += len({(e.start, e.end, e.label) for e in ex.entities if e.label in left_out})
            pred = {(e.start, e.end, e.label) for e in toy_extract(ex.text, list(config.labels))}
            tp, fp, fn = tp + len(gold & pred), fp + len(pred - gold), fn + len(gold - pred)
            for s, e, lab in gold | pred:
                row = per_label.setdefault(lab, [0, 0, 0])
                row[0 if (s, e, lab) in gold & pred else 1 if (s, e, lab) in pred else 2] += 1
            exact += gold == pred
            if config.include_errors and gold != pred:
                errors.append(tpb.ExampleError(index=i, id=ex.id, missing=_entities(ex.text, gold - pred),
                                               spurious=_entities(ex.text, pred - gold), parsed=True))
            yield pb.EvaluateResponse(
                progress=pb.EvaluateProgress(done=i + 1, total=total, elapsed_seconds=time.monotonic() - start)
            )
            end = time.monotonic() + self.delay_seconds
            while time.monotonic() < end and context.is_active():
                time.sleep(0.005)

        def score(label: str, t: int, p: int, f: int) -> tpb.LabelScore:
            prec, rec = (t / (t + p) if t + p else 0.0), (t / (t + f) if t + f else 0.0)
            return tpb.LabelScore(label=label, precision=prec, recall=rec,
                                  f1=2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                                  support=t + f, tp=t, fp=p, fn=f)

        unknown = sorted(set(per_label) - set(LABELS))
        labels = [score(lab, *per_label[lab]) for lab in [*scored, *unknown]]
        active = [s for s in labels if s.support or s.tp + s.fp]
        macro = tpb.LabelScore(**{k: sum(getattr(s, k) for s in active) / len(active) if active else 0.0
                                  for k in ("precision", "recall", "f1")},
                               **{k: sum(getattr(s, k) for s in active) for k in ("support", "tp", "fp", "fn")})
        finished.set()
        yield pb.EvaluateResponse(
            report=tpb.ScoreReport(
                labels=labels,
                micro=score("", tp, fp, fn),
                macro=macro,
                exact_match=exact / n if n else 0.0,
                parse_rate=1.0,
                hallucination_rate=0.0,
                examples=n,
                latency=tpb.LatencySummary(p50_seconds=0.01, p90_seconds=0.02, p99_seconds=0.03,
                                           mean_seconds=0.012),
                errors=errors,
                gold=tp + fn,
                predicted=tp + fp,
                unknown_labels=unknown,
                elapsed_seconds=time.monotonic() - start,
                ignored_gold=ignored,
            )
        )

