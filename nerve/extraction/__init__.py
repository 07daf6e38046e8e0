"""The extraction layer: texts in, grounded entities out, over any engine (:mod:`nerve.engines`).

* :mod:`~nerve.extraction.base` — the extractor interface, requests, results, limits.
* :mod:`~nerve.extraction.generative` — a causal LM under the task's bounded JSON schema.
* :mod:`~nerve.extraction.tagging` — a token classifier.
* :mod:`~nerve.extraction.evaluation` — scoring against gold examples (one scorer for every caller).
* :mod:`~nerve.extraction.loading` — task cards, and the one choice of engine for a checkpoint.

The server, the CLI, the benchmarks and tuning's evaluation all go through this package; it imports neither
the server nor tuning.
"""

from .base import (
    MAX_LABEL_DESCRIPTION_CHARS,
    MAX_REQUEST_LABELS,
    ExtractionResult,
    ExtractorBase,
    InputError,
    Limits,
    Prepared,
    Usage,
)
from .evaluation import (
    CheckpointScore,
    EvaluationResult,
    Mistakes,
    Progress,
    RunningScore,
    evaluate,
    evaluate_checkpoint,
    evaluate_with_progress,
    score_stream,
)
from .generative import (
    SCHEMAS_REMEMBERED,
    UNCONSTRAINED_MAX_TOKENS,
    Extractor,
    GenerationPrepared,
    SchemaBudget,
    SchemaBudgetExceeded,
)
from .loading import load_card, open_extractor, run_sync, run_with_extractor
from .tagging import TaggerExtractor

__all__ = [
    "MAX_LABEL_DESCRIPTION_CHARS", "MAX_REQUEST_LABELS", "SCHEMAS_REMEMBERED", "UNCONSTRAINED_MAX_TOKENS",
    "CheckpointScore", "EvaluationResult", "ExtractionResult", "Extractor", "ExtractorBase", "GenerationPrepared",
    "InputError", "Limits", "Mistakes", "Prepared", "Progress", "RunningScore", "SchemaBudget", "SchemaBudgetExceeded",
    "TaggerExtractor", "Usage", "evaluate", "evaluate_checkpoint", "evaluate_with_progress", "load_card",
    "open_extractor", "run_sync", "run_with_extractor", "score_stream",
]
