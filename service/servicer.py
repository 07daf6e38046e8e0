"""The gRPC servicer: translates between protobuf and the extraction pipeline, nothing more."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from nerve_client._proto.nerve.v1 import service_pb2 as spb
from nerve_client._proto.nerve.v1 import service_pb2_grpc
from nerve_client._proto.nerve.v1 import types_pb2 as tpb

from ner.prompts import answer_format
from ner.readers import detect_format, read_dataset
from ner.readers.conll import normalize_scheme
from ner.schema import output_spec
from ner.scoring import LabelScore, Scorer
from ner.types import Entity, Example

from .config import ServeConfig
from .errors import DeadlineExpired, FailedPrecondition, Forbidden, NotFound, NotReady, Overloaded, RpcRecorder, streaming, unary
from .metrics import Metrics
from .pipeline import ExtractionResult, Extractor, ExtractorBase, InputError

_FORMATS = {
    spb.DATASET_FORMAT_UNSPECIFIED: "auto",
    spb.DATASET_FORMAT_JSONL: "jsonl",
    spb.DATASET_FORMAT_CLUENER: "cluener",
    spb.DATASET_FORMAT_CONLL: "conll",
    spb.DATASET_FORMAT_BMES: "bmes",
}


@dataclass(frozen=True, slots=True)
class _EvalPlan:
    """The checked options of one Evaluate call."""

    labels: list[str] | None
    """The requested label subset (None: all the card's labels)."""
    names: tuple[str, ...]
    """The labels extracted and scored, in card order."""
    left_out: frozenset[str]
    """Card labels outside the subset: their gold entities are ignored."""
    max_entities: int | None
    limit: int | None
    cap: int | None
    """The server's most examples per call (None: no limit)."""
    include_errors: bool

    def check(self, index: int, example: Example, ex: ExtractorBase) -> tuple[Example, int]:
        """The example ready to score, with the number of its gold entities ignored (labels left out)."""
        try:
            ex.prepare(example.text, self.labels, self.max_entities)
        except InputError as exc:
            raise InputError(f"example {index}: {exc}") from None
        ignored = {g.key for g in example.entities if g.label in self.left_out}
        if ignored:
            example = replace(example, entities=[g for g in example.entities if g.label not in self.left_out])
        return example, len(ignored)


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _read_server_dataset(path: Path, fmt: str, scheme: str) -> list[Example]:
    """A dataset file; the scheme applies to CoNLL files only. A malformed file is a FailedPrecondition."""
    try:
        if fmt == "auto":
            fmt = detect_format(path)
        opts: dict[str, str] = {}
        if scheme and fmt == "conll":
            try:
                opts["scheme"] = normalize_scheme(scheme)
            except ValueError as exc:
                raise InputError(f"dataset.scheme: {exc}") from None
        return read_dataset(path, fmt, **opts)
    except InputError:
        raise
    except ValueError as exc:  # the server-side file is malformed, not the request
        raise FailedPrecondition(str(exc)) from None


@dataclass
class ServerState:
    """What the servicer needs to know about the server's life cycle."""

    extractor: Extractor | None = None
    draining: bool = False
    model_name: str = ""
    model_path: str = ""
    inflight: int = 0
    calls: set[asyncio.Task] = field(default_factory=set)
    """The tasks of the nerve calls running now (the drain waits for them, then ends the rest)."""
    failure: str | None = None
    """Why the engine was given up; every call then gets UNAVAILABLE."""
    cut_off: bool = False
    """Set when the drain's grace period is over and the calls still running are being ended."""

    @property
    def ready(self) -> bool:
        return self.extractor is not None and not self.draining


class NerveServicer(service_pb2_grpc.NerveServiceServicer):
    def __init__(self, cfg: ServeConfig, state: ServerState, metrics: Metrics):
        self.cfg = cfg
        self.state = state
        self.metrics = metrics

    # -- helpers ---------------------------------------------------------------------------------------------

    def _extractor(self) -> Extractor:
        if self.state.failure:
            raise NotReady(f"{self.state.failure}; retry on another replica")
        if self.state.draining:
            raise NotReady("the server is draining; retry on another replica")
        if self.state.extractor is None:
            raise NotReady("the model is still loading")
        return self.state.extractor

    @contextmanager
    def _admit(self, n: int, *, force: bool = False) -> Iterator[None]:
        if not force and self.state.inflight + n > self.cfg.max_queue:
            self.metrics.rejected.inc(n)
            raise Overloaded(f"queue full ({self.state.inflight} texts in flight, limit {self.cfg.max_queue}); retry later")
        self._set_inflight(self.state.inflight + n)
        try:
            yield
        finally:
            self._set_inflight(self.state.inflight - n)

    def _set_inflight(self, value: int) -> None:
        self.state.inflight = value
        self.metrics.inflight.set(value)
        capacity = self.cfg.engine.max_num_seqs
        self.metrics.queued.set(max(0, value - capacity))

    @staticmethod
    def _check_deadline(context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExpired("the deadline expired before the request reached the engine")

    def _record(self, r: ExtractionResult) -> None:
        m = self.metrics
        m.prompt_tokens.inc(r.usage.prompt_tokens)
        m.completion_tokens.inc(r.usage.completion_tokens)
        m.queue_seconds.observe(r.usage.queue_seconds)
        m.engine_seconds.observe(r.usage.engine_seconds)
        m.entities.inc(len(r.entities))
        m.hallucinated.inc(len(r.hallucinated))
        if not r.parsed:
            m.parse_failures.inc()
        if r.new_schema:
            m.grammar_schemas.labels("new").inc()
            m.grammar_first_use_seconds.observe(r.usage.queue_seconds + r.usage.engine_seconds)
        else:
            m.grammar_schemas.labels("reused").inc()

    @staticmethod
    def _result_pb(r: ExtractionResult, return_raw: bool) -> tpb.ExtractResult:
        u = r.usage
        return tpb.ExtractResult(
            entities=[tpb.Entity(label=e.label, text=e.text, start=e.start, end=e.end) for e in r.entities],
            usage=tpb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                            queue_seconds=u.queue_seconds, engine_seconds=u.engine_seconds,
                            total_seconds=u.total_seconds),
            raw=r.raw if return_raw else "",
            hallucinated=len(r.hallucinated),
        )

    @staticmethod
    def _max_entities(value: int, ex: ExtractorBase) -> int | None:
        bound = ex.card.bounds.max_entities
        if not 0 <= value <= bound:
            raise InputError(f"max_entities is {value}; it must be in [1, {bound}] (the task card's bound), or 0 for"
                             " the bound")
        return value or None

    # -- RPCs ------------------------------------------------------------------------------------------------

    @unary("Extract")
    async def Extract(self, request: spb.ExtractRequest, context: grpc.aio.ServicerContext,  # noqa: N802
                      rec: RpcRecorder) -> spb.ExtractResponse:
        if self.cfg.log_texts:
            rec.texts = [request.text]
        ex = self._extractor()
        max_entities = self._max_entities(request.max_entities, ex)
        labels = ex.labels_for(request.labels or None, dict(request.label_descriptions))
        ex.prepare(request.text, labels, max_entities)  # validate before queueing
        self._check_deadline(context)
        with self._admit(1):
            self.metrics.batch_texts.labels("Extract").observe(1)
            r = await ex.extract(request.text, labels=labels, max_entities=max_entities, request_id=rec.rid)
        self._record(r)
        rec.fields.update(chars=len(request.text), entities=len(r.entities), tokens=r.usage.completion_tokens)
        res = self._result_pb(r, request.return_raw)
        return spb.ExtractResponse(entities=res.entities, usage=res.usage, raw=res.raw, hallucinated=res.hallucinated)

    @unary("ExtractBatch")
    async def ExtractBatch(self, request: spb.ExtractBatchRequest, context: grpc.aio.ServicerContext,  # noqa: N802
                           rec: RpcRecorder) -> spb.ExtractBatchResponse:
        if self.cfg.log_texts:
            rec.texts = list(request.texts)
        ex = self._extractor()
        texts = list(request.texts)
        if not texts:
            raise InputError("texts is empty")
        if len(texts) > self.cfg.max_batch_texts:
            raise InputError(f"{len(texts)} texts; the limit is {self.cfg.max_batch_texts} per call")
        size = sum(len(t.encode("utf-8")) for t in texts)
        if size > self.cfg.max_batch_bytes:
            raise InputError(f"{size} bytes of text; the limit is {self.cfg.max_batch_bytes} per call")
        max_entities = self._max_entities(request.max_entities, ex)
        labels = ex.labels_for(request.labels or None, dict(request.label_descriptions))
        for i, t in enumerate(texts):
            try:
                ex.prepare(t, labels, max_entities)
            except InputError as exc:
                raise InputError(f"texts[{i}]: {exc}") from None
        self._check_deadline(context)
        with self._admit(len(texts)):
            self.metrics.batch_texts.labels("ExtractBatch").observe(len(texts))
            results = await ex.extract_many(texts, labels=labels, max_entities=max_entities)
        for r in results:
            self._record(r)
        rec.fields.update(texts=len(texts), entities=sum(len(r.entities) for r in results))
        return spb.ExtractBatchResponse(results=[self._result_pb(r, request.return_raw) for r in results])

    @unary("GetModelInfo")
    async def GetModelInfo(self, request: spb.GetModelInfoRequest, context: grpc.aio.ServicerContext,  # noqa: N802
                           rec: RpcRecorder) -> spb.GetModelInfoResponse:
        ex = self._extractor()
        card, eng = ex.card, ex.engine
        schema = output_spec(card.labels, card.bounds, answer_format=answer_format(card)).schema
        from nerve import __version__

        return spb.GetModelInfoResponse(model_info=tpb.ModelInfo(
            model_name=self.state.model_name,
            revision=self.state.model_path,
            engine=eng.version,
            structured_output_backend=eng.config.structured_backend,
            task_card=tpb.TaskCard(
                name=card.name, language=card.language, template_id=card.template,
                labels=[tpb.Label(name=lab.name, description=lab.description) for lab in card.labels],
                output_schema_json=json.dumps(schema, ensure_ascii=False),
                bounds=tpb.SchemaBounds(max_entities=card.bounds.max_entities,
                                        max_entity_chars=card.bounds.max_entity_chars),
                base_model=card.base_model or "", chat_template_sha256=card.chat_template_sha256 or "",
                open_labels=card.open_labels),
            limits=tpb.Limits(max_text_chars=self.cfg.max_text_chars, max_batch_texts=self.cfg.max_batch_texts,
                              max_batch_bytes=self.cfg.max_batch_bytes, max_message_bytes=self.cfg.max_message_bytes,
                              max_evaluate_examples=self.cfg.max_eval_examples),
            server_version=__version__,
            dtype=eng.dtype.dtype,
            dtype_reason=eng.dtype.reason,
        ))

    @streaming("Evaluate")
    async def Evaluate(self, request_iterator: AsyncIterator[spb.EvaluateRequest],  # noqa: N802
                       context: grpc.aio.ServicerContext, rec: RpcRecorder) -> AsyncIterator[spb.EvaluateResponse]:
        ex = self._extractor()
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        received = time.perf_counter()  # the clock of every elapsed_seconds of the call
        if first is None or first.WhichOneof("kind") != "config":
            raise InputError("the first Evaluate message must carry the config")
        config = first.config
        plan = self._evaluation_plan(config, ex)
        source = config.WhichOneof("source")
        if source == "dataset":
            dataset = await self._dataset_examples(config.dataset, stream, plan)
            checked = [plan.check(i, e, ex) for i, e in enumerate(dataset)]  # all valid before any is scored
            examples: AsyncIterator[tuple[Example, int]] = _aiter(checked)
            total: int | None = len(checked)
        elif source == "inline_examples":
            expected = config.inline_examples.expected_examples
            if expected < 0:
                raise InputError("inline_examples.expected_examples must not be negative")
            total = min(expected, plan.limit or expected) or None
            examples = self._inline_examples(stream, plan, ex)
        else:
            raise InputError("config.source is required: inline_examples or dataset")
        async for response in self._score(ex, plan, examples, total, received, rec):
            yield response

    def _evaluation_plan(self, config: spb.EvaluateConfig, ex: Extractor) -> _EvalPlan:
        if config.limit < 0:
            raise InputError("limit must not be negative")
        labels = list(dict.fromkeys(config.labels)) or None
        names = ex.labels_for(labels).names
        cap = self.cfg.max_eval_examples if self.cfg.max_eval_examples > 0 else None
        return _EvalPlan(labels=labels, names=tuple(names), left_out=frozenset(ex.card.labels.names) - set(names),
                         max_entities=self._max_entities(config.max_entities, ex), limit=config.limit or None,
                         cap=cap, include_errors=config.include_errors)

    async def _dataset_examples(self, dataset: spb.DatasetSource, stream: AsyncIterator[spb.EvaluateRequest],
                                plan: _EvalPlan) -> list[Example]:
        path = self._allowed_path(dataset.path)
        examples = await asyncio.to_thread(_read_server_dataset, path, _FORMATS.get(dataset.format, "auto"),
                                           dataset.scheme)
        if await anext(stream, None) is not None:
            raise InputError("a dataset evaluation takes no streamed examples")
        examples = examples[:plan.limit] if plan.limit else examples
        if plan.cap is not None and len(examples) > plan.cap:
            raise InputError(f"the dataset has {len(examples)} examples to score; the limit is {plan.cap} per call"
                             " (pass a smaller limit)")
        return examples

    @staticmethod
    async def _inline_examples(stream: AsyncIterator[spb.EvaluateRequest], plan: _EvalPlan,
                               ex: Extractor) -> AsyncIterator[tuple[Example, int]]:
        """The streamed examples, each checked as it arrives; reading stops after ``limit`` examples."""
        index = 0
        while plan.limit is None or index < plan.limit:
            msg = await anext(stream, None)
            if msg is None:
                return
            if msg.WhichOneof("kind") != "example":
                raise InputError(f"message {index + 1}: only examples may follow the config")
            if plan.cap is not None and index >= plan.cap:
                raise InputError(f"more than {plan.cap} examples; the limit is {plan.cap} per call")
            e = msg.example
            try:
                example = Example(text=e.text, id=e.id or None, entities=[
                    Entity(start=g.start, end=g.end, label=g.label, text=g.text) for g in e.entities])
            except ValueError as exc:
                raise InputError(f"example {index}: {exc}") from None
            yield plan.check(index, example, ex)
            index += 1

    async def _score(self, ex: Extractor, plan: _EvalPlan, source: AsyncIterator[tuple[Example, int]],
                     total: int | None, received: float, rec: RpcRecorder) -> AsyncIterator[spb.EvaluateResponse]:
        """Score examples as ``source`` yields them, a window at a time; progress while they finish, then the
        report. ``total`` is the progress total until ``source`` is exhausted, the count of examples after."""
        examples: list[Example] = []
        results: list[ExtractionResult | None] = []
        ignored = 0
        events: asyncio.Queue[tuple[str, BaseException | None]] = asyncio.Queue()
        window = asyncio.Semaphore(max(1, min(self.cfg.engine.max_num_seqs, self.cfg.max_queue // 2)))
        tasks: list[asyncio.Future] = []

        async def one(i: int, example: Example) -> None:
            try:
                with self._admit(1, force=True):
                    r = await ex.extract(example.text, labels=plan.labels, max_entities=plan.max_entities,
                                         request_id=rec.rid)
                self._record(r)
                results[i] = r
                events.put_nowait(("scored", None))
            except Exception as exc:  # noqa: BLE001 - re-raised by the call's task
                events.put_nowait(("failed", exc))
            finally:
                window.release()

        async def feed() -> None:
            nonlocal ignored
            try:
                async for example, dropped in source:
                    await window.acquire()  # not reading while the window is full: flow control for the sender
                    examples.append(example)
                    results.append(None)
                    ignored += dropped
                    rec.fields["examples"] = len(examples)
                    tasks.append(asyncio.ensure_future(one(len(examples) - 1, example)))
                events.put_nowait(("read", None))
            except Exception as exc:  # noqa: BLE001 - re-raised by the call's task
                events.put_nowait(("failed", exc))

        sent: tuple[int, int | None] | None = None

        def progress(done: int, of: int | None) -> spb.EvaluateResponse:
            nonlocal sent
            sent = (done, of)
            return spb.EvaluateResponse(progress=spb.EvaluateProgress(
                done=done, total=of, elapsed_seconds=time.perf_counter() - received))

        feeder = asyncio.ensure_future(feed())
        try:
            yield progress(0, total)
            done, reading, last = 0, True, time.perf_counter()
            while True:
                kind, error = await events.get()
                if error is not None:
                    raise error
                if kind == "read":
                    reading = False
                    total = len(examples)
                    if not total:
                        raise InputError("no examples to evaluate")
                else:
                    done += 1
                if not reading and done == total:
                    if sent != (done, total):
                        yield progress(done, total)  # after the last example
                    break
                now = time.perf_counter()
                step = max(1, total // 50) if total else 0
                if kind == "scored" and (now - last > 1.0 or (step and done % step == 0)):
                    last = now
                    yield progress(done, total)
        finally:
            feeder.cancel()
            for t in tasks:
                t.cancel()
        scored = [r for r in results if r is not None]
        yield spb.EvaluateResponse(report=self._report(examples, scored, plan.names, plan.include_errors, ignored,
                                                       time.perf_counter() - received))

    def _allowed_path(self, raw: str) -> Path:
        """A dataset file inside an allowed folder; a relative path is looked up under each folder in turn."""
        if not raw:
            raise InputError("dataset.path is empty")
        if not self.cfg.eval_dataset_roots:
            raise Forbidden("this server reads no datasets by path; stream the examples instead")
        roots = [Path(r).resolve() for r in self.cfg.eval_dataset_roots]
        given = Path(raw)
        candidates = [given.resolve()] if given.is_absolute() else [(r / given).resolve() for r in roots]
        inside = [c for c in candidates if any(c.is_relative_to(r) for r in roots)]
        if not inside:
            raise Forbidden("dataset path is outside the folders this server may read")
        for c in inside:
            if c.is_file():
                return c
        raise NotFound(f"no dataset at {raw}")

    @staticmethod
    def _report(examples: list[Example], results: list[ExtractionResult], labels: tuple[str, ...],
                include_errors: bool, ignored: int, elapsed: float) -> tpb.ScoreReport:
        from nerve.reports import percentiles

        scorer = Scorer(labels=labels)
        errors = []
        for i, (gold, r) in enumerate(zip(examples, results, strict=True)):
            scorer.add(gold.entities, r.entities, parsed=r.parsed, hallucinated=[m.label for m in r.hallucinated])
            if include_errors:
                g, p = set(gold.entities), set(r.entities)
                if g != p or r.hallucinated or not r.parsed:
                    errors.append(tpb.ExampleError(
                        index=i, id=gold.id or "", parsed=r.parsed, hallucinated=len(r.hallucinated),
                        missing=[tpb.Entity(label=e.label, text=e.text, start=e.start, end=e.end) for e in sorted(g - p)],
                        spurious=[tpb.Entity(label=e.label, text=e.text, start=e.start, end=e.end) for e in sorted(p - g)]))
        rep = scorer.report()
        lat = [r.usage.total_seconds for r in results]
        pct = percentiles(lat, (50, 90, 99))

        def ls(name: str, s: LabelScore) -> tpb.LabelScore:
            return tpb.LabelScore(label=name, precision=s.precision, recall=s.recall, f1=s.f1, support=s.support,
                                  tp=s.tp, fp=s.fp, fn=s.fn)

        return tpb.ScoreReport(
            labels=[ls(n, s) for n, s in rep.labels.items()], micro=ls("", rep.micro), macro=ls("", rep.macro),
            exact_match=rep.exact_match, parse_rate=rep.parse_rate, hallucination_rate=rep.hallucination_rate,
            examples=rep.examples,
            latency=tpb.LatencySummary(p50_seconds=pct["p50"], p90_seconds=pct["p90"], p99_seconds=pct["p99"],
                                       mean_seconds=sum(lat) / len(lat) if lat else 0.0),
            errors=errors, gold=rep.gold, predicted=rep.predicted, hallucinated=rep.hallucinated,
            unknown_labels=list(rep.unknown_labels), elapsed_seconds=elapsed,
            prompt_tokens=sum(r.usage.prompt_tokens for r in results),
            completion_tokens=sum(r.usage.completion_tokens for r in results), ignored_gold=ignored,
        )
