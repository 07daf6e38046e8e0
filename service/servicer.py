"""The gRPC servicer: translates between protobuf and the extraction pipeline, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import service_pb2_grpc
from nerve_client.pb import types_pb2 as tpb

from nerve.extraction import ExtractionResult, ExtractorBase, InputError, RunningScore, score_stream
from nerve.ner.prompts import answer_format
from nerve.ner.readers import DatasetFormatError, NoEntitiesError, detect_format, iter_dataset
from nerve.ner.readers.conll import normalize_scheme
from nerve.ner.schema import output_spec
from nerve.ner.scoring import LabelScore
from nerve.ner.types import Entity, Example

from .admission import DrainRate, late_reason
from .config import ServeConfig
from .errors import (
    REQUEST_ID,
    DeadlineExpired,
    FailedPrecondition,
    Forbidden,
    NotFound,
    NotReady,
    Overloaded,
    RpcRecorder,
    streaming,
    unary,
)
from .metrics import Metrics

log = logging.getLogger("nerve.service")

_FORMATS = {
    spb.DATASET_FORMAT_UNSPECIFIED: "auto",
    spb.DATASET_FORMAT_JSONL: "jsonl",
    spb.DATASET_FORMAT_CLUENER: "cluener",
    spb.DATASET_FORMAT_CONLL: "conll",
    spb.DATASET_FORMAT_BMES: "bmes",
}


_OFFSET_UNITS = frozenset(tpb.OffsetUnit.values())


def check_offset_unit(unit: int) -> None:
    if unit not in _OFFSET_UNITS:
        raise InputError(f"offset_unit {unit} is not an OffsetUnit (code points, UTF-16 or UTF-8)")


def entity_pb(e: Entity, text: str = "", unit: int = tpb.OFFSET_UNIT_UNSPECIFIED) -> tpb.Entity:
    """An entity as a message, its offsets into ``text`` in ``unit`` (default: code points, ``text`` unused)."""
    start, end = offsets_in(text, e.start, e.end, unit)
    return tpb.Entity(label=e.label, text=e.text, start=start, end=end, score=e.score)


def offsets_in(text: str, start: int, end: int, unit: int) -> tuple[int, int]:
    """Code-point offsets ``[start, end)`` of ``text`` in ``unit`` (an OffsetUnit): UTF-16 code units or UTF-8
    bytes count each code point as many times as it takes units."""
    if unit == tpb.OFFSET_UNIT_UTF16:
        a = start + sum(1 for c in text[:start] if ord(c) > 0xFFFF)
        return a, a + (end - start) + sum(1 for c in text[start:end] if ord(c) > 0xFFFF)
    if unit == tpb.OFFSET_UNIT_UTF8:
        a = len(text[:start].encode("utf-8"))
        return a, a + len(text[start:end].encode("utf-8"))
    return start, end


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

    def check(self, index: int, example: Example, ex: ExtractorBase) -> tuple[Example, int, Any]:
        """The example ready to score, the number of its gold entities ignored (labels left out), and what
        ``ex.prepare`` made of it (for ``ex.extract``, so that it is not prepared again)."""
        try:
            prepared = ex.prepare(example.text, self.labels, self.max_entities)
        except InputError as exc:
            raise InputError(f"example {index}: {exc}") from None
        ignored = {g.key for g in example.entities if g.label in self.left_out}
        if ignored:
            example = replace(example, entities=[g for g in example.entities if g.label not in self.left_out])
        return example, len(ignored), prepared


_READ_CHUNK = 256
"""Examples of a server-side dataset read per trip to a worker thread."""
_TURN_SECONDS = 0.01
"""Evaluate checks examples for at most this long before it gives the event loop a turn for other calls."""


async def _drain(items: deque[Any]) -> AsyncIterator[Any]:
    """The items in order, each dropped from ``items`` as it is taken."""
    while items:
        yield items.popleft()


def _take(items: Iterator[Any], n: int) -> tuple[list[Any], Exception | None]:
    """Up to ``n`` items, and the error that ended the reading before them if one did."""
    taken: list[Any] = []
    try:
        taken.extend(itertools.islice(items, n))
    except Exception as exc:  # noqa: BLE001 - raised after the items before it are checked
        return taken, exc
    return taken, None


def _read_server_dataset(path: Path, fmt: str, scheme: str, roots: list[str]) -> Iterator[Example]:
    """The examples of a dataset file, read as they are taken; the scheme applies to CoNLL files only.

    A malformed or unreadable file is a FailedPrecondition that names the file relative to its dataset root
    (``roots``) and the line, never the file's content or the server's absolute path: those go to the server
    log, under the call's request id.
    """
    try:
        if fmt == "auto":
            fmt = detect_format(path)
        opts: dict[str, str] = {}
        if scheme and fmt == "conll":
            try:
                opts["scheme"] = normalize_scheme(scheme)
            except ValueError as exc:
                raise InputError(f"dataset.scheme: {exc}") from None
        yield from iter_dataset(path, fmt, **opts)
    except InputError:
        raise
    except (ValueError, OSError) as exc:  # the server-side file is malformed or unreadable, not the request
        rid = REQUEST_ID.get()
        log.warning("request_id=%s dataset %s rejected: %s", rid, path, exc)
        raise FailedPrecondition(_dataset_problem(exc, _shown_path(path, roots), rid)) from None


_CONTENT_FREE_REASONS = ("invalid JSON: ", "not valid UTF-8 ", "expected ',' or ']' in the JSON array",
                         "unexpected content after the JSON array")
"""How the readers' JSON and UTF-8 decoding reasons start: they quote nothing of the file, so a client may see
them. Every other reason may quote a line of the file and goes to the server log only."""


def _dataset_problem(exc: ValueError | OSError, shown: str, rid: str) -> str:
    """What a client is told about a server-side dataset that could not be read: where, and why when the reason
    quotes nothing of the file."""
    if isinstance(exc, OSError):
        return f"dataset {shown}: cannot be read ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, DatasetFormatError):
        where = shown if exc.line is None else f"{shown}:{exc.line}"
        if isinstance(exc, NoEntitiesError) or exc.reason.startswith(_CONTENT_FREE_REASONS):
            return f"dataset {where}: {exc.reason}"
        return f"dataset {where}: malformed; the reason is in the server log (request id {rid})"
    return f"dataset {shown}: malformed; the reason is in the server log (request id {rid})"


def _shown_path(path: Path, roots: list[str]) -> str:
    """A server-side dataset file as a client may see it: relative to the dataset root that holds it."""
    for root in roots:
        resolved = Path(root).resolve()
        if path.is_relative_to(resolved):
            return path.relative_to(resolved).as_posix()
    return path.name


_MAX_PATH_CHARS = 4096
"""Longest dataset.path accepted."""


@dataclass
class ServerState:
    """What the servicer needs to know about the server's life cycle."""

    extractor: ExtractorBase | None = None
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
        self._evaluations = 0
        """Evaluate calls running now."""
        self._room = asyncio.Event()
        """Set when texts leave the queue (evaluations waiting for room look again)."""
        self._drain_rate = DrainRate()
        """How fast texts leave the queue while the server is busy (for deadline-aware admission)."""

    # -- helpers ---------------------------------------------------------------------------------------------

    def _extractor(self) -> ExtractorBase:
        if self.state.failure:
            raise NotReady(f"{self.state.failure}; retry on another replica")
        if self.state.draining:
            raise NotReady("the server is draining; retry on another replica")
        if self.state.extractor is None:
            raise NotReady("the model is still loading")
        return self.state.extractor

    @contextmanager
    def _admit(self, n: int, remaining: float | None = None) -> Iterator[None]:
        """Admit ``n`` texts of a call with ``remaining`` seconds of deadline (``None``: no deadline or not
        judged), or refuse them with RESOURCE_EXHAUSTED: the queue is full, or it would outlast the deadline
        (``shed_late_calls``, :mod:`.admission`)."""
        if self.state.inflight + n > self.cfg.max_queue:
            self.metrics.rejected.inc(n)
            raise Overloaded(f"queue full ({self.state.inflight} texts in flight, limit {self.cfg.max_queue}); retry later")
        if self.cfg.shed_late_calls:
            late = late_reason(self._drain_rate, self.state.inflight, n, self._capacity(), remaining)
            if late:
                self.metrics.rejected.inc(n)
                self.metrics.shed_late.inc(n)
                raise Overloaded(late)
        self._set_inflight(self.state.inflight + n)
        try:
            yield
        finally:
            self._set_inflight(self.state.inflight - n)

    @asynccontextmanager
    async def _admit_waiting(self) -> AsyncIterator[None]:
        """Admit one text of an evaluation under way, waiting while the queue is full: other traffic slows an
        evaluation down but does not fail it after part of its work is done."""
        while self.state.inflight >= self.cfg.max_queue:
            self._room.clear()
            await self._room.wait()
        with self._admit(1):
            yield

    @contextmanager
    def _evaluation_slot(self) -> Iterator[None]:
        """One of the ``max_concurrent_evaluations`` Evaluate calls; none starts while the queue is full."""
        running, limit = self._evaluations, self.cfg.max_concurrent_evaluations
        if running >= limit:
            raise Overloaded(f"too many evaluations: {running} running, the limit is {limit} at once; retry later")
        if self.state.inflight >= self.cfg.max_queue:
            self.metrics.rejected.inc()
            raise Overloaded(f"queue full ({self.state.inflight} texts in flight, limit {self.cfg.max_queue}); retry later")
        self._evaluations += 1
        try:
            yield
        finally:
            self._evaluations -= 1

    def _evaluation_window(self) -> int:
        """Texts one evaluation keeps in flight: at most the engine's batch, and all evaluations together at
        most half of ``max_queue``."""
        share = self.cfg.max_queue // (2 * self.cfg.max_concurrent_evaluations)
        return max(1, min(self._capacity(), share))

    def _capacity(self) -> int:
        """Texts the loaded engine works on at once (vLLM's ``max_num_seqs``, the encoder's batch)."""
        ex = self.state.extractor
        return ex.engine.capacity if ex is not None else self.cfg.engine.max_num_seqs

    def _set_inflight(self, value: int) -> None:
        if value < self.state.inflight:
            self._room.set()
        self.state.inflight = value
        self._drain_rate.update(value)
        self.metrics.inflight.set(value)
        self.metrics.queued.set(max(0, value - self._capacity()))

    @staticmethod
    def _check_deadline(context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExpired("the deadline expired before the request reached the engine")

    def _record(self, r: ExtractionResult) -> None:
        m = self.metrics
        m.prompt_tokens.inc(r.usage.prompt_tokens)
        m.cached_prompt_tokens.inc(r.usage.cached_prompt_tokens)
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
    def _min_score(value: float, ex: ExtractorBase) -> float:
        if not 0.0 <= value <= 1.0:  # also NaN
            raise InputError(f"min_score is {value}; it must be in [0, 1]")
        if value > 0 and not ex.gives_scores:
            raise FailedPrecondition("this model gives no entity scores, so min_score cannot apply; leave it 0")
        return value

    @staticmethod
    def _result_pb(r: ExtractionResult, return_raw: bool, text: str, unit: int,
                   min_score: float = 0.0) -> tpb.ExtractResult:
        u = r.usage
        kept = r.entities if not min_score else [e for e in r.entities if e.score is not None and e.score >= min_score]
        return tpb.ExtractResult(
            entities=[entity_pb(e, text, unit) for e in kept],
            usage=tpb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                            queue_seconds=u.queue_seconds, engine_seconds=u.engine_seconds,
                            total_seconds=u.total_seconds, cached_prompt_tokens=u.cached_prompt_tokens),
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
        check_offset_unit(request.offset_unit)
        min_score = self._min_score(request.min_score, ex)
        max_entities = self._max_entities(request.max_entities, ex)
        labels = ex.labels_for(request.labels or None, dict(request.label_descriptions))
        prepared = ex.prepare(request.text, labels, max_entities)  # validate before queueing
        self._check_deadline(context)
        with self._admit(1, context.time_remaining()):
            self.metrics.batch_texts.labels("Extract").observe(1)
            r = await ex.extract(request.text, labels=labels, max_entities=max_entities, request_id=rec.rid,
                                 prepared=prepared)
        self._record(r)
        rec.fields.update(chars=len(request.text), entities=len(r.entities), tokens=r.usage.completion_tokens)
        res = self._result_pb(r, request.return_raw, request.text, request.offset_unit, min_score)
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
        check_offset_unit(request.offset_unit)
        min_score = self._min_score(request.min_score, ex)
        max_entities = self._max_entities(request.max_entities, ex)
        labels = ex.labels_for(request.labels or None, dict(request.label_descriptions))
        prepared = []
        for i, t in enumerate(texts):
            try:
                prepared.append(ex.prepare(t, labels, max_entities))
            except InputError as exc:
                raise InputError(f"texts[{i}]: {exc}") from None
        self._check_deadline(context)
        with self._admit(len(texts), context.time_remaining()):
            self.metrics.batch_texts.labels("ExtractBatch").observe(len(texts))
            results = await ex.extract_many(texts, labels=labels, max_entities=max_entities, prepared=prepared)
        for r in results:
            self._record(r)
        rec.fields.update(texts=len(texts), entities=sum(len(r.entities) for r in results))
        return spb.ExtractBatchResponse(results=[self._result_pb(r, request.return_raw, t, request.offset_unit, min_score)
                                                 for r, t in zip(results, texts, strict=True)])

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
            structured_output_backend=eng.structured_backend,
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
        self._check_deadline(context)
        with self._evaluation_slot():
            stream = aiter(request_iterator)
            first = await self._next_message(stream, context)
            received = time.perf_counter()  # the clock of every elapsed_seconds of the call
            if first is None or first.WhichOneof("kind") != "config":
                raise InputError("the first Evaluate message must carry the config")
            config = first.config
            plan = self._evaluation_plan(config, ex)
            source = config.WhichOneof("source")
            if source == "dataset":
                checked = await self._dataset_examples(config.dataset, stream, plan, ex, context)
                total: int | None = len(checked)
                examples: AsyncIterator[tuple[Example, int, Any]] = _drain(checked)
            elif source == "inline_examples":
                expected = config.inline_examples.expected_examples
                if expected < 0:
                    raise InputError("inline_examples.expected_examples must not be negative")
                total = min(expected, plan.limit or expected) or None
                examples = self._inline_examples(stream, plan, ex, context)
            else:
                raise InputError("config.source is required: inline_examples or dataset")
            async for response in self._score(ex, plan, examples, total, received, rec):
                yield response

    async def _next_message(self, stream: AsyncIterator[spb.EvaluateRequest],
                            context: grpc.aio.ServicerContext) -> spb.EvaluateRequest | None:
        """The next message of an Evaluate stream (None once the client has half-closed it), waited for at most
        ``eval_idle_seconds`` and not past the client's deadline."""
        idle = self.cfg.eval_idle_seconds or None
        remaining = context.time_remaining()
        limits = [t for t in (idle, remaining) if t is not None]
        try:
            async with asyncio.timeout(min(limits) if limits else None):
                return await anext(stream, None)
        except TimeoutError:
            if idle is None or (remaining is not None and remaining <= idle):
                raise DeadlineExpired("the deadline expired while the server waited for the next Evaluate message"
                                      ) from None
            raise DeadlineExpired(f"no Evaluate message arrived for {idle:g} s (the server's eval_idle_seconds);"
                                  " the call was ended") from None

    def _evaluation_plan(self, config: spb.EvaluateConfig, ex: ExtractorBase) -> _EvalPlan:
        if config.limit < 0:
            raise InputError("limit must not be negative")
        labels = list(dict.fromkeys(config.labels)) or None
        names = ex.labels_for(labels).names
        cap = self.cfg.max_eval_examples if self.cfg.max_eval_examples > 0 else None
        return _EvalPlan(labels=labels, names=tuple(names), left_out=frozenset(ex.card.labels.names) - set(names),
                         max_entities=self._max_entities(config.max_entities, ex), limit=config.limit or None,
                         cap=cap, include_errors=config.include_errors)

    async def _dataset_examples(self, dataset: spb.DatasetSource, stream: AsyncIterator[spb.EvaluateRequest],
                                plan: _EvalPlan, ex: ExtractorBase,
                                context: grpc.aio.ServicerContext) -> deque[tuple[Example, int, Any]]:
        """The examples of a server-side dataset, each checked, all before the first is scored.

        The file is read a chunk at a time in a worker thread, and no further than ``limit`` examples, or one
        example beyond the server's cap (then the call fails): memory is bounded by what will be scored.
        """
        path = self._allowed_path(dataset.path)
        bounds = [n for n in (plan.limit, None if plan.cap is None else plan.cap + 1) if n is not None]
        wanted = min(bounds) if bounds else None
        reader = _read_server_dataset(path, _FORMATS.get(dataset.format, "auto"), dataset.scheme,
                                      self.cfg.eval_dataset_roots)
        checked: deque[tuple[Example, int, Any]] = deque()
        turn = time.perf_counter()
        while wanted is None or len(checked) < wanted:
            n = _READ_CHUNK if wanted is None else min(_READ_CHUNK, wanted - len(checked))
            chunk, error = await asyncio.to_thread(_take, reader, n)
            for example in chunk:
                # The whole file is checked before scoring starts; keeping what preparing each example made (token
                # ids) would hold the whole file's prompts in memory, so those are prepared again when scored.
                example, dropped, _ = plan.check(len(checked), example, ex)
                checked.append((example, dropped, None))
                if time.perf_counter() - turn >= _TURN_SECONDS:
                    await asyncio.sleep(0)  # other calls, health checks among them, run between examples
                    turn = time.perf_counter()
            if error is not None:
                raise error  # after the examples before it: problems are reported in file order
            if len(chunk) < n:
                break
        reader.close()  # the rest of the file is not read
        if await self._next_message(stream, context) is not None:
            raise InputError("a dataset evaluation takes no streamed examples")
        if plan.cap is not None and len(checked) > plan.cap:
            raise InputError(f"the dataset has more than {plan.cap} examples to score; the limit is {plan.cap} per"
                             " call (pass a smaller limit)")
        return checked

    async def _inline_examples(self, stream: AsyncIterator[spb.EvaluateRequest], plan: _EvalPlan, ex: ExtractorBase,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[tuple[Example, int, Any]]:
        """The streamed examples, each checked as it arrives; reading stops after ``limit`` examples, and the
        call fails at the first example beyond the server's cap."""
        index, turn = 0, time.perf_counter()
        while plan.limit is None or index < plan.limit:
            msg = await self._next_message(stream, context)
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
            if time.perf_counter() - turn >= _TURN_SECONDS:
                await asyncio.sleep(0)  # messages that were already buffered do not hold the event loop
                turn = time.perf_counter()

    async def _score(self, ex: ExtractorBase, plan: _EvalPlan, source: AsyncIterator[tuple[Example, int, Any]],
                     total: int | None, received: float, rec: RpcRecorder) -> AsyncIterator[spb.EvaluateResponse]:
        """Score examples as ``source`` yields them, a window at a time; progress while they finish, then the
        report. ``total`` is the progress total until ``source`` is exhausted, the count of examples after.

        Each example is dropped once scored (:class:`RunningScore` keeps its counts, and its mistakes within
        ``max_report_errors`` and half of ``max_message_bytes``), so memory does not grow with the stream.
        """
        score = RunningScore(plan.names, keep_mistakes=plan.include_errors, max_mistakes=self.cfg.max_report_errors,
                             max_mistake_bytes=self.cfg.max_message_bytes // 2)
        ignored = 0

        async def counted() -> AsyncIterator[tuple[Example, Any]]:
            nonlocal ignored
            async for example, dropped, prepared in source:
                ignored += dropped
                yield example, prepared

        sent: tuple[int, int | None] | None = None

        def progress(done: int, of: int | None) -> spb.EvaluateResponse:
            nonlocal sent
            sent = (done, of)
            return spb.EvaluateResponse(progress=spb.EvaluateProgress(
                done=done, total=of, elapsed_seconds=time.perf_counter() - received))

        yield progress(0, total)
        last, shown = time.perf_counter(), 0
        scoring = score_stream(ex, counted(), score, window=self._evaluation_window(), labels=plan.labels,
                               max_entities=plan.max_entities, request_id=rec.rid, admit=self._admit_waiting,
                               on_result=lambda i, r: self._record(r))
        async with contextlib.aclosing(scoring) as events:
            async for p in events:
                rec.fields["examples"] = p.done if p.total is None else p.total
                if p.total is not None:
                    total = p.total
                    if not total:
                        raise InputError("no examples to evaluate")
                    if p.done == total:
                        if sent != (p.done, total):
                            yield progress(p.done, total)  # after the last example
                        break
                now = time.perf_counter()
                step = max(1, total // 50) if total else 0
                if p.done != shown and (now - last > 1.0 or (step and p.done % step == 0)):
                    last, shown = now, p.done
                    yield progress(p.done, total)
        yield spb.EvaluateResponse(report=self._report(score, ignored, time.perf_counter() - received))

    def _allowed_path(self, raw: str) -> Path:
        """A dataset file inside an allowed folder; a relative path is looked up under each folder in turn."""
        if not raw:
            raise InputError("dataset.path is empty")
        if "\x00" in raw:
            raise InputError("dataset.path contains a NUL character")
        if len(raw) > _MAX_PATH_CHARS:
            raise InputError(f"dataset.path has {len(raw)} characters; the limit is {_MAX_PATH_CHARS}")
        if not self.cfg.eval_dataset_roots:
            raise Forbidden("this server reads no datasets by path; stream the examples instead")
        roots = [Path(r).resolve() for r in self.cfg.eval_dataset_roots]
        given = Path(raw)
        candidates = [given.resolve()] if given.is_absolute() else [(r / given).resolve() for r in roots]
        inside = [c for c in candidates if any(c.is_relative_to(r) for r in roots)]
        if not inside:
            raise Forbidden("dataset path is outside the folders this server may read")
        for c in inside:
            try:
                if c.is_file():
                    return c
            except OSError:  # e.g. a name longer than the file system allows: no such file
                continue
        raise NotFound(f"no dataset at {raw[:256]!r}")

    @staticmethod
    def _report(score: RunningScore, ignored: int, elapsed: float) -> tpb.ScoreReport:
        from nerve.reports import percentiles

        errors = [tpb.ExampleError(index=m.index, id=m.id or "", parsed=m.parsed, hallucinated=m.hallucinated,
                                   missing=[entity_pb(e) for e in m.missing], spurious=[entity_pb(e) for e in m.spurious])
                  for m in score.mistakes]
        rep = score.scorer.report()
        lat = score.latencies
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
            errors=errors, errors_omitted=score.mistakes_left_out, gold=rep.gold, predicted=rep.predicted,
            hallucinated=rep.hallucinated, unknown_labels=list(rep.unknown_labels), elapsed_seconds=elapsed,
            prompt_tokens=score.prompt_tokens, completion_tokens=score.completion_tokens, ignored_gold=ignored,
            threshold_curve=[tpb.ThresholdPoint(threshold=p.threshold, precision=p.precision, recall=p.recall, f1=p.f1,
                                                predicted=p.predicted) for p in rep.curve],
        )
