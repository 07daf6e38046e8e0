"""Scoring an extractor on gold examples: strict span P/R/F1 with the shared scorer (:mod:`nerve.ner.scoring`).

:class:`RunningScore` scores results as they arrive, in any order, keeping only counts and a bounded list of
mistakes; :func:`evaluate` runs an extractor over examples and scores them with it. The CLI (``nerve eval``),
the gRPC ``Evaluate`` call, the benchmarks and tuning's in-training evaluation all score this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerve.engines.vllm import EngineConfig, VllmEngine
from nerve.ner.card import TaskCard
from nerve.ner.labels import LabelSet
from nerve.ner.scoring import Scorer, ScoreReport
from nerve.ner.types import Entity, Example

from .base import ExtractionResult, ExtractorBase, Limits, Prepared
from .generative import Extractor
from .loading import run_sync


@dataclass(slots=True)
class EvaluationResult:
    report: ScoreReport
    latencies: list[float]
    predictions: list[ExtractionResult]
    """Each example's result, in example order; empty when :func:`evaluate` was told not to keep them."""


@dataclass(frozen=True, slots=True)
class Mistakes:
    """What one example got wrong: gold entities not predicted, predictions not in the gold set."""

    index: int
    """The example's position in its run (0-based)."""
    id: str | None
    missing: list[Entity]
    spurious: list[Entity]
    hallucinated: int
    parsed: bool

    def size(self) -> int:
        """An upper bound of the bytes these mistakes take in a protobuf message (``ExampleError``)."""
        entities = sum(32 + len(e.label.encode()) + len(e.text.encode()) for e in (*self.missing, *self.spurious))
        return 32 + len((self.id or "").encode()) + entities


class RunningScore:
    """The score of a run whose results arrive one at a time, in any order.

    It keeps the :class:`~nerve.ner.scoring.Scorer` counts, the latencies and token counts, and, with
    ``keep_mistakes``, the :class:`Mistakes` of the first examples (in run order) that have some: at most
    ``max_mistakes`` of them and at most ``max_mistake_bytes`` by :meth:`Mistakes.size`; the others are only
    counted (:attr:`mistakes_left_out`). Nothing else of an example is kept once it is added, so memory grows
    by a float per example, not with the texts.
    """

    def __init__(self, labels: Sequence[str], *, keep_mistakes: bool = False, max_mistakes: int = 1000,
                 max_mistake_bytes: int = 4 << 20) -> None:
        self.scorer = Scorer(labels=labels)
        self.latencies: list[float] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.mistaken = 0
        """Examples with a mistake (missing or spurious entities, hallucinations, or an answer that did not parse)."""
        self._keep = keep_mistakes
        self._max = max_mistakes
        self._max_bytes = max_mistake_bytes
        self._kept: list[tuple[int, int, Mistakes]] = []  # a max-heap on the index: (-index, size, mistakes)
        self._bytes = 0
        self._cutoff: int | None = None  # no example from this index on is listed

    def add(self, index: int, gold: Example, r: ExtractionResult) -> None:
        """Score the ``index``-th example of the run."""
        self.scorer.add(gold.entities, r.entities, parsed=r.parsed, hallucinated=[m.label for m in r.hallucinated],
                        hallucinated_scores=[m.score for m in r.hallucinated])
        self.latencies.append(r.usage.total_seconds)
        self.prompt_tokens += r.usage.prompt_tokens
        self.completion_tokens += r.usage.completion_tokens
        g, p = set(gold.entities), set(r.entities)
        if g == p and not r.hallucinated and r.parsed:
            return
        self.mistaken += 1
        if not self._keep or (self._cutoff is not None and index >= self._cutoff):
            return
        m = Mistakes(index, gold.id, sorted(g - p), sorted(p - g), len(r.hallucinated), r.parsed)
        size = m.size()
        heapq.heappush(self._kept, (-index, size, m))
        self._bytes += size
        while self._kept and (len(self._kept) > self._max or self._bytes > self._max_bytes):
            neg, dropped, _ = heapq.heappop(self._kept)
            self._bytes -= dropped
            self._cutoff = -neg  # popped in decreasing index order: the last one popped is the lowest

    @property
    def mistakes(self) -> list[Mistakes]:
        """The listed mistakes, in run order."""
        return [m for _, _, m in sorted(self._kept, reverse=True)]

    @property
    def mistakes_left_out(self) -> int:
        """Examples with mistakes that :attr:`mistakes` does not list (0 without ``keep_mistakes``)."""
        return self.mistaken - len(self._kept) if self._keep else 0


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    """Examples scored so far."""
    total: int | None
    """How many examples there are, once the source is exhausted (None before)."""


