"""Token-classification baseline: an encoder (e.g. MiniLM) tags words with BIO labels.

* Alignment: a fast tokenizer's ``word_ids`` and ``offset_mapping`` map sub-tokens to words and characters.
  The first sub-token of a word carries the word's tag; the other sub-tokens get -100 (no loss, no
  prediction). Tags come from an example's character-offset entities: a word that starts an entity is
  ``B-X``, a word inside one ``I-X``. Entities that do not start and end on word boundaries, or overlap an
  earlier entity, cannot be tagged: they are counted in the data report.
* Decoding: word tags -> spans (the lenient conlleval rules of :func:`ner.readers.conll.decode_tags`) ->
  character offsets of the first and last word -> :class:`~ner.types.Entity` (grounded in the text).
* Head: softmax over tags, or a linear-chain CRF (:mod:`tuning.crf`) over the word-start positions.
* Optional LoRA on the encoder (``TaskType.TOKEN_CLS``; the classifier stays fully trainable).

A saved tagger is a Hugging Face token-classification folder (``config.json`` with ``id2label``, weights,
tokenizer) plus ``nerve_encoder.json`` (kind, tags, CRF flag, max length) and, with a CRF, ``crf.safetensors``.
:class:`EncoderExtractor` loads it and extracts entities from texts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ner.card import ENCODER_FILENAME, TaskCard
from ner.readers.conll import decode_tags, parse_tag
from ner.types import Entity, Example

from .config import DataArgs
from .crf import CRF
from .data import IGNORE_INDEX, DataReport, LengthStats, choose_max_length, entity_counts, unservable_counts

logger = logging.getLogger("nerve.tuning")

CRF_FILENAME = "crf.safetensors"
KIND = "token-cls"


def bio_tags(labels: Sequence[str]) -> list[str]:
    """``["O", "B-X", "I-X", ...]`` for labels ``X, ...`` (tag id = list index)."""
    tags = ["O"]
    for name in labels:
        tags += [f"B-{name}", f"I-{name}"]
    return tags


# --- alignment -----------------------------------------------------------------------------------------


@dataclass
class Words:
    """Words of one encoded text: the token index of each word's first sub-token, and its character span."""

    first_token: list[int]
    spans: list[tuple[int, int]]


def words_of(encoding) -> Words:
    """Words of a fast-tokenizer encoding (special tokens excluded)."""
    word_ids = encoding.word_ids
    offsets = encoding.offsets
    first: dict[int, int] = {}
    spans: dict[int, list[int]] = {}
    for t, w in enumerate(word_ids):
        if w is None:
            continue
        s, e = offsets[t]
        if w not in first:
            first[w] = t
            spans[w] = [s, e]
        else:
            spans[w][0] = min(spans[w][0], s)
            spans[w][1] = max(spans[w][1], e)
    order = sorted(first)
    return Words([first[w] for w in order], [tuple(spans[w]) for w in order])  # type: ignore[misc]


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


def decode_word_tags(text: str, words: Words, tags: Sequence[str]) -> list[Entity]:
    """Entities (character offsets into ``text``) of per-word tags."""
    parsed = [parse_tag(t) for t in tags]
    return [Entity.at(text, words.spans[a][0], words.spans[b - 1][1], label) for a, b, label in decode_tags(parsed)]


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
        labels = [IGNORE_INDEX] * len(ids)
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


# --- the model -----------------------------------------------------------------------------------------


