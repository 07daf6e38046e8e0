"""Task-level evaluation during training: the dev set scored by the serving engine.

At every evaluation the model being trained is saved (adapter or full weights), exported to a temporary merged
checkpoint with :func:`nerve.tuning.export.export_checkpoint` (the same code as a real export, logits checked) and
scored by :func:`nerve.extraction.evaluate_checkpoint`: vLLM, constrained greedy decoding, strict span F1. So
the number that picks the best checkpoint is the number the service will deliver. A few dev prompts are also
decoded without the schema: ``stop_rate`` is the share whose answer parses and ends with the model's end token,
the check that training taught the model to stop.

When the engine cannot be imported (no vLLM here, or ``eval.with_engine: false``) the run evaluates dev loss
only and says so in one log line; the best checkpoint is then the one with the lowest dev loss.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nerve.ner.card import TaskCard
from nerve.ner.types import Example

from .encoder import summarize

logger = logging.getLogger("nerve.tuning")

EVAL_MAX_MODEL_LEN = 8192
"""Context length of the scoring engine (prompt + bounded answer; dev texts are short)."""


def engine_unavailable_reason() -> str | None:
    """Why :func:`nerve.extraction.evaluate_checkpoint` cannot be used here (None when it can)."""
    try:
        pipeline = importlib.import_module("nerve.extraction")
    except Exception as exc:  # ImportError, or vLLM failing at import time
        return f"nerve.extraction cannot be imported ({type(exc).__name__}: {exc})"
    if not hasattr(pipeline, "evaluate_checkpoint"):
        return "nerve.extraction has no evaluate_checkpoint"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    return None


class EngineEvaluator:
    """Scores a saved training model on dev examples through the serving engine (see the module docstring)."""

    needs_saved_model = True
    """The trainer saves the model (gathering sharded weights) and passes the folder to :meth:`__call__`."""

    def __init__(self, examples: Sequence[Example], card: TaskCard, *, limit: int | None,
                 export_dtype: str = "auto", progress: bool = True) -> None:
        self.examples = list(examples)[:limit] if limit else list(examples)
        self.card = card
        self.export_dtype = export_dtype
        self.progress = progress
        self.description = f"engine span F1 (vLLM, constrained greedy) on {len(self.examples)} dev examples"

    def __call__(self, saved: Path, step: int) -> dict[str, float]:
        from nerve.extraction import evaluate_checkpoint

        from .export import export_checkpoint

        merged = Path(saved).parent / "merged"
        try:
            export_checkpoint(saved, merged, self.card, dtype=self.export_dtype, progress=False)
            score = evaluate_checkpoint(merged, self.examples, card=TaskCard.load(merged), progress=self.progress,
                                        engine_config=self.engine_config(merged))
            metrics = summarize(score.report.to_dict())
            if score.stop_rate is not None:
                metrics["stop_rate"] = score.stop_rate
                if score.stop_rate < 0.9:
                    logger.warning("step %d: only %.0f%% of unconstrained answers parse and end with the end token;"
                                   " the model has not learnt to stop yet", step, 100 * score.stop_rate)
            return metrics
        finally:
            shutil.rmtree(merged, ignore_errors=True)


    @staticmethod
    def engine_config(model_dir: Path):
        """Engine settings for scoring: the context capped by the model's own limit (tiny models have small ones)."""
        import json

        from nerve.engines.vllm import EngineConfig

        config = json.loads((Path(model_dir) / "config.json").read_text())
        limit = config.get("max_position_embeddings") or EVAL_MAX_MODEL_LEN
        return EngineConfig(model=str(model_dir), max_model_len=max(256, min(EVAL_MAX_MODEL_LEN, int(limit))),
                            kv_cache_gb=1.0)


def failed_metrics(exc: BaseException) -> dict[str, Any]:
    """Metrics recorded when an evaluation failed: never the best checkpoint, and visible in the logs."""
    logger.error("task evaluation failed (%s: %s); recording micro_f1 = -1 for this checkpoint",
                 type(exc).__name__, exc)
    return {"micro_f1": -1.0, "macro_f1": -1.0, "exact_match": -1.0, "eval_failed": 1.0}
