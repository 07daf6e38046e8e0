"""nerve's vLLM plugin: grammar bitmasks applied to CPU logits in their own dtype.

:func:`register_vllm_plugin` is a ``vllm.general_plugins`` entry point, so it runs in vLLM's engine and
worker processes. It replaces how grammar bitmasks are applied to the logits: vLLM's CPU path converts the
whole logits batch to float32, runs xgrammar's single-threaded kernel and converts back, 0.5 to 0.8 ms per
sequence per step over a 152k vocabulary at 8 to 64 sequences; nerve unpacks the bitmask with numpy and masks
the logits in their own dtype in one ``masked_fill_``, 6 to 10 times faster (``bench/bench_spine.py --stages
mask,overhead``). The result is bit-identical (``tests/nerve/test_cpu_grammar_mask.py``).
``EngineConfig.cpu_grammar_mask = "vllm"`` keeps vLLM's path; CUDA logits always take vLLM's kernel.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

CPU_GRAMMAR_MASKS: tuple[str, ...] = ("nerve", "vllm")
CPU_GRAMMAR_MASK_ENV = "NERVE_CPU_GRAMMAR_MASK"
"""Read by :func:`register_vllm_plugin` in vLLM's processes, which inherit it from the one starting the engine."""


def apply_bitmask_cpu(logits: Any, bitmask: Any, rows: list[int] | None = None) -> None:
    """Set to ``-inf`` the logits of the tokens each row's grammar bitmask blocks, in place.

    ``bitmask`` is xgrammar's int32 array, one row per masked logit row and bit ``t % 32`` of word ``t // 32``
    set when token ``t`` is allowed; ``rows`` are the logit rows it applies to (all, in order, when ``None``).
    Tokens past the bitmask's width stay allowed, as with xgrammar.
    """
    import numpy as np
    import torch

    vocab = logits.shape[-1]
    # Inverted words unpack straight to "blocked" bytes (0/1), which numpy can view as booleans.
    blocked = np.unpackbits(np.invert(np.ascontiguousarray(bitmask, dtype=np.int32)).view(np.uint8),
                            axis=1, count=vocab, bitorder="little").view(np.bool_)
    if rows is not None and rows != list(range(logits.shape[0])):
        full = np.zeros((logits.shape[0], vocab), dtype=np.bool_)
        full[rows] = blocked
        blocked = full
    logits.masked_fill_(torch.from_numpy(blocked), float("-inf"))


def _grammar_rows(scheduler_output: Any, grammar_output: Any, input_batch: Any) -> tuple[list[int], list[int]]:
    """(logit row, bitmask row) pairs for the structured requests of one step.

    The scheduler sends one bitmask row per structured request (plus one per speculative token), in its own
    order and only for structured requests; the logits have one row per request of the runner's batch plus
    one per speculative token, in the batch's order.
    """
    spec = scheduler_output.scheduled_spec_decode_tokens
    first_row: dict[str, int] = {}
    row = 0
    for req_id in input_batch.req_ids:
        first_row[req_id] = row
        row += 1 + len(spec.get(req_id, ()))
    logit_rows: list[int] = []
    mask_rows: list[int] = []
    k = 0
    for req_id in grammar_output.structured_output_request_ids:
        n = 1 + len(spec.get(req_id, ()))
        start = first_row.get(req_id)
        if start is not None:
            logit_rows.extend(range(start, start + n))
            mask_rows.extend(range(k, k + n))
        k += n
    return logit_rows, mask_rows


def _cpu_grammar_mask(vllm_apply: Any) -> Any:
    @functools.wraps(vllm_apply)
    def apply_grammar_bitmask(scheduler_output, grammar_output, input_batch, logits) -> None:
        if not logits.is_cpu:
            return vllm_apply(scheduler_output, grammar_output, input_batch, logits)
        logit_rows, mask_rows = _grammar_rows(scheduler_output, grammar_output, input_batch)
        if logit_rows:
            apply_bitmask_cpu(logits, grammar_output.grammar_bitmask[mask_rows], logit_rows)
        return None

    apply_grammar_bitmask.nerve_wraps = vllm_apply  # type: ignore[attr-defined]
    return apply_grammar_bitmask


def grammar_mask_functions() -> tuple[Any, Any]:
    """vLLM's function that applies one step's grammar bitmasks, and nerve's CPU replacement (tests, benchmarks).

    vLLM's is returned even where :func:`register_vllm_plugin` has already replaced it in this process.
    """
    from vllm.v1.structured_output import utils

    current = utils.apply_grammar_bitmask
    vllm_apply = getattr(current, "nerve_wraps", current)
    return vllm_apply, _cpu_grammar_mask(vllm_apply)


def register_vllm_plugin() -> None:
    """vLLM general plugin (entry point ``nerve_cpu_grammar_mask``): install nerve's CPU bitmask application.

    vLLM loads general plugins in each of its processes, possibly more than once; this is idempotent, and it
    changes nothing when :data:`CPU_GRAMMAR_MASK_ENV` says ``vllm`` or when vLLM's function is not the one
    this was written against (then vLLM's own path stays, and a warning says so).
    """
    if os.environ.get(CPU_GRAMMAR_MASK_ENV, "nerve") != "nerve":
        return
    try:
        from vllm.v1.structured_output import utils
    except ImportError:  # pragma: no cover - vLLM without the v1 structured-output module
        log.warning("nerve's CPU grammar mask is not installed: this vLLM has no v1 structured outputs")
        return
    current = utils.apply_grammar_bitmask
    if hasattr(current, "nerve_wraps"):
        return
    if list(inspect.signature(current).parameters) != ["scheduler_output", "grammar_output", "input_batch", "logits"]:
        log.warning("nerve's CPU grammar mask is not installed: vLLM's apply_grammar_bitmask has changed")
        return
    patched = _cpu_grammar_mask(current)
    utils.apply_grammar_bitmask = patched
    # The model runner imports the function by name; patch its copy if it is already imported.
    runner = sys.modules.get("vllm.v1.worker.gpu_model_runner")
    if runner is not None and getattr(runner, "apply_grammar_bitmask", None) is current:
        runner.apply_grammar_bitmask = patched