async def score_stream(extractor: ExtractorBase, source: AsyncIterable[tuple[Example, Prepared | None]],
                       score: RunningScore, *, window: int, labels: Sequence[str] | LabelSet | None = None,
                       max_entities: int | None = None, request_id: str | None = None,
                       admit: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
                       on_result: Callable[[int, ExtractionResult], None] | None = None) -> AsyncIterator[Progress]:
    """Extract and score examples as ``source`` yields them (with what :meth:`~ExtractorBase.prepare` made of
    each, or None), at most ``window`` at once, into ``score``.

    Yields a :class:`Progress` after each example is scored and when ``source`` is exhausted, and ends after
    the last example. ``source`` is not read while the window is full, which is flow control for a sender that
    streams examples. ``admit`` wraps each extraction (a server's admission control); ``on_result`` sees each
    result with its index before only its counts are kept. The first failure, of ``source`` or of an
    extraction, is raised, and the extractions still running are cancelled.
    """
    events: asyncio.Queue[tuple[str, BaseException | None]] = asyncio.Queue()
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Future] = set()
    count = 0

    async def one(i: int, example: Example, prepared: Prepared | None) -> None:
        try:
            async with admit() if admit is not None else contextlib.nullcontext():
                r = await extractor.extract(example.text, labels=labels, max_entities=max_entities,
                                            request_id=request_id, prepared=prepared)
            if on_result is not None:
                on_result(i, r)
            score.add(i, example, r)
            events.put_nowait(("scored", None))
        except Exception as exc:  # noqa: BLE001 - raised by the generator
            events.put_nowait(("failed", exc))
        finally:
            slots.release()

    async def feed() -> None:
        nonlocal count
        try:
            async for example, prepared in source:
                await slots.acquire()
                task = asyncio.ensure_future(one(count, example, prepared))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                count += 1
                # A new extraction prepares its text (chat template, tokens, grounding) when it first runs: one
                # turn of the event loop per extraction keeps a full window from preparing all at once while
                # other calls, health checks among them, wait.
                await asyncio.sleep(0)
            events.put_nowait(("read", None))
        except Exception as exc:  # noqa: BLE001 - raised by the generator
            events.put_nowait(("failed", exc))

    feeder = asyncio.ensure_future(feed())
    done, total = 0, None
    try:
        while total is None or done < total:
            kind, error = await events.get()
            if error is not None:
                raise error
            if kind == "read":
                total = count
            else:
                done += 1
            yield Progress(done, total)
    finally:
        feeder.cancel()
        for t in list(tasks):
            t.cancel()


