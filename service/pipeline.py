"""Text in, grounded entities out: the task contract around the engine.

:class:`Extractor` validates the input, renders the prompt with the checkpoint's own chat template
(:func:`ner.prompts.render_prompt`, the function tuning uses), builds the bounded output schema, runs the
engine, parses the answer and grounds each mention in the text. The gRPC service, the CLI, the benchmarks
and tuning's evaluation all go through it.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ner.card import TaskCard
from ner.grounded import grounded_grammar
from ner.labels import Label, LabelSet
from ner.parsing import AnswerParseError, Mention, ground, parse_answer
from ner.prompts import answer_format, check_chat_template, render_prompt
from ner.schema import OutputSpec, output_spec
from ner.scoring import Scorer, ScoreReport
from ner.types import Entity, Example

from .engine import EngineConfig, GenerationOutput, GenerationRequest, VllmEngine

UNCONSTRAINED_MAX_TOKENS = 256
MAX_REQUEST_LABELS = 32
"""Most labels one request may name when the card has open labels."""
MAX_LABEL_DESCRIPTION_CHARS = 200


def _clip(s: str, n: int) -> str:
    """``s`` cut to ``n`` characters (for echoing client input in error messages)."""
    return s if len(s) <= n else s[: n - 1] + "…"
"""Token budget of unconstrained decoding (benchmarks only), the same as the transformers baseline's."""


class InputError(ValueError):
    """The request is invalid (maps to INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_chars: int = 4000
    max_batch_texts: int = 64
    max_batch_bytes: int = 1 << 20
    new_schemas_per_minute: int = 0
    """Most output schemas not seen before (label subsets × bounds) per minute, each a grammar compilation
    in the engine; beyond it such requests get :class:`SchemaBudgetExceeded`. 0: no limit."""


SCHEMAS_REMEMBERED = 4096
"""Schemas an extractor remembers as compiled (least recently used forgotten first), like vLLM's own cache."""


class SchemaBudgetExceeded(Exception):
    """Too many new output schemas (grammar compilations) in the last minute; retry later."""


class SchemaBudget:
    """A token bucket of grammar compilations: ``per_minute`` per minute, bursts of as many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._at = clock()

    def take(self) -> bool:
        if self.per_minute <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.per_minute, self._tokens + (now - self._at) * self.per_minute / 60.0)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0
    engine_seconds: float = 0.0
    total_seconds: float = 0.0
    cached_prompt_tokens: int = 0
    """Prompt tokens whose KV came from the engine's prefix cache (not computed again)."""


@dataclass(slots=True)
class ExtractionResult:
    entities: list[Entity]
    raw: str
    parsed: bool
    """Whether the answer parsed as the task's JSON (always true under a schema unless the engine broke)."""
    hallucinated: list[Mention] = field(default_factory=list)
    duplicates: int = 0
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    new_schema: bool = False
    """This request introduced an output schema not seen before (its grammar was compiled)."""


@dataclass(slots=True)
class Prepared:
    request: GenerationRequest
    spec: OutputSpec | None
    labels: LabelSet


def _check_text(text: str, limits: Limits) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError("text is empty or whitespace only")
    if len(text) > limits.max_text_chars:
        raise InputError(f"text has {len(text)} characters; the limit is {limits.max_text_chars}")
    if any(unicodedata.category(ch) == "Cs" for ch in text):
        raise InputError("text contains unpaired surrogate code points")


