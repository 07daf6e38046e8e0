"""``nerve data report``: entity counts and token lengths of a dataset for a model, either kind of model.

It sits above :mod:`nerve.tuning.data` (causal-LM encoding) and :mod:`nerve.tuning.encoder` (token-classification encoding),
which both report through :class:`nerve.tuning.data.DataReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nerve.ner.card import CARD_FILENAME, TaskCard
from nerve.ner.types import Example

from .config import DataArgs
from .data import (
    DataReport,
    encode_causal,
    end_of_turn,
    generation_eos_ids,
    load_examples,
    report_causal,
    resolve_card,
    restrict_labels,
)
from .encoder import report_token_cls
from .export import merge_adapter


def data_report(
    data: str | Path | Sequence[Example],
    model: str | Path,
    *,
    task: str | None = None,
    card: TaskCard | None = None,
    kind: str = "causal-lm",
    format: str = "auto",
    max_length: int | None = None,
    length_percentile: float = 99.0,
    overlength: str = "drop",
    split: str | None = None,
    allow_empty: bool = False,
) -> DataReport:
    """Entity counts and token lengths of a dataset for a model (``nerve data report``).

    ``data`` is a dataset file or examples; ``model`` a nerve model name or checkpoint folder; the labels come
    from ``card``, else ``task`` (preset or card path), else the model's own card, else the data. ``kind`` is
    ``causal-lm`` (prompt + completion tokens through the chat template) or ``token-cls`` (encoder tokens).
    A dataset file without any entity raises :class:`nerve.ner.readers.NoEntitiesError` unless ``allow_empty``.
    """
    from transformers import AutoTokenizer

    from nerve.models import resolve_model

    if isinstance(data, str | Path):
        split = split or Path(str(data)).name
        examples = load_examples(data, format, allow_empty=allow_empty)
    else:
        examples = list(data)
        split = split or "examples"
    model_dir = resolve_model(str(model), merge=merge_adapter)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = DataArgs(train_file="-", task=task, max_length=max_length, length_percentile=length_percentile,
                    overlength=overlength, unknown_labels="drop")
    if card is None:
        base = TaskCard.load(model_dir) if (model_dir / CARD_FILENAME).is_file() else None
        card = resolve_card(args, examples, base_card=base) if (task or base is None) else base
    examples, dropped = restrict_labels(examples, card.labels.names, "drop", split)
    if kind == "token-cls":
        return report_token_cls(split, examples, tokenizer, card, args, dropped_entities=dropped)
    eot = end_of_turn(tokenizer, card, generation_eos_ids(model_dir))
    encoded = encode_causal(tokenizer, card, examples, eot)
    return report_causal(split, examples, encoded, card, args, dropped_entities=dropped)
