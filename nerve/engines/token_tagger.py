"""The token-classification model: its checkpoint format and its inference.

* :class:`TokenTagger`: an ``AutoModelForTokenClassification`` (optionally LoRA-wrapped while training) with
  softmax over tags or a linear-chain CRF (:mod:`nerve.engines.crf`) over the word-start positions.
* Words: a fast tokenizer's ``word_ids`` and ``offset_mapping`` map sub-tokens to words and characters; the
  first sub-token of a word carries the word's tag.
* Decoding: word tags -> spans (the lenient conlleval rules of :func:`nerve.ner.readers.conll.decode_tags`) ->
  character offsets of the first and last word -> :class:`~nerve.ner.types.Entity` (grounded in the text).

A saved tagger is a Hugging Face token-classification folder (``config.json`` with ``id2label``, weights,
tokenizer) plus ``nerve_encoder.json`` (kind, tags, CRF flag, max length) and, with a CRF, ``crf.safetensors``:
:func:`save_tagger` writes it, :func:`load_tagger` and :class:`Tagger` read it. Training the model is
:mod:`nerve.tuning.encoder`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nerve.ner.card import ENCODER_FILENAME
from nerve.ner.readers.conll import decode_tags, parse_tag
from nerve.ner.types import Entity

from .crf import CRF

CRF_FILENAME = "crf.safetensors"
KIND = "token-cls"
LABEL_PAD = -100
"""Tag id of positions without a tag (sub-tokens after a word's first, special tokens): no loss there."""


def bio_tags(labels: Sequence[str]) -> list[str]:
    """``["O", "B-X", "I-X", ...]`` for labels ``X, ...`` (tag id = list index)."""
    tags = ["O"]
    for name in labels:
        tags += [f"B-{name}", f"I-{name}"]
    return tags


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


def decode_word_tags(text: str, words: Words, tags: Sequence[str]) -> list[Entity]:
    """Entities (character offsets into ``text``) of per-word tags."""
    parsed = [parse_tag(t) for t in tags]
    return [Entity.at(text, words.spans[a][0], words.spans[b - 1][1], label) for a, b, label in decode_tags(parsed)]



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
                                                      ignore_index=LABEL_PAD)
            return out
        wm = (labels != LABEL_PAD) if word_mask is None else word_mask.bool()
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


class Tagger:
    """A saved token-classification model loaded for inference: texts in, grounded entities out."""

    def __init__(self, model_dir: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tagger, self.meta = load_tagger(self.model_dir, device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tags: list[str] = list(self.meta["tags"])
        self.max_length = int(self.meta.get("max_length") or 512)
        self.batch_size = batch_size

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(t[2:] for t in self.tags if t != "O"))

    def extract(self, texts: list[str]) -> list[list[Entity]]:
        """Entities of each text, with character offsets into it."""
        return extract_with(self.tagger, self.tokenizer, self.tags, texts, max_length=self.max_length,
                            batch_size=self.batch_size)