class ExtractorBase:
    """What every extractor shares: label subsets and concurrent extraction of many texts.

    Subclasses have ``card`` and implement ``prepare`` (validation) and ``extract``.
    """

    card: TaskCard

    def labels_for(self, labels: Sequence[str] | LabelSet | None,
                   descriptions: dict[str, str] | None = None) -> LabelSet:
        """The label list of a request (a :class:`LabelSet` passes through unchanged).

        A closed card accepts a subset of its labels; an open card (:attr:`TaskCard.open_labels`) accepts any
        valid names, at most :data:`MAX_REQUEST_LABELS`, with optional descriptions (a card label keeps the
        card's description unless the request gives one).
        """
        if isinstance(labels, LabelSet):
            return labels
        descriptions = dict(descriptions or {})
        if not labels:
            if descriptions:
                raise InputError("label_descriptions describe labels named in `labels`, which is empty")
            return self.card.labels
        names = list(dict.fromkeys(labels))
        if not self.card.open_labels:
            if descriptions:
                raise InputError("this model's task card has a closed label set: label descriptions are not accepted")
            unknown = [n for n in names if n not in self.card.labels]
            if unknown:
                shown = ", ".join(repr(_clip(n, 64)) for n in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
                raise InputError(f"unknown labels {shown} ({len(unknown)}); the task card's labels are "
                                 f"{', '.join(self.card.labels.names)}")
            return self.card.labels.subset(names)
        if len(names) > MAX_REQUEST_LABELS:
            raise InputError(f"{len(names)} labels requested; at most {MAX_REQUEST_LABELS} per request")
        stray = [n for n in descriptions if n not in names]
        if stray:
            raise InputError(f"label_descriptions names {_clip(stray[0], 64)!r}, which is not in `labels`")
        card = {lab.name: lab.description for lab in self.card.labels}
        out = []
        for name in names:
            desc = descriptions.get(name, card.get(name, ""))
            if len(desc) > MAX_LABEL_DESCRIPTION_CHARS or any(unicodedata.category(c) == "Cc" for c in desc):
                raise InputError(f"the description of label {_clip(name, 64)!r} must be at most "
                                 f"{MAX_LABEL_DESCRIPTION_CHARS} characters without control characters")
            try:
                out.append(Label(name, desc))
            except ValueError:
                raise InputError(f"invalid label name {_clip(name, 64)!r}: use 1-64 characters, a letter first, then "
                                 "letters, digits, '_', '-' or '.'") from None
        return LabelSet(tuple(out))

    def prepare(self, text: str, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None) -> Any:
        """Validate one text and do the work its extraction needs before the engine (done once per text: pass the
        result to :meth:`extract` as ``prepared``)."""
        raise NotImplementedError

    async def extract(self, text: str, *, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None,
                      request_id: str | None = None, prepared: Any = None) -> ExtractionResult:
        """Extract from one text; ``prepared``, when given, is what :meth:`prepare` returned for the same text,
        labels and ``max_entities``."""
        raise NotImplementedError

    async def extract_many(self, texts: Sequence[str], *, labels: Sequence[str] | LabelSet | None = None,
                           max_entities: int | None = None,
                           on_result: Callable[[int, ExtractionResult], None] | None = None,
                           prepared: Sequence[Any] | None = None) -> list[ExtractionResult]:
        """Submit all texts at once (the engine batches them) and return results in input order.

        Every text is validated (prepared) before anything is submitted, so a bad input fails the call as a whole;
        ``prepared`` passes what :meth:`prepare` already returned for each text.
        """
        if prepared is None:
            prepared = [self.prepare(t, labels, max_entities) for t in texts]

        async def one(i: int, t: str) -> ExtractionResult:
            r = await self.extract(t, labels=labels, max_entities=max_entities, prepared=prepared[i])
            if on_result is not None:
                on_result(i, r)
            return r

        tasks = [asyncio.ensure_future(one(i, t)) for i, t in enumerate(texts)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise


class Extractor(ExtractorBase):
    """Entity extraction over one engine and one task card."""

    def __init__(self, engine: VllmEngine, card: TaskCard, *, limits: Limits | None = None, constrained: bool = True,
                 grounded: bool = False):
        """``constrained=False`` decodes without a schema (benchmarks only); ``grounded=True`` decodes under a
        per-request grammar whose entity texts can only be substrings of the input (xgrammar only)."""
        check_chat_template(card, engine.tokenizer)
        if grounded and engine.config.structured_backend != "xgrammar":
            raise ValueError("grounded decoding needs the xgrammar structured-output backend")
        worst = output_spec(card.labels, card.bounds, answer_format=answer_format(card)).max_tokens
        if worst + 256 > engine.max_model_len:
            raise ValueError(
                f"max_model_len {engine.max_model_len} is too small for the task card's bounds: the longest answer"
                f" ({card.bounds.max_entities} entities of {card.bounds.max_entity_chars} characters) needs {worst}"
                " tokens plus the prompt; raise max_model_len or lower the bounds")
        self.engine = engine
        self.card = card
        self.limits = limits or Limits()
        self.constrained = constrained
        self.grounded = grounded
        self.answer_format = answer_format(card)
        self._schemas_seen: OrderedDict[str, None] = OrderedDict()
        self._schema_budget = SchemaBudget(self.limits.new_schemas_per_minute)

    def prepare(self, text: str, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None) -> Prepared:
        _check_text(text, self.limits)
        if max_entities is not None and max_entities < 1:
            raise InputError("max_entities must be positive")
        label_set = self.labels_for(labels)
        spec = output_spec(label_set, self.card.bounds, text, max_entities,
                           items_in_schema=self.engine.config.structured_backend != "outlines",
                           answer_format=self.answer_format)
        prompt = render_prompt(self.engine.tokenizer, self.card, text, label_set)
        ids = self.engine.tokenizer.encode(prompt, add_special_tokens=False)
        budget = self.engine.max_model_len - len(ids)
        if budget < spec.max_tokens:
            raise InputError(
                f"text too long for the model context: {len(ids)} prompt tokens + {spec.max_tokens} answer tokens"
                f" exceed max_model_len {self.engine.max_model_len}"
            )
        if self.grounded:
            grammar, max_tokens = grounded_grammar(text, label_set, self.card.bounds, max_entities, self.answer_format)
            # Entity texts here are bounded by the input, not by max_entity_chars: for long inputs the worst case
            # exceeds the context, and the answer gets what is left (it parses unless a model fills it all).
            return Prepared(GenerationRequest(ids, None, min(max_tokens, budget), grammar), None, label_set)
        if not self.constrained:  # no finite language to bound: cap like a plain chat completion would
            return Prepared(GenerationRequest(ids, None, min(spec.max_tokens, UNCONSTRAINED_MAX_TOKENS)), spec, label_set)
        return Prepared(GenerationRequest(ids, spec.schema, spec.max_tokens), spec, label_set)

    def finish(self, text: str, prepared: Prepared, out: GenerationOutput, started: float,
               new_schema: bool = False) -> ExtractionResult:
        usage = Usage(out.prompt_tokens, out.completion_tokens, out.queue_seconds, out.engine_seconds,
                      time.perf_counter() - started, out.cached_prompt_tokens)
        try:
            mentions = parse_answer(out.text, prepared.labels.names, self.answer_format)
        except AnswerParseError:
            return ExtractionResult([], out.text, False, finish_reason=out.finish_reason, usage=usage,
                                    new_schema=new_schema)
        g = ground(text, mentions)
        return ExtractionResult(g.entities, out.text, True, g.hallucinated, g.duplicates, out.finish_reason, usage,
                                new_schema)

    async def extract(self, text: str, *, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None,
                      request_id: str | None = None, prepared: Prepared | None = None) -> ExtractionResult:
        started = time.perf_counter()
        if prepared is None:
            prepared = self.prepare(text, labels, max_entities)
        new_schema = prepared.request.grammar is not None  # grounded grammars are compiled per request
        if prepared.request.schema is not None and prepared.spec is not None:
            key = prepared.spec.key
            new_schema = key not in self._schemas_seen
            if new_schema and not self._schema_budget.take():
                raise SchemaBudgetExceeded(
                    f"more than {self.limits.new_schemas_per_minute} new output schemas (label sets and bounds) in"
                    " the last minute, each a grammar compilation; retry later or reuse label sets")
            self._schemas_seen[key] = None
            self._schemas_seen.move_to_end(key)
            if len(self._schemas_seen) > SCHEMAS_REMEMBERED:
                self._schemas_seen.popitem(last=False)
        out = await self.engine.generate(prepared.request, request_id)
        return self.finish(text, prepared, out, started, new_schema)

    async def warm_up(self) -> None:
        """One generation per input-length bucket, so common grammars are compiled before traffic."""
        probe = "Warm-up sentence: Alice Smith visited Paris."
        lengths = sorted({min(self.card.bounds.max_entity_chars, n) for n in (16, 32, 48, 64)})
        await asyncio.gather(*(self.extract((probe * 4)[:n]) for n in lengths))


@dataclass(slots=True)
class EvaluationResult:
    report: ScoreReport
    latencies: list[float]
    predictions: list[ExtractionResult]


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

    It keeps the :class:`~ner.scoring.Scorer` counts, the latencies and token counts, and, with
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
        self.scorer.add(gold.entities, r.entities, parsed=r.parsed, hallucinated=[m.label for m in r.hallucinated])
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


async def evaluate(extractor: ExtractorBase, examples: Sequence[Example], *,
                   on_progress: Callable[[int, int], None] | None = None,
                   labels: Sequence[str] | LabelSet | None = None) -> EvaluationResult:
    """Score the extractor on gold examples with the shared scorer (strict span P/R/F1).

    ``labels`` is the label list every prompt names and the labels scored (default: the card's).
    """
    label_set = extractor.labels_for(labels)
    scorer = Scorer(labels=label_set.names)
    done = 0

    def tick(i: int, r: ExtractionResult) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, len(examples))

    results = await extractor.extract_many([e.text for e in examples], on_result=tick, labels=label_set)
    for ex, r in zip(examples, results, strict=True):
        scorer.add(ex.entities, r.entities, parsed=r.parsed, hallucinated=[m.label for m in r.hallucinated])
    return EvaluationResult(scorer.report(), [r.usage.total_seconds for r in results], results)


async def evaluate_with_progress(extractor: ExtractorBase, examples: Sequence[Example],
                                 console: Any = None, labels: Sequence[str] | LabelSet | None = None) -> EvaluationResult:
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
                              labels=labels)


