"""Evaluate within bounds: examples checked as they arrive, reading stopped at `limit` and at the server's cap,
dataset files read lazily, a bounded error list, a bounded number of evaluations sharing Extract's queue,
memory that does not grow with the stream, idle streams and deadlines ended, health answered throughout.

Most tests run the real server on a loopback port over :class:`QuickExtractor`, a stand-in that answers at once
(or when a gate opens), so that the stream and the servicer are what is measured; the health test runs the
tiny random model, whose tokenizer makes checking examples cost what it costs in production.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import types_pb2 as tpb

from nerve.extraction import ExtractionResult, ExtractorBase, InputError, RunningScore, Usage
from nerve.ner.card import TaskCard
from nerve.ner.readers import iter_dataset
from nerve.ner.types import Entity, Example
from nerve.service.config import ServeConfig
from nerve.service.server import NerveServer
from tests.conftest import Running
from tests.helpers import StubEngine

INLINE = spb.EvaluateConfig(inline_examples=spb.InlineSource())


class QuickExtractor(ExtractorBase):
    """An extractor without an engine: it checks the text's length and predicts its first character as a
    ``name``. With a ``gate``, every extraction waits for the gate to open."""

    def __init__(self, max_text_chars: int, gate: asyncio.Event | None = None) -> None:
        self.card = TaskCard.preset("cluener")
        self.engine = StubEngine()
        self.max_text_chars = max_text_chars
        self.gate = gate
        self.running = 0
        self.peak = 0
        """Most extractions running at once."""

    def prepare(self, text: str, labels=None, max_entities: int | None = None) -> None:
        if not text.strip():
            raise InputError("text is empty or whitespace only")
        if len(text) > self.max_text_chars:
            raise InputError(f"text has {len(text)} characters; the limit is {self.max_text_chars}")

    async def extract(self, text: str, *, labels=None, max_entities: int | None = None,
                      request_id: str | None = None, prepared=None) -> ExtractionResult:
        self.prepare(text)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return ExtractionResult([Entity(0, 1, "name", text[0])], "", True,
                                    usage=Usage(prompt_tokens=1, completion_tokens=1, total_seconds=0.001))
        finally:
            self.running -= 1


@pytest.fixture
def quick_server(loop_thread):
    """Factory: a server over a :class:`QuickExtractor` with the given settings (no model, no engine)."""
    running: list[Running] = []

    def start(gate: asyncio.Event | None = None, **settings) -> Running:
        cfg = ServeConfig(port=0, metrics_port=0, **settings)
        server = NerveServer(cfg)
        loop_thread.run(server.start(load=False))
        r = Running(loop_thread, server)
        r.extractor = QuickExtractor(cfg.max_text_chars, gate)
        r.make_ready(r.extractor)
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()


def example(i: int, text: str | None = None, **fields) -> spb.EvaluateRequest:
    return spb.EvaluateRequest(example=tpb.Example(text=text or f"Alice {i}", **fields))


def config(**fields) -> spb.EvaluateRequest:
    return spb.EvaluateRequest(config=spb.EvaluateConfig(inline_examples=spb.InlineSource(), **fields))


def dataset(path: str, **fields) -> spb.EvaluateRequest:
    return spb.EvaluateRequest(config=spb.EvaluateConfig(dataset=spb.DatasetSource(path=path), **fields))


def report_of(responses) -> tpb.ScoreReport:
    reports = [m.report for m in responses if m.WhichOneof("kind") == "report"]
    assert len(reports) == 1
    return reports[0]


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


class Stream:
    """A request stream that stops after ``head`` and waits (like a client still sending) until released."""

    def __init__(self, head: list[spb.EvaluateRequest], tail: Iterator[spb.EvaluateRequest] | None = None):
        self.head, self.tail = head, tail or iter(())
        self.sent = 0
        self.release = threading.Event()

    def __iter__(self) -> Iterator[spb.EvaluateRequest]:
        for m in self.head:
            self.sent += 1
            yield m
        self.release.wait(60)
        for m in self.tail:
            self.sent += 1
            yield m


def gold_lines(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"text": f"Alice {i}", "entities": [{"label": "name", "text": "Alice", "start": 0, "end": 5}]})
            for i in range(start, start + n)]


# --- 1. checked as they arrive --------------------------------------------------------------------------------


def test_an_over_long_inline_text_fails_the_call_when_it_arrives(quick_server) -> None:
    r = quick_server(max_text_chars=50)
    stream = Stream([config(), example(0), example(1, "x" * 51)], (example(i) for i in itertools.count(2)))
    t0 = time.perf_counter()
    err = rpc_error(lambda: list(r.stub.Evaluate(iter(stream), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("example 1: text has 51")
    assert time.perf_counter() - t0 < 10 and not stream.release.is_set()  # the rest of the stream was never needed
    stream.release.set()


def test_an_over_long_dataset_text_fails_before_a_later_malformed_record(quick_server, tmp_path) -> None:
    lines = gold_lines(1) + [json.dumps({"text": "x" * 51})] + ["{not json"] + gold_lines(3, start=3)
    (tmp_path / "gold.jsonl").write_text("\n".join(lines) + "\n")
    r = quick_server(max_text_chars=50, eval_dataset_roots=[str(tmp_path)])
    err = rpc_error(lambda: list(r.stub.Evaluate(iter([dataset("gold.jsonl")]), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("example 1: text has 51")


# --- 2. and 4. reading stops at the limit and the cap ---------------------------------------------------------


def test_limit_ends_the_call_without_reading_the_rest_of_the_stream(quick_server) -> None:
    r = quick_server()
    stream = Stream([config(limit=3), *(example(i) for i in range(3))], (example(i) for i in itertools.count(3)))
    responses = list(r.stub.Evaluate(iter(stream), timeout=30))
    assert report_of(responses).examples == 3 and not stream.release.is_set()
    assert responses[-2].progress.done == 3 and responses[-2].progress.total == 3
    stream.release.set()


def test_a_dataset_is_read_only_as_far_as_limit_and_cap_need(quick_server, tmp_path) -> None:
    (tmp_path / "gold.jsonl").write_text("\n".join(gold_lines(3) + ["{not json"]) + "\n")
    r = quick_server(max_eval_examples=2, eval_dataset_roots=[str(tmp_path)])
    assert report_of(r.stub.Evaluate(iter([dataset("gold.jsonl", limit=2)]), timeout=30)).examples == 2
    err = rpc_error(lambda: list(r.stub.Evaluate(iter([dataset("gold.jsonl")]), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 2" in err.details()
    unlimited = quick_server(max_eval_examples=0, eval_dataset_roots=[str(tmp_path)])
    err = rpc_error(lambda: list(unlimited.stub.Evaluate(iter([dataset("gold.jsonl")]), timeout=30)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "gold.jsonl:4: invalid JSON" in err.details()


@pytest.mark.parametrize(("name", "content", "texts", "bad_line"), [
    ("gold.jsonl", "\n".join(gold_lines(2) + ['{"text": "x", "entities": [{"label": "name"}]}']), ["Alice 0", "Alice 1"], 3),
    ("gold.conll", "Alice B-PER\nsmiled O\n\nBob B-PER\n\nCarol\n", ["Alice smiled", "Bob"], 6),
])
def test_iter_dataset_reads_as_far_as_the_examples_taken(tmp_path, name, content, texts, bad_line) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert [e.text for e in itertools.islice(iter_dataset(path), 2)] == texts
    with pytest.raises(ValueError, match=f"{name}:{bad_line}: "):
        list(iter_dataset(path))


def test_a_record_of_many_lines_is_read_in_one_pass(tmp_path) -> None:
    text = "Alice " * 3000
    entities = [{"label": "name", "text": "Alice", "start": 6 * i, "end": 6 * i + 5} for i in range(3000)]
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps([{"text": text, "entities": entities}] * 3, indent=2))  # 54,000 lines
    t0 = time.perf_counter()
    assert [len(e.entities) for e in iter_dataset(path, "jsonl")] == [3000] * 3
    assert time.perf_counter() - t0 < 10  # 0.1 s; a decoding attempt per line took a minute


# --- 3. a bounded error list ----------------------------------------------------------------------------------


def test_running_score_lists_the_first_mistakes_whatever_the_order_of_results() -> None:
    gold = [Example(f"Alice {i}", [Entity(0, 5, "name", "Alice")]) for i in range(50)]
    wrong = ExtractionResult([], "", True)
    right = ExtractionResult([Entity(0, 5, "name", "Alice")], "", True)
    order = list(range(50))
    random.Random(0).shuffle(order)
    score = RunningScore(["name"], keep_mistakes=True, max_mistakes=7)
    for i in order:
        score.add(i, gold[i], right if i % 3 == 0 else wrong)
    mistaken = [i for i in range(50) if i % 3]
    assert [m.index for m in score.mistakes] == mistaken[:7]
    assert score.mistakes_left_out == len(mistaken) - 7 and score.scorer.report().examples == 50
    small = RunningScore(["name"], keep_mistakes=True, max_mistake_bytes=3 * score.mistakes[0].size())
    for i in order:
        small.add(i, gold[i], wrong)
    assert [m.index for m in small.mistakes] == [0, 1, 2] and small.mistakes_left_out == 47


def test_report_errors_are_bounded_in_number_and_in_size(quick_server) -> None:
    r = quick_server(max_report_errors=5)
    rep = report_of(r.stub.Evaluate(iter([config(include_errors=True), *(example(i) for i in range(40))]),
                                    timeout=30))
    assert [e.index for e in rep.errors] == [0, 1, 2, 3, 4] and rep.errors_omitted == 35 and rep.examples == 40
    rep = report_of(r.stub.Evaluate(iter([config(), *(example(i) for i in range(40))]), timeout=30))
    assert not rep.errors and rep.errors_omitted == 0

    # Each example's error lists 400 missing entities (about 15 kB): without the size bound the report of 40
    # would be about 600 kB, far beyond this server's 64 kB message limit.
    limit = 1 << 16
    r = quick_server(max_message_bytes=limit, max_text_chars=2000)
    text = "ab" * 400
    gold = [tpb.Entity(label="name", text=text[k:k + 1], start=k, end=k + 1) for k in range(1, 800, 2)]
    stream = [config(include_errors=True), *(example(i, text, entities=gold) for i in range(40))]
    rep = report_of(r.stub.Evaluate(iter(stream), timeout=60))
    assert rep.examples == 40 and 1 <= len(rep.errors) < 5 and len(rep.errors) + rep.errors_omitted == 40
    assert [e.index for e in rep.errors] == list(range(len(rep.errors)))
    assert rep.ByteSize() < limit


# --- 5. a bounded number of evaluations, in Extract's queue ---------------------------------------------------


def test_evaluations_beyond_the_limit_are_resource_exhausted(quick_server) -> None:
    r = quick_server(max_concurrent_evaluations=1)
    stream = Stream([config(), example(0)], iter([example(1)]))
    first = r.stub.Evaluate(iter(stream), timeout=30)
    assert next(first).progress.done == 0  # the first evaluation is running
    err = rpc_error(lambda: list(r.stub.Evaluate(iter([config(), example(0)]), timeout=30)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many evaluations: 1 running" in err.details()
    stream.release.set()
    assert report_of(list(first)).examples == 2
    assert report_of(r.stub.Evaluate(iter([config(), example(0)]), timeout=30)).examples == 1


def test_evaluation_texts_are_admitted_in_the_queue_of_extract(quick_server, loop_thread) -> None:
    gate = asyncio.Event()
    r = quick_server(gate=gate, max_queue=4, max_concurrent_evaluations=1)  # window: 2 texts

    def wait_for(condition) -> None:
        for _ in range(200):
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError("timed out")

    held = [r.stub.Extract.future(spb.ExtractRequest(text="Bob"), timeout=60) for _ in range(4)]
    wait_for(lambda: r.server.state.inflight == 4)
    err = rpc_error(lambda: list(r.stub.Evaluate(iter([config(), example(0)]), timeout=10)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in err.details()

    held.pop().cancel()  # room for one text: the evaluation starts, its second text waits for room
    wait_for(lambda: r.server.state.inflight == 3)
    responses: list = []
    worker = threading.Thread(target=lambda: responses.extend(r.stub.Evaluate(
        iter([config(), *(example(i) for i in range(4))]), timeout=60)))
    worker.start()
    wait_for(lambda: r.server.state.inflight == 4)
    time.sleep(0.3)
    assert r.server.state.inflight == 4 and r.extractor.peak == 4  # not beyond max_queue
    assert r.stub.Extract.future(spb.ExtractRequest(text="Bob"), timeout=10).exception().code() == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    loop_thread.loop.call_soon_threadsafe(gate.set)
    worker.join(30)
    assert report_of(responses).examples == 4 and r.extractor.peak <= 4
    assert all(f.result().entities for f in held)
    assert r.server.state.inflight == 0


# --- 6. memory does not grow with the stream ------------------------------------------------------------------


def _peak_rss_growth(call) -> tuple[int, object]:
    """(peak RSS minus RSS before, result) of ``call()``, sampled every 10 ms."""
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, proc.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = call()
    finally:
        done.set()
        sampler.join()
    return max(0, peak - base), result


@pytest.mark.parametrize(("count", "chars"), [(20000, 40), (400, 100_000)])
def test_server_memory_stays_bounded_whatever_the_client_streams(quick_server, count, chars) -> None:
    r = quick_server(max_text_chars=100_000, max_message_bytes=1 << 20)
    entity = tpb.Entity(label="name", text="A", start=0, end=1)

    def run(n: int) -> tpb.ScoreReport:
        stream = (example(i, f"A{i:07d} " * (chars // 9) + "x", entities=[entity]) for i in range(n))
        return report_of(r.stub.Evaluate(itertools.chain([config(include_errors=True)], stream), timeout=120))

    run(count // 10)  # warm-up: gRPC buffers and allocator pools
    growth, rep = _peak_rss_growth(lambda: run(count))
    streamed = count * chars
    assert rep.examples == count and rep.micro.tp == count
    # Measured: at most 2 MiB for the small examples and 7 MiB for the large ones (a window of 64 in flight);
    # 26 MiB and 39 MiB when every example was kept until the report.
    assert growth < 16 << 20, f"server memory grew by {growth / 2**20:.1f} MiB over a {streamed / 2**20:.1f} MiB stream"


# --- 7. idle streams and deadlines ----------------------------------------------------------------------------


@pytest.mark.parametrize("head", [[], [config(), example(0)]], ids=["before the config", "between examples"])
def test_an_idle_stream_ends_deadline_exceeded(quick_server, head) -> None:
    r = quick_server(eval_idle_seconds=1)
    stream = Stream(head)
    t0 = time.perf_counter()
    err = rpc_error(lambda: list(r.stub.Evaluate(iter(stream), timeout=30)))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "eval_idle_seconds" in err.details()
    assert time.perf_counter() - t0 < 10
    stream.release.set()


def test_the_client_deadline_ends_an_evaluation_and_frees_its_slot(quick_server) -> None:
    gate = asyncio.Event()
    r = quick_server(gate=gate, max_concurrent_evaluations=1)
    stream = Stream([config(), example(0)])
    err = rpc_error(lambda: list(r.stub.Evaluate(iter(stream), timeout=1.5)))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stream.release.set()
    for _ in range(100):
        if not r.server.state.inflight and not r.extractor.running:
            break
        time.sleep(0.05)
    assert r.server.state.inflight == 0 and r.extractor.running == 0  # its text was abandoned
    r.loop_thread.loop.call_soon_threadsafe(gate.set)
    assert report_of(r.stub.Evaluate(iter([config(), example(0)]), timeout=30)).examples == 1


# --- Health during the largest evaluation --------------------------------------------------------------------


@pytest.mark.engine
def test_health_answers_within_a_second_during_the_largest_evaluation(start_server, tmp_path: Path) -> None:
    n = ServeConfig().max_eval_examples
    lines = (json.dumps({"text": f"Alice Smith visited Paris on day {i}.", "entities": [
        {"label": "name", "text": "Alice Smith", "start": 0, "end": 11}]}) for i in range(n))
    (tmp_path / "gold.jsonl").write_text("\n".join(lines) + "\n")
    r = start_server(eval_dataset_roots=[str(tmp_path)])
    call = r.stub.Evaluate(iter([dataset("gold.jsonl", max_entities=1)]), timeout=300)
    first: list = []
    reader = threading.Thread(target=lambda: first.append(next(call)))
    reader.start()
    slowest, checks, t0 = 0.0, 0, time.perf_counter()
    while time.perf_counter() - t0 < 120 and (reader.is_alive() or checks < 20):
        started = time.perf_counter()
        status = r.health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
        slowest = max(slowest, time.perf_counter() - started)
        assert status == health_pb2.HealthCheckResponse.SERVING
        checks += 1
        time.sleep(0.1)
    reader.join(5)
    call.cancel()
    assert first and first[0].progress.total == n  # all examples read and checked, scoring under way
    assert slowest < 1.0 and checks >= 20, f"slowest health check {slowest:.2f} s of {checks}"


class SlowPrepare(QuickExtractor):
    """A :class:`QuickExtractor` whose preparing holds the event loop for ``seconds``, as a long chat template
    and tokenizer do."""

    def __init__(self, seconds: float) -> None:
        super().__init__(max_text_chars=1000)
        self.seconds = seconds

    def prepare(self, text: str, labels=None, max_entities: int | None = None) -> None:
        time.sleep(self.seconds)
        super().prepare(text, labels, max_entities)


def _longest_stall(loop_thread, work) -> float:
    """The longest the event loop went without running a coroutine that asks for a turn every millisecond,
    while ``work`` (a coroutine) ran."""
    async def measure() -> float:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)
        try:
            await work
        finally:
            done.set()
            await tick
        return max(gaps)

    return loop_thread.run(measure())


def test_a_full_window_of_extractions_does_not_prepare_all_at_once(loop_thread) -> None:
    """Dataset examples are prepared again when scored: each new extraction of the window gets its own turn of
    the event loop (48 prepares of 20 ms held it for about a second when the window was filled in one step)."""
    from nerve.extraction.evaluation import score_stream

    ex = SlowPrepare(0.02)
    golds = [Example(f"Alice {i}", [Entity(0, 5, "name", "Alice")]) for i in range(96)]

    async def source():
        for g in golds:
            yield g, None

    async def run() -> None:
        progress = [p async for p in score_stream(ex, source(), RunningScore(["name"]), window=48)]
        assert progress[-1].done == progress[-1].total == 96

    assert _longest_stall(loop_thread, run()) < 0.2


def test_checking_a_dataset_gives_the_event_loop_turns(quick_server, tmp_path: Path) -> None:
    """Every example of a server-side dataset is checked before scoring starts; checking takes turns with
    other calls by time, not by a count of examples, so slow examples do not hold health checks."""
    lines = (json.dumps({"text": f"Alice {i}", "entities": [{"label": "name", "text": "Alice", "start": 0, "end": 5}]})
             for i in range(200))
    (tmp_path / "gold.jsonl").write_text("\n".join(lines) + "\n")
    r = quick_server(eval_dataset_roots=[str(tmp_path)])
    r.server.state.extractor = r.extractor = SlowPrepare(0.005)

    async def evaluate_in_loop() -> None:
        await asyncio.to_thread(lambda: list(r.stub.Evaluate(iter([dataset("gold.jsonl")]), timeout=60)))

    assert _longest_stall(r.loop_thread, evaluate_in_loop()) < 0.2


def test_evaluate_and_the_rpc_score_alike(quick_server, loop_thread) -> None:
    """``nerve eval`` (:func:`nerve.extraction.evaluate`) and the gRPC Evaluate run the same scoring loop."""
    from nerve.extraction import evaluate

    golds = [Example(f"{c}lice {i}", [Entity(0, 5, "name", f"{c}lice")], id=str(i))
             for i, c in enumerate("AABAB" * 5)]  # QuickExtractor predicts each text's first character: 10 mistakes
    r = quick_server()
    local = loop_thread.run(evaluate(r.extractor, golds, window=3)).report
    streamed = report_of(r.stub.Evaluate(iter([config()] + [
        spb.EvaluateRequest(example=tpb.Example(text=g.text, id=g.id, entities=[
            tpb.Entity(start=e.start, end=e.end, label=e.label, text=e.text) for e in g.entities])) for g in golds]),
        timeout=30))
    assert local.examples == streamed.examples == 25
    assert (local.micro.tp, local.micro.fp, local.micro.fn) == (streamed.micro.tp, streamed.micro.fp, streamed.micro.fn)
    assert local.micro.f1 == pytest.approx(streamed.micro.f1) and local.micro.tp == 0


def test_queued_texts_are_counted_against_the_engines_capacity(quick_server, loop_thread) -> None:
    """``nerve_queued_requests`` is what the loaded engine cannot take at once (its capacity, not vLLM's setting)."""
    gate = asyncio.Event()
    r = quick_server(gate=gate)
    r.extractor.engine = StubEngine(capacity=2)
    futures = [r.stub.Extract.future(spb.ExtractRequest(text=f"Alice {i}"), timeout=30) for i in range(5)]
    deadline = time.monotonic() + 10
    while r.server.metrics.inflight._value.get() < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.server.metrics.inflight._value.get() == 5
    assert r.server.metrics.queued._value.get() == 3
    loop_thread.loop.call_soon_threadsafe(gate.set)
    assert all(f.result().entities for f in futures)
    assert r.server.metrics.queued._value.get() == 0
