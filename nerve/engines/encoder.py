"""Serving a token-classification checkpoint (``nerve tune --method token-cls``) behind the same API.

An encoder tags a whole batch in one forward pass, but unlike vLLM it has no scheduler of its own, so
:class:`EncoderEngine` puts a small micro-batcher in front of it: requests wait in a queue; one worker takes up
to ``max_batch`` of them (waiting at most ``max_wait_ms`` after the first one for more to arrive), runs one
forward pass in a worker thread and resolves each request with its entities. A request cancelled while it
waits is skipped, so it never costs a forward pass.

A failure fails only the requests it concerns: when a batched forward pass raises, its texts are tagged again
one by one, so that only the text that fails gets the exception; any other exception in the worker fails the
requests it holds and the worker goes on with the next batch. Should the worker's task still end other than
by :meth:`EncoderEngine.close`, the engine is :attr:`~EncoderEngine.dead`: the requests it held and every later
call fail at once with :class:`~nerve.engines.base.EngineDead`, and the server's watchdog turns health
NOT_SERVING.

:class:`nerve.extraction.tagging.TaggerExtractor` extracts through it with the interface of the generative
extractor; entities come straight from the tagger's word spans, so they are always grounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nerve.hardware import DtypeChoice
from nerve.ner.card import ENCODER_FILENAME
from nerve.ner.types import Entity

from .base import EngineDead, EngineError

log = logging.getLogger("nerve.encoder")

BATCH_SIZE_HISTORY = 1024
"""How many of the most recent forward passes :attr:`EncoderEngine.batch_sizes` keeps."""


def is_encoder_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a token-classification checkpoint saved by ``nerve tune``/``nerve export``."""
    return (Path(path) / ENCODER_FILENAME).is_file()


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    model: str
    max_batch: int = 32
    max_wait_ms: float = 5.0
    device: str = "cpu"


