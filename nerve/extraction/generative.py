"""Extraction with a causal LM: prompt, bounded schema, constrained decoding, parsing, grounding.

:class:`Extractor` validates the input, renders the prompt with the checkpoint's own chat template
(:func:`nerve.ner.prompts.render_prompt`, the function tuning uses), builds the bounded output schema, runs the
engine, parses the answer and grounds each mention in the text.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from nerve.engines.vllm import GenerationOutput, GenerationRequest, VllmEngine
from nerve.ner.card import TaskCard
from nerve.ner.grounded import grounded_grammar
from nerve.ner.labels import LabelSet
from nerve.ner.parsing import AnswerParseError, ground, mention_scores, parse_answer
from nerve.ner.prompts import answer_format, check_chat_template, render_prompt
from nerve.ner.schema import OutputSpec, output_spec

from .base import ExtractionResult, ExtractorBase, InputError, Limits, Prepared, Usage

UNCONSTRAINED_MAX_TOKENS = 256
"""Token budget of unconstrained decoding (benchmarks only), the same as the transformers baseline's."""

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
class GenerationPrepared(Prepared):
    """A text ready for the engine: its prompt tokens, answer bound and schema or grammar."""

    request: GenerationRequest
    spec: OutputSpec | None


class Extractor(ExtractorBase):
    """Entity extraction over one engine and one task card."""

    def __init__(self, engine: VllmEngine, card: TaskCard, *, limits: Limits | None = None, constrained: bool = True,
                 grounded: bool = False):
        """``constrained=False`` decodes without a schema (benchmarks only); ``grounded=True`` decodes under a
        per-request grammar whose entity texts can only be substrings of the input (xgrammar only)."""
        check_chat_template(card, engine.tokenizer)
        if grounded and engine.structured_backend != "xgrammar":
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
        self.gives_scores = constrained or grounded
        self.answer_format = answer_format(card)
        self._schemas_seen: OrderedDict[str, None] = OrderedDict()
        self._schema_budget = SchemaBudget(self.limits.new_schemas_per_minute)

    def prepare(self, text: str, labels: Sequence[str] | LabelSet | None = None,
                max_entities: int | None = None) -> GenerationPrepared:
        self.check(text, max_entities)
        label_set = self.labels_for(labels)
        spec = output_spec(label_set, self.card.bounds, text, max_entities,
                           items_in_schema=self.engine.structured_backend != "outlines",
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
            return GenerationPrepared(label_set, GenerationRequest(ids, None, min(max_tokens, budget), grammar,
                                                                   logprobs=True), None)
        if not self.constrained:  # no finite language to bound: cap like a plain chat completion would
            return GenerationPrepared(label_set, GenerationRequest(ids, None, min(spec.max_tokens, UNCONSTRAINED_MAX_TOKENS)),
                                      spec)
        return GenerationPrepared(label_set, GenerationRequest(ids, spec.schema, spec.max_tokens, logprobs=True), spec)

    def finish(self, text: str, prepared: GenerationPrepared, out: GenerationOutput, started: float,
               new_schema: bool = False) -> ExtractionResult:
        usage = Usage(out.prompt_tokens, out.completion_tokens, out.queue_seconds, out.engine_seconds,
                      time.perf_counter() - started, out.cached_prompt_tokens)
        try:
            mentions = parse_answer(out.text, prepared.labels.names, self.answer_format)
        except AnswerParseError:
            return ExtractionResult([], out.text, False, finish_reason=out.finish_reason, usage=usage,
                                    new_schema=new_schema)
        if out.token_logprobs is not None and out.token_ends is not None:
            scores = mention_scores(out.text, self.answer_format, out.token_logprobs, out.token_ends)
            if len(scores) == len(mentions):
                mentions = [replace(m, score=s) for m, s in zip(mentions, scores, strict=True)]
        g = ground(text, mentions)
        return ExtractionResult(g.entities, out.text, True, g.hallucinated, g.duplicates, out.finish_reason, usage,
                                new_schema)

    async def extract(self, text: str, *, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None,
                      request_id: str | None = None, prepared: GenerationPrepared | None = None) -> ExtractionResult:
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


