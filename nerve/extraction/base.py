"""What every extractor has in common: requests, results, limits and the extractor interface.

An extractor turns texts into grounded entities over one engine and one task card. Two implement
:class:`ExtractorBase`: :class:`nerve.extraction.generative.Extractor` (a causal LM decoded under the task's
JSON schema) and :class:`nerve.extraction.tagging.TaggerExtractor` (a token classifier). Callers validate and
prepare each text once (:meth:`ExtractorBase.prepare`), then extract with what was prepared.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nerve.engines.base import Engine
from nerve.ner.card import TaskCard
from nerve.ner.labels import Label, LabelSet
from nerve.ner.parsing import Mention
from nerve.ner.types import Entity

MAX_REQUEST_LABELS = 32
"""Most labels one request may name when the card has open labels."""
MAX_LABEL_DESCRIPTION_CHARS = 200


def _clip(s: str, n: int) -> str:
    """``s`` cut to ``n`` characters (for echoing client input in error messages)."""
    return s if len(s) <= n else s[: n - 1] + "…"


class InputError(ValueError):
    """The request is invalid (maps to INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_chars: int = 4000
    new_schemas_per_minute: int = 0
    """Most output schemas not seen before (label subsets × bounds) per minute, each a grammar compilation
    in the engine; beyond it such requests get :class:`~nerve.extraction.generative.SchemaBudgetExceeded`.
    0: no limit."""


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
    """What an extractor made of one text before the engine (see :meth:`ExtractorBase.prepare`)."""

    labels: LabelSet
    """The labels the request asks for."""


class ExtractorBase:
    """What every extractor shares: label lists, input checks and concurrent extraction of many texts.

    Subclasses have ``card`` and ``engine`` (an :class:`~nerve.engines.base.Engine`) and implement
    :meth:`prepare` (validation and all the work before the engine, done once per text) and :meth:`extract`.
    """

    card: TaskCard
    engine: Engine
    limits: Limits
    gives_scores: bool = False
    """Whether extracted entities carry :attr:`Entity.score` (see :func:`nerve.ner.parsing.mention_scores`)."""

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

    def check(self, text: str, max_entities: int | None) -> None:
        """Raise :class:`InputError` unless ``text`` and ``max_entities`` are acceptable (cheap: no tokenizer)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("text is empty or whitespace only")
        if len(text) > self.limits.max_text_chars:
            raise InputError(f"text has {len(text)} characters; the limit is {self.limits.max_text_chars}")
        if any(unicodedata.category(ch) == "Cs" for ch in text):
            raise InputError("text contains unpaired surrogate code points")
        if max_entities is not None and max_entities < 1:
            raise InputError("max_entities must be positive")

    def prepare(self, text: str, labels: Sequence[str] | LabelSet | None = None,
                max_entities: int | None = None) -> Prepared:
        """Validate one text and do the work its extraction needs before the engine (done once per text: pass the
        result to :meth:`extract` as ``prepared``)."""
        raise NotImplementedError

    async def warm_up(self) -> None:
        """Run what the first requests would otherwise wait for (grammar compilation, first forward pass)."""
        raise NotImplementedError

    async def extract(self, text: str, *, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None,
                      request_id: str | None = None, prepared: Prepared | None = None) -> ExtractionResult:
        """Extract from one text; ``prepared``, when given, is what :meth:`prepare` returned for the same text,
        labels and ``max_entities``."""
        raise NotImplementedError

    async def extract_many(self, texts: Sequence[str], *, labels: Sequence[str] | LabelSet | None = None,
                           max_entities: int | None = None,
                           on_result: Callable[[int, ExtractionResult], None] | None = None,
                           prepared: Sequence[Prepared] | None = None) -> list[ExtractionResult]:
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