def load_card(model_dir: str | Path, task: str | None = None) -> TaskCard:
    """The checkpoint's task card, or a preset (``cluener``/``conll2003``) or card file named by ``task``."""
    if task:
        p = Path(task)
        if p.is_file():
            import json

            try:
                card = TaskCard.from_dict(json.loads(p.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}: invalid task card: {exc}") from exc
        elif p.is_dir():
            card = TaskCard.load(p)
        else:
            card = TaskCard.preset(task)
        # A preset applied to a checkpoint adopts the checkpoint's own chat template pin, if any.
        own = Path(model_dir) / "nerve_task.json"
        if card.chat_template_sha256 is None and own.is_file():
            from dataclasses import replace

            card = replace(card, chat_template_sha256=TaskCard.load(model_dir).chat_template_sha256)
        return card
    return TaskCard.load(model_dir)


def run_sync(coro_factory: Callable[[VllmEngine], Any], engine_config: EngineConfig) -> Any:
    """Start an engine, run ``coro_factory(engine)`` to completion, and shut the engine down."""

    async def main() -> Any:
        engine = await VllmEngine.start(engine_config)
        try:
            return await coro_factory(engine)
        finally:
            engine.close()

    return asyncio.run(main())


def run_with_extractor(body: Callable[[Any], Any], engine_config: EngineConfig, card: TaskCard, *,
                       limits: Limits | None = None, grounded: bool = False) -> Any:
    """Load ``engine_config.model`` and run ``body(extractor)`` to completion, then release the engine.

    A token-classification checkpoint (``nerve tune --method token-cls``) gets the encoder engine and its
    extractor, anything else vLLM and :class:`Extractor`; both have the same interface.
    """
    from .encoder_engine import EncoderConfig, EncoderEngine, EncoderExtractor, is_encoder_checkpoint

    async def main() -> Any:
        if is_encoder_checkpoint(engine_config.model):
            if grounded:
                raise ValueError("grounded decoding applies to generative models, not to a token classifier")
            engine: Any = await EncoderEngine.start(EncoderConfig(model=engine_config.model))
            extractor: Any = EncoderExtractor(engine, card, limits=limits)
        else:
            engine = await VllmEngine.start(engine_config)
            extractor = Extractor(engine, card, limits=limits, grounded=grounded)
        try:
            return await body(extractor)
        finally:
            engine.close()

    return asyncio.run(main())


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