class TokenTagger(nn.Module):
    """An ``AutoModelForTokenClassification`` (optionally LoRA-wrapped) with an optional CRF over word starts."""

    def __init__(self, encoder: nn.Module, crf: CRF | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.crf = crf

    @property
    def config(self):
        return self.encoder.config

    def emissions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        return self.encoder(**kw).logits

    @staticmethod
    def _compact(x: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word-start entries of ``x`` moved to the front of each row (order kept), and the new mask."""
        counts = word_mask.sum(1)
        width = max(int(counts.max()) if counts.numel() else 0, 1)
        order = torch.argsort((~word_mask).to(torch.int8), dim=1, stable=True)[:, :width]
        idx = order if x.dim() == 2 else order.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        mask = torch.arange(width, device=x.device).unsqueeze(0) < counts.unsqueeze(1)
        return x.gather(1, idx), mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, word_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.emissions(input_ids, attention_mask, token_type_ids)
        out = {"logits": logits}
        if labels is None:
            return out
        if self.crf is None:
            out["loss"] = nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                      ignore_index=IGNORE_INDEX)
            return out
        wm = (labels != IGNORE_INDEX) if word_mask is None else word_mask.bool()
        keep = wm.any(1)
        em, mask = self._compact(logits[keep].float(), wm[keep])
        tags, _ = self._compact(labels[keep], wm[keep])
        out["loss"] = self.crf(em, tags.clamp(min=0), mask, reduction="mean") if keep.any() else logits.sum() * 0
        return out

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> list[list[int]]:
        """Tag ids of each row's word starts, in order."""
        logits = self.emissions(input_ids, attention_mask, token_type_ids).float()
        wm = word_mask.bool()
        if self.crf is None:
            best = logits.argmax(-1)
            return [best[i][wm[i]].tolist() for i in range(best.shape[0])]
        out: list[list[int]] = [[] for _ in range(logits.shape[0])]
        keep = wm.any(1)
        if keep.any():
            em, mask = self._compact(logits[keep], wm[keep])
            rows = keep.nonzero().flatten().tolist()
            for r, path in zip(rows, self.crf.decode(em, mask), strict=True):
                out[r] = path
        return out


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


def save_tagger(tagger: TokenTagger, tokenizer, out_dir: str | Path, *, max_length: int,
                sample: Sequence[str] = ("John Smith lives in New York .",)) -> Path:
    """Save ``tagger`` as a plain token-classification folder (LoRA merged; checked with ``allclose``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = tagger.encoder
    if hasattr(encoder, "merge_and_unload"):
        batch = tokenizer(list(sample), return_tensors="pt", padding=True)
        encoder.eval()
        with torch.no_grad():
            before = encoder(**batch).logits
            merged = encoder.merge_and_unload()
            after = merged(**batch).logits
        if not torch.allclose(before, after, atol=1e-4, rtol=1e-4):
            raise RuntimeError("merged token-classification logits differ from the adapter's")
        tagger.encoder = encoder = merged
    encoder.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tags = [encoder.config.id2label[i] for i in range(len(encoder.config.id2label))]
    if tagger.crf is not None:
        save_file({k: v.detach().float().contiguous().cpu() for k, v in tagger.crf.state_dict().items()},
                  str(out / CRF_FILENAME))
    meta = {"kind": KIND, "scheme": "iob2", "tags": tags, "crf": tagger.crf is not None, "max_length": max_length}
    (out / ENCODER_FILENAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_tagger(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[TokenTagger, dict]:
    """A saved tagger and its ``nerve_encoder.json`` metadata."""
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    model_dir = Path(model_dir)
    meta_path = model_dir / ENCODER_FILENAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{model_dir}: not a nerve token-classification model (no {ENCODER_FILENAME})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    encoder = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=torch.float32)
    crf = None
    if meta.get("crf"):
        crf = CRF(len(meta["tags"]))
        crf.load_state_dict(load_file(str(model_dir / CRF_FILENAME)))
    tagger = TokenTagger(encoder, crf).to(device).eval()
    return tagger, meta


def extract_with(tagger: TokenTagger, tokenizer, tags: Sequence[str], texts: Sequence[str], *,
                 max_length: int, batch_size: int = 32) -> list[list[Entity]]:
    """Entities of ``texts``; texts longer than ``max_length`` tokens are tagged in consecutive windows."""
    device = next(tagger.parameters()).device
    results: list[list[Entity]] = [[] for _ in texts]
    was_training = tagger.training
    tagger.eval()
    try:
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            enc = tokenizer(chunk, truncation=True, max_length=max_length, return_overflowing_tokens=True,
                            return_offsets_mapping=True, padding=True, return_tensors="pt")
            sample_of = enc["overflow_to_sample_mapping"].tolist()
            words = [words_of(enc[i]) for i in range(len(sample_of))]
            wm = torch.zeros_like(enc["input_ids"], dtype=torch.bool)
            for i, w in enumerate(words):
                wm[i, w.first_token] = True
            kw = {"token_type_ids": enc["token_type_ids"].to(device)} if "token_type_ids" in enc else {}
            preds = tagger.predict(enc["input_ids"].to(device), enc["attention_mask"].to(device), wm.to(device),
                                   **kw)
            # Merge windows: each word takes the tag of the first window that saw it.
            merged: dict[int, dict[tuple[int, int], str]] = {}
            for i, (w, p) in enumerate(zip(words, preds, strict=True)):
                seen = merged.setdefault(sample_of[i], {})
                for span, tag_id in zip(w.spans, p, strict=True):
                    seen.setdefault(span, tags[tag_id])
            for s, seen in merged.items():
                spans = sorted(seen)
                results[start + s] = decode_word_tags(chunk[s], Words(list(range(len(spans))), spans),
                                                      [seen[sp] for sp in spans])
    finally:
        tagger.train(was_training)
    return results


class EncoderExtractor:
    """Entity extraction with a saved token-classification model (the service can serve it)."""

    def __init__(self, model_dir: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tagger, self.meta = load_tagger(self.model_dir, device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tags: list[str] = list(self.meta["tags"])
        self.max_length = int(self.meta.get("max_length") or 512)
        self.batch_size = batch_size
        self.card = TaskCard.load(self.model_dir) if (self.model_dir / "nerve_task.json").is_file() else None

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(t[2:] for t in self.tags if t != "O"))

    def extract(self, texts: list[str]) -> list[list[Entity]]:
        """Entities of each text, with character offsets into it."""
        return extract_with(self.tagger, self.tokenizer, self.tags, texts, max_length=self.max_length,
                            batch_size=self.batch_size)


class TaggerEvaluator:
    """Scores the model being trained on dev examples in-process (strict span F1, :class:`ner.scoring.Scorer`)."""

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
        from ner.scoring import Scorer

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
    """The headline numbers of a :class:`ner.scoring.ScoreReport` dict."""
    return {
        "micro_f1": report["micro"]["f1"],
        "micro_precision": report["micro"]["precision"],
        "micro_recall": report["micro"]["recall"],
        "macro_f1": report["macro"]["f1"],
        "exact_match": report["exact_match"],
        "parse_rate": report["parse_rate"],
        "examples": report["examples"],
    }