async def evaluate(extractor: ExtractorBase, examples: Sequence[Example], *,
                   on_progress: Callable[[int, int], None] | None = None,
                   labels: Sequence[str] | LabelSet | None = None, window: int | None = None,
                   on_example: Callable[[int, Example, ExtractionResult], None] | None = None,
                   keep_predictions: bool = True) -> EvaluationResult:
    """Score the extractor on gold examples with the shared scorer (strict span P/R/F1), through
    :func:`score_stream` as the gRPC ``Evaluate`` does.

    ``labels`` is the label list every prompt names and the labels scored (default: the card's). Every text is
    prepared (validated) before any is extracted, so a bad one fails the call as a whole. ``window`` bounds
    the extractions in flight (default: all of them; the engine batches and queues them itself).
    ``on_example`` sees each example's index, gold example and result as it is scored (in completion order), so
    a caller can stream predictions to a file; an error it raises fails the evaluation. With
    ``keep_predictions=False`` the results are not kept (:attr:`EvaluationResult.predictions` is empty).
    """
    label_set = extractor.labels_for(labels)
    examples = list(examples)
    prepared = [extractor.prepare(e.text, label_set) for e in examples]
    score = RunningScore(label_set.names)
    results: list[ExtractionResult] = [None] * len(examples) if keep_predictions else []  # type: ignore[list-item]

    async def source() -> AsyncIterator[tuple[Example, Prepared | None]]:
        for pair in zip(examples, prepared, strict=True):
            yield pair

    def keep(i: int, r: ExtractionResult) -> None:
        if keep_predictions:
            results[i] = r
        if on_example is not None:
            on_example(i, examples[i], r)

    shown = 0
    async with contextlib.aclosing(score_stream(extractor, source(), score, window=window or max(1, len(examples)),
                                                labels=label_set, on_result=keep)) as progress:
        async for p in progress:
            if on_progress is not None and p.done != shown:
                shown = p.done
                on_progress(p.done, len(examples))
    return EvaluationResult(score.scorer.report(), list(score.latencies),  # every slot filled: no error
                            results if keep_predictions else [])


async def evaluate_with_progress(extractor: ExtractorBase, examples: Sequence[Example],
                                 console: Any = None, labels: Sequence[str] | LabelSet | None = None,
                                 on_example: Callable[[int, Example, ExtractionResult], None] | None = None,
                                 keep_predictions: bool = True) -> EvaluationResult:
    """:func:`evaluate` with a rich progress bar (done / total, elapsed, remaining)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("eval", total=len(examples))
        return await evaluate(extractor, examples, on_progress=lambda d, t: bar.update(task, completed=d),
                              labels=labels, on_example=on_example, keep_predictions=keep_predictions)


@dataclass(slots=True)
class CheckpointScore:
    report: ScoreReport
    """Constrained greedy decoding scored with the strict span scorer."""
    stop_rate: float | None = None
    """Share of probe answers that, decoded greedily *without* the schema, parse and end with the model's own end
    token: a model that has not learnt to stop runs on after its JSON (constrained decoding hides that)."""


def evaluate_checkpoint(model_dir: str | Path, examples: Sequence[Example], *, card: TaskCard | None = None,
                        limit: int | None = None, progress: bool = True, engine_config: EngineConfig | None = None,
                        stop_probe: int = 16) -> CheckpointScore:
    """Load a checkpoint into vLLM and score it on ``examples`` under constrained greedy decoding.

    With ``stop_probe`` > 0 the first ``stop_probe`` examples are also decoded without the schema to measure
    :attr:`CheckpointScore.stop_rate`.
    """
    card = card or TaskCard.load(model_dir)
    examples = list(examples)[:limit] if limit else list(examples)
    cfg = engine_config or EngineConfig(model=str(model_dir))
    cfg.model = str(model_dir)
    limits = Limits(max_text_chars=1 << 20)

    async def body(engine: VllmEngine) -> CheckpointScore:
        extractor = Extractor(engine, card, limits=limits)
        if progress:
            report = (await evaluate_with_progress(extractor, examples)).report
        else:
            report = (await evaluate(extractor, examples)).report
        stop_rate = None
        probe = [e.text for e in examples[:stop_probe]]
        if probe:
            free = await Extractor(engine, card, limits=limits, constrained=False).extract_many(probe)
            stop_rate = sum(r.parsed and r.finish_reason == "stop" for r in free) / len(free)
        return CheckpointScore(report, stop_rate)

    return run_sync(body, cfg)
