"""Extraction with a token classifier: the tagger's word spans are the entities, grounded by construction.

Nothing is generated, so nothing is parsed; the answer's ``raw`` is the same compact JSON a generative model
would write, for clients that read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from nerve.engines.encoder import EncoderEngine
from nerve.ner.card import TaskCard
from nerve.ner.labels import LabelSet

from .base import ExtractionResult, ExtractorBase, Limits, Prepared, Usage


class TaggerExtractor(ExtractorBase):
    """Extraction with an :class:`~nerve.engines.encoder.EncoderEngine` (a token classifier)."""

    grounded = False
    constrained = False

    def __init__(self, engine: EncoderEngine, card: TaskCard, *, limits: Limits | None = None) -> None:
        unknown = [name for name in card.labels.names if name not in engine.labels]
        if unknown:
            raise ValueError(f"the task card names labels the tagger was not trained on: {', '.join(unknown)}")
        self.engine = engine
        self.card = card
        self.limits = limits or Limits()

    def prepare(self, text: str, labels: Sequence[str] | LabelSet | None = None,
                max_entities: int | None = None) -> Prepared:
        self.check(text, max_entities)
        return Prepared(self.labels_for(labels))

    async def extract(self, text: str, *, labels: Sequence[str] | LabelSet | None = None, max_entities: int | None = None,
                      request_id: str | None = None, prepared: Prepared | None = None) -> ExtractionResult:
        started = time.perf_counter()
        wanted = set((prepared if prepared is not None else self.prepare(text, labels, max_entities)).labels.names)
        entities, queued, took = await self.engine.tag(text)
        entities = [e for e in entities if e.label in wanted]
        limit = max_entities or self.card.bounds.max_entities
        entities = entities[:limit]
        raw = json.dumps({"entities": [{"label": e.label, "text": e.text} for e in entities]}, ensure_ascii=False,
                         separators=(",", ":"))
        usage = Usage(prompt_tokens=len(self.engine.tokenizer.tokenize(text)), completion_tokens=0,
                      queue_seconds=queued, engine_seconds=took, total_seconds=time.perf_counter() - started)
        return ExtractionResult(entities, raw, True, finish_reason="stop", usage=usage)

    async def warm_up(self) -> None:
        await self.extract("Warm-up sentence: Alice Smith visited Paris.")
