"""Training the token-classification baseline: an encoder (e.g. MiniLM) tags words with BIO labels.

* Alignment: tags come from an example's character-offset entities through the tokenizer's words
  (:func:`nerve.engines.token_tagger.words_of`): a word that starts an entity is ``B-X``, a word inside one
  ``I-X``; the other sub-tokens get no tag (no loss, no prediction). Entities that do not start and end on word
  boundaries, or overlap an earlier entity, cannot be tagged: they are counted in the data report.
* :func:`build_tagger`: a fresh classifier (softmax or CRF head) on the encoder, optionally LoRA-wrapped
  (``TaskType.TOKEN_CLS``; the classifier stays fully trainable).
* :class:`TaggerEvaluator`: span F1 of the model being trained, in process.

The model, its checkpoint format and its inference are :mod:`nerve.engines.token_tagger`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nerve.engines.crf import CRF
from nerve.engines.token_tagger import KIND, LABEL_PAD, TokenTagger, Words, bio_tags, extract_with, words_of
from nerve.ner.card import TaskCard
from nerve.ner.types import Entity, Example

from .config import DataArgs
from .data import DataReport, LengthStats, choose_max_length, entity_counts, unservable_counts

logger = logging.getLogger("nerve.tuning")


@dataclass
class TagStats:
    unaligned: int = 0
    """Entities whose start or end is not a word boundary."""
    overlapping: int = 0
    """Entities overlapping an earlier (or longer) entity."""
    truncated: int = 0
    """Entities (partly) beyond ``max_length`` tokens."""


def word_tags(words: Words, entities: Sequence[Entity], stats: TagStats | None = None,
              text_len: int | None = None) -> list[str]:
    """BIO tags of ``words`` for ``entities``; untaggable entities are counted in ``stats``."""
    stats = stats if stats is not None else TagStats()
    tags = ["O"] * len(words.spans)
    starts = {s: i for i, (s, _) in enumerate(words.spans)}
    ends = {e: i for i, (_, e) in enumerate(words.spans)}
    covered_to = -1
    last_end = words.spans[-1][1] if words.spans else 0
    for ent in sorted(entities, key=lambda e: (e.start, -(e.end - e.start))):
        if ent.start < covered_to:
            stats.overlapping += 1
            continue
        a, b = starts.get(ent.start), ends.get(ent.end)
        if a is None or b is None or b < a:
            if text_len is not None and ent.end > last_end:
                stats.truncated += 1
            else:
                stats.unaligned += 1
            continue
        tags[a] = f"B-{ent.label}"
        for i in range(a + 1, b + 1):
            tags[i] = f"I-{ent.label}"
        covered_to = ent.end
    return tags


def encode_token_cls(tokenizer, examples: Sequence[Example], tags: Sequence[str], max_length: int,
                     stats: TagStats | None = None) -> list[dict[str, list[int]]]:
    """Features (``input_ids``, ``labels``, ``word_mask``) of examples, truncated at ``max_length`` tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token classification needs a fast tokenizer (offset mapping and word ids)")
    tag_id = {t: i for i, t in enumerate(tags)}
    stats = stats if stats is not None else TagStats()
    enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length,
                    return_offsets_mapping=True)
    feats = []
    for i, ex in enumerate(examples):
        words = words_of(enc[i])
        wt = word_tags(words, ex.entities, stats, text_len=len(ex.text))
        ids = enc["input_ids"][i]
        labels = [LABEL_PAD] * len(ids)
        mask = [0] * len(ids)
        for t, tag in zip(words.first_token, wt, strict=True):
            labels[t] = tag_id[tag]
            mask[t] = 1
        feats.append({"input_ids": ids, "labels": labels, "word_mask": mask})
    return feats


def report_token_cls(split: str, examples: Sequence[Example], tokenizer, card: TaskCard, data: DataArgs,
                     max_length: int | None = None, dropped_entities: int = 0) -> DataReport:
    lengths = [len(ids) for ids in tokenizer([ex.text for ex in examples])["input_ids"]]
    limit = getattr(tokenizer, "model_max_length", 512) or 512
    limit = min(limit, 512) if limit > 100_000 else limit
    if max_length is None:
        max_length, source = choose_max_length(lengths, data.max_length, data.length_percentile)
        max_length = min(max_length, limit)
    else:
        source = "from the training data"
    stats = TagStats()
    encode_token_cls(tokenizer, examples, bio_tags(card.labels.names), max_length, stats)
    return DataReport(
        split=split, kind=KIND, examples=len(examples), entities=sum(len(ex.entities) for ex in examples),
        labels=entity_counts(examples, card.labels.names), without_entities=sum(not ex.entities for ex in examples),
        lengths=LengthStats.of(lengths), max_length=max_length, max_length_source=source,
        overlength=sum(n > max_length for n in lengths), overlength_policy="truncate",
        dropped_entities=dropped_entities, unservable=unservable_counts(examples, card),
        untaggable={"unaligned": stats.unaligned, "overlapping": stats.overlapping, "truncated": stats.truncated},
    )


def build_tagger(model_path: str | Path, tags: Sequence[str], *, crf: bool = False, lora: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> TokenTagger:
    """A new tagger on the encoder at ``model_path`` (a fresh classifier; a CRF and LoRA if asked)."""
    from transformers import AutoModelForTokenClassification

    id2label = dict(enumerate(tags))
    encoder = AutoModelForTokenClassification.from_pretrained(
        model_path, num_labels=len(tags), id2label=id2label, label2id={t: i for i, t in id2label.items()},
        dtype=dtype,
    )
    if lora is not None:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.TOKEN_CLS, r=lora["r"], lora_alpha=lora["alpha"],
                            lora_dropout=lora["dropout"], target_modules=lora["target_modules"])
        encoder = get_peft_model(encoder, config)
    return TokenTagger(encoder, CRF(len(tags)) if crf else None)


class TaggerEvaluator:
    """Scores the model being trained on dev examples in-process (strict span F1, :class:`nerve.ner.scoring.Scorer`)."""

    needs_saved_model = False

    def __init__(self, examples: Sequence[Example], tokenizer, tags: Sequence[str], labels: Sequence[str],
                 max_length: int, limit: int | None = None) -> None:
        self.examples = list(examples)[:limit] if limit else list(examples)
        self.tokenizer = tokenizer
        self.tags = list(tags)
        self.labels = list(labels)
        self.max_length = max_length
        self.description = f"in-process span F1 on {len(self.examples)} dev examples"

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        from nerve.ner.scoring import Scorer

        tagger = model
        while not isinstance(tagger, TokenTagger) and hasattr(tagger, "module"):
            tagger = tagger.module
        preds = extract_with(tagger, self.tokenizer, self.tags, [ex.text for ex in self.examples],
                             max_length=self.max_length)
        scorer = Scorer(labels=self.labels)
        for ex, pred in zip(self.examples, preds, strict=True):
            scorer.add(ex.entities, pred)
        return summarize(scorer.report().to_dict())


def summarize(report: dict) -> dict[str, float]:
    """The headline numbers of a :class:`nerve.ner.scoring.ScoreReport` dict."""
    return {
        "micro_f1": report["micro"]["f1"],
        "micro_precision": report["micro"]["precision"],
        "micro_recall": report["micro"]["recall"],
        "macro_f1": report["macro"]["f1"],
        "exact_match": report["exact_match"],
        "parse_rate": report["parse_rate"],
        "examples": report["examples"],
    }
