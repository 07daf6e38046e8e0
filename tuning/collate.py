"""Batching: dynamic padding, and packing with attention boundaries between examples.

Packing concatenates several examples into one row. Tokens must not attend across examples, so each packed
row carries ``position_ids`` that restart at 0 for every example and *no* ``attention_mask``: transformers
(>= 4.56, and 5.x) then derives a block-diagonal causal mask from the position ids for the sdpa, eager and flex
kernels (``masking_utils.find_packed_sequence_indices``) and ``cu_seqlens`` for flash-attention. Two details
make or break this, both covered by tests and by :func:`check_packing` at the start of a packed run:

* the model must run with ``use_cache=False`` (with a cache, transformers skips the packed-sequence detection
  and the examples of a row silently attend to each other);
* the padding at the end of a row is a segment of its own (positions 0, 1, ...), so real tokens never attend
  to it and its labels are -100.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from .data import IGNORE_INDEX


class ListDataset(torch.utils.data.Dataset):
    """A list of feature dicts as a map-style dataset."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def _pad_len(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


class PaddingCollator:
    """Pads a batch to its longest example (rounded up to ``pad_to_multiple_of``), on the right.

    Features hold ``input_ids`` and ``labels`` (and, for token classification, ``word_mask``); the batch gets
    an ``attention_mask`` and ``num_tokens`` (the real tokens in the batch, for throughput).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = 8) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = _pad_len(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        word_mask = torch.zeros((n, width), dtype=torch.bool) if "word_mask" in features[0] else None
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.as_tensor(f["input_ids"])
            attention[i, :k] = 1
            if "labels" in f:
                labels[i, :k] = torch.as_tensor(f["labels"])
            if word_mask is not None:
                word_mask[i, :k] = torch.as_tensor(f["word_mask"], dtype=torch.bool)
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                 "num_tokens": attention.sum()}
        if word_mask is not None:
            batch["word_mask"] = word_mask
        return batch


def pack_features(features: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing packing of examples into rows of at most ``max_length`` tokens.

    Each row has ``input_ids``, ``labels`` and ``position_ids`` (restarting at 0 for every example) and
    ``lengths`` (the examples' lengths, in row order). Deterministic for a given input.
    """
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    rows: list[list[int]] = []
    caps: list[int] = []  # sorted remaining capacities
    cap_rows: list[int] = []  # row index of each entry of caps
    for i in order:
        n = len(features[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example of {n} tokens does not fit max_length {max_length}; apply the length policy "
                             "before packing")
        j = bisect.bisect_left(caps, n)
        if j < len(caps):
            cap, row = caps.pop(j), cap_rows.pop(j)
        else:
            cap, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        k = bisect.bisect_left(caps, cap - n)
        caps.insert(k, cap - n)
        cap_rows.insert(k, row)
    packed = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lengths: list[int] = []
        for i in members:
            f = features[i]
            ids += f["input_ids"]
            labels += f["labels"]
            pos += range(len(f["input_ids"]))
            lengths.append(len(f["input_ids"]))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": pos, "lengths": lengths})
    return packed


class PackedCollator:
    """Pads packed rows (see :func:`pack_features`) to the longest row; no attention mask (see module doc)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = 8) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = _pad_len(max(len(r["input_ids"]) for r in rows), self.pad_to_multiple_of)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        real = 0
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            real += k
            input_ids[i, :k] = torch.as_tensor(r["input_ids"])
            labels[i, :k] = torch.as_tensor(r["labels"])
            position_ids[i, :k] = torch.as_tensor(r["position_ids"])
            position_ids[i, k:] = torch.arange(width - k)  # the padding is a segment of its own
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "num_tokens": torch.tensor(real)}


def unpack_logits(logits: torch.Tensor, lengths: Sequence[int]) -> list[torch.Tensor]:
    """Split one packed row's logits ``[L, V]`` back into per-example tensors."""
    out, pos = [], 0
    for n in lengths:
        out.append(logits[pos: pos + n])
        pos += n
    return out


def final_hidden(model: torch.nn.Module, **inputs) -> torch.Tensor:
    """The last hidden states ``[B, L, H]`` of a causal LM, without computing the (large) output layer.

    Equal hidden states give equal logits (the head is applied per position), so packing checks compare these.
    """
    from .loss import SelectiveLogits

    ids = inputs["input_ids"]
    hook = SelectiveLogits(model)
    try:
        with hook.only(torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)):
            out = model(**inputs, use_cache=False, output_hidden_states=True)
    finally:
        hook.remove()
    return out.hidden_states[-1]


@torch.no_grad()
def check_packing(model: torch.nn.Module, features: Sequence[dict[str, Any]], pad_token_id: int) -> None:
    """Raise unless a packed row of ``features`` gives the same hidden states as the examples run one by one.

    Run once before a packed training run: a model whose attention ignores the packed position ids would
    otherwise train on examples that see each other.
    """
    feats = list(features[:3])
    if len(feats) < 2:
        return
    was_training = model.training
    model.eval()
    try:
        row = pack_features(feats, sum(len(f["input_ids"]) for f in feats))
        assert len(row) == 1
        batch = PackedCollator(pad_token_id, None)(row)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        # Relative error of each example's hidden states: an example that attends to another one changes
        # completely (error of order 1); 16-bit rounding through a real model's layers stays at a few percent,
        # while its largest single deviation can exceed 1 on activations in the hundreds.
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        packed = final_hidden(model, input_ids=batch["input_ids"].to(device),
                              position_ids=batch["position_ids"].to(device))[0].float()
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
        for i, part in zip(order, unpack_logits(packed, row[0]["lengths"]), strict=True):
            alone = final_hidden(model, input_ids=torch.as_tensor([feats[i]["input_ids"]], device=device))[0].float()
            rel = ((part - alone).norm() / alone.norm().clamp_min(1e-12)).item()
            if rel > tol:
                raise RuntimeError(
                    f"packing check failed: a packed example's hidden states differ from the example alone "
                    f"(relative error {rel:.3g} > {tol:g} in {str(dtype).replace('torch.', '')}); this model/attention "
                    "kernel does not isolate packed examples. Set train.packing: false."
                )
    finally:
        model.train(was_training)
