"""Loading a model for extraction: its task card, the engine it needs and an extractor on that engine.

:func:`open_extractor` is the one place that chooses the engine: a token-classification checkpoint
(``nerve tune --method token-cls``) gets the encoder engine and :class:`~nerve.extraction.tagging.TaggerExtractor`,
anything else vLLM and :class:`~nerve.extraction.generative.Extractor`. The server, the CLI and the
benchmarks load models through it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nerve.engines.encoder import EncoderConfig, EncoderEngine, is_encoder_checkpoint
from nerve.engines.vllm import EngineConfig, VllmEngine
from nerve.ner.card import CARD_FILENAME, TaskCard

from .base import ExtractorBase, Limits
from .generative import Extractor
from .tagging import TaggerExtractor


def load_card(model_dir: str | Path, task: str | None = None) -> TaskCard:
    """The checkpoint's task card, or a preset (``cluener``/``conll2003``) or card file named by ``task``."""
    if task:
        p = Path(task)
        if p.is_file():
            try:
                card = TaskCard.from_dict(json.loads(p.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}: invalid task card: {exc}") from exc
        elif p.is_dir():
            card = TaskCard.load(p)
        else:
            card = TaskCard.preset(task)
        # A preset applied to a checkpoint adopts the checkpoint's own chat template pin, if any.
        own = Path(model_dir) / CARD_FILENAME
        if card.chat_template_sha256 is None and own.is_file():
            card = replace(card, chat_template_sha256=TaskCard.load(model_dir).chat_template_sha256)
        return card
    return TaskCard.load(model_dir)


async def open_extractor(model_dir: str | Path, card: TaskCard, *, engine: EngineConfig | None = None,
                         encoder: EncoderConfig | None = None, limits: Limits | None = None,
                         grounded: bool = False) -> ExtractorBase:
    """Start the engine ``model_dir`` needs and return an extractor on it (release it with
    ``extractor.engine.close()``). ``engine`` and ``encoder`` are the settings of either engine; their
    ``model`` is replaced by ``model_dir``."""
    model = str(model_dir)
    if is_encoder_checkpoint(model):
        if grounded:
            raise ValueError("grounded decoding applies to generative models, not to a token classifier")
        tagger = await EncoderEngine.start(replace(encoder, model=model) if encoder else EncoderConfig(model=model))
        try:
            return TaggerExtractor(tagger, card, limits=limits)
        except BaseException:
            tagger.close()
            raise
    llm = await VllmEngine.start(replace(engine, model=model) if engine else EngineConfig(model=model))
    try:
        return Extractor(llm, card, limits=limits, grounded=grounded)
    except BaseException:
        llm.close()
        raise


def run_sync(coro_factory: Callable[[VllmEngine], Any], engine_config: EngineConfig) -> Any:
    """Start an engine, run ``coro_factory(engine)`` to completion, and shut the engine down."""

    async def main() -> Any:
        engine = await VllmEngine.start(engine_config)
        try:
            return await coro_factory(engine)
        finally:
            engine.close()

    return asyncio.run(main())


def run_with_extractor(body: Callable[[ExtractorBase], Awaitable[Any]], engine_config: EngineConfig, card: TaskCard, *,
                       limits: Limits | None = None, grounded: bool = False) -> Any:
    """Load ``engine_config.model`` (:func:`open_extractor`), run ``body(extractor)`` to completion, then release
    the engine."""

    async def main() -> Any:
        extractor = await open_extractor(engine_config.model, card, engine=engine_config, limits=limits,
                                         grounded=grounded)
        try:
            return await body(extractor)
        finally:
            extractor.engine.close()

    return asyncio.run(main())