@dataclass(slots=True)
class _Pending:
    text: str
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class EncoderEngine:
    """A token-classification model with a micro-batcher (one forward pass per batch, in a worker thread)."""

    def __init__(self, config: EncoderConfig, tagger_extractor) -> None:
        import transformers

        self.config = config
        self._model = tagger_extractor
        self.tokenizer = tagger_extractor.tokenizer
        self.version = f"nerve-encoder (transformers {transformers.__version__})"
        self.dtype = DtypeChoice("float32", "token-classification checkpoints run in float32")
        self.max_model_len = tagger_extractor.max_length
        self.batches = 0
        """Forward passes that succeeded (a batch tagged again text by text counts once per text)."""
        self.batch_sizes: deque[int] = deque(maxlen=BATCH_SIZE_HISTORY)
        """Texts in each of the most recent successful forward passes, oldest first."""
        self.failed_batches = 0
        """Batched forward passes that raised (their texts were then tagged one by one)."""
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._current: list[_Pending] = []
        """Requests the worker has taken off the queue and not resolved yet."""
        self._worker: asyncio.Task | None = None
        self._closed = False
        self._busy_since: float | None = None
        """When the forward pass now running started (None between passes)."""

    @classmethod
    async def start(cls, config: EncoderConfig) -> EncoderEngine:
        from .token_tagger import Tagger

        if not is_encoder_checkpoint(config.model):
            raise FileNotFoundError(f"{config.model}: not a token-classification checkpoint (no {ENCODER_FILENAME})")
        model = await asyncio.to_thread(Tagger, config.model, device=config.device, batch_size=config.max_batch)
        engine = cls(config, model)
        engine._worker = asyncio.ensure_future(engine._run())
        engine._worker.add_done_callback(engine._worker_ended)
        log.info("encoder engine ready: %s (%d tags, max batch %d, wait %.1f ms)", config.model, len(model.tags),
                 config.max_batch, config.max_wait_ms)
        return engine

    @property
    def labels(self) -> list[str]:
        return self._model.labels

    structured_backend = "none"
    """Nothing is decoded, so nothing is constrained."""

    @property
    def capacity(self) -> int:
        return self.config.max_batch

    def stalled(self, seconds: float) -> bool:
        """True when a forward pass has held requests for ``seconds`` (a hung tagger)."""
        since = self._busy_since
        return since is not None and time.perf_counter() - since > seconds

    @property
    def dead(self) -> bool:
        """True once the worker's task has ended other than by :meth:`close` (no call would be served)."""
        return not self._closed and self._worker is not None and self._worker.done()

    @property
    def death(self) -> str:
        """What stopped the engine, for the server's log (meaningful once :attr:`dead`)."""
        return f"the encoder engine's worker has stopped ({self._why_dead()})"

    def _why_dead(self) -> str:
        task = self._worker
        if task is None or not task.done():
            return "running"
        if task.cancelled():
            return "its task was cancelled"
        exc = task.exception()
        return f"{type(exc).__name__}: {exc}" if exc is not None else "its task returned"

    async def check_health(self) -> None:
        """Raise :class:`EngineDead` when the worker has stopped, :class:`EngineError` when the engine is closed."""
        if self._closed:
            raise EngineError("the encoder engine is closed")
        if self.dead:
            raise EngineDead(f"the encoder engine's worker has stopped ({self._why_dead()})")

    async def tag(self, text: str) -> tuple[list[Entity], float, float]:
        """Entities of ``text`` with the seconds it waited for a batch and the seconds its batch took."""
        await self.check_health()
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(text, fut))
        return await fut

    async def _next_batch(self) -> list[_Pending]:
        """Requests for the next forward pass, also kept in ``_current`` so that a failure can reach them."""
        batch = self._current = [await self._queue.get()]
        deadline = time.perf_counter() + self.config.max_wait_ms / 1000
        while len(batch) < self.config.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                while len(batch) < self.config.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        self._current = [p for p in batch if not p.future.done()]  # cancelled while waiting: no forward pass
        return self._current

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                if batch:
                    await self._serve(batch)
            except Exception as exc:  # a bug outside the forward pass: fail what it concerns, keep serving
                log.exception("the encoder worker failed with %d requests in hand; it goes on", len(self._current))
                _fail(self._current, exc)
            self._current = []

    async def _serve(self, batch: list[_Pending]) -> None:
        """Tag ``batch`` in one forward pass; if that raises, tag its texts one by one."""
        try:
            await self._forward(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                log.warning("tagging a text failed: %s: %s", type(exc).__name__, exc)
                _fail(batch, exc)
                return
            self.failed_batches += 1
            log.warning("a forward pass over %d texts failed (%s: %s); tagging them one by one", len(batch),
                        type(exc).__name__, exc)
        for p in batch:
            if p.future.done():  # cancelled meanwhile
                continue
            try:
                await self._forward([p])
            except Exception as exc:
                log.warning("tagging a text failed: %s: %s", type(exc).__name__, exc)
                _fail([p], exc)

    async def _forward(self, batch: list[_Pending]) -> None:
        """One forward pass over ``batch``, then each request resolved; raises, resolving none, on failure."""
        started = self._busy_since = time.perf_counter()
        try:
            entities = await asyncio.to_thread(self._model.extract, [p.text for p in batch])
        finally:
            self._busy_since = None
        if len(entities) != len(batch):
            raise EngineError(f"the tagger returned {len(entities)} results for {len(batch)} texts")
        took = time.perf_counter() - started
        self.batches += 1
        self.batch_sizes.append(len(batch))
        for p, ents in zip(batch, entities, strict=True):
            if not p.future.done():
                p.future.set_result((ents, started - p.enqueued, took))

    def _worker_ended(self, task: asyncio.Task) -> None:
        if self._closed:
            error: EngineError = EngineError("the encoder engine closed")
        else:
            why = self._why_dead()
            log.error("the encoder engine's worker has stopped (%s); the engine serves no more calls", why,
                      exc_info=None if task.cancelled() else task.exception())
            error = EngineDead(f"the encoder engine's worker has stopped ({why})")
        self._fail_all(error)

    def _fail_all(self, error: EngineError) -> None:
        """Fail the requests the worker holds and those still queued."""
        _fail(self._current, error)
        self._current = []
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], error)

    def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
        self._fail_all(EngineError("the encoder engine closed"))


def _fail(requests: Sequence[_Pending], exc: BaseException) -> None:
    for p in requests:
        if not p.future.done():
            p.future.set_exception(exc)
