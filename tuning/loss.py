"""The causal-LM loss, computing the output layer only where a label exists.

With a 151,936-token vocabulary the output layer dominates a small model's step, yet only the completion
(a few dozen tokens after a prompt of a few hundred) has labels. :class:`SelectiveLogits` puts a forward
pre-hook on the model's output layer that keeps only the hidden states whose next token has a label, so the
model returns logits of shape ``[N, vocab]`` for the ``N`` supervised positions. The hook goes through the
model's own forward (and any DDP / DeepSpeed wrapper around it), leaves the state dict alone, keeps tied
weights tied, and works for any head that is applied once to the final hidden states (element-wise logit
scaling or soft-capping after it are fine). :func:`causal_lm_loss` is the same loss either way; a test checks
it against the model's own loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE_INDEX


def _unwrap(model: nn.Module) -> nn.Module:
    """The innermost model: through DDP / DeepSpeed (``.module``) and PEFT (``get_base_model``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def output_layer(model: nn.Module) -> nn.Module | None:
    inner = _unwrap(model)
    get = getattr(inner, "get_output_embeddings", None)
    return get() if callable(get) else None


class SelectiveLogits:
    """A switchable pre-hook on the output layer: while :meth:`only` is active, the layer sees ``h[mask]``."""

    def __init__(self, model: nn.Module) -> None:
        head = output_layer(model)
        if head is None:
            raise ValueError("the model has no output embeddings (get_output_embeddings() is None)")
        self._mask: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple):
        if self._mask is None or not args:
            return None
        hidden = args[0]
        if hidden.shape[:2] != self._mask.shape:
            raise RuntimeError(
                f"selective logits: hidden states {tuple(hidden.shape)} do not match the label mask "
                f"{tuple(self._mask.shape)}; set train.selective_logits: false for this model"
            )
        return (hidden[self._mask], *args[1:])

    @contextlib.contextmanager
    def only(self, mask: torch.Tensor) -> Iterator[None]:
        self._mask = mask
        try:
            yield
        finally:
            self._mask = None

    def remove(self) -> None:
        self._handle.remove()


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, targets)``: positions whose *next* token has a label, and those labels (row-major order)."""
    shifted = labels[:, 1:]
    valid = shifted != IGNORE_INDEX
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = valid
    return mask, shifted[valid]


def causal_lm_loss(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    selective: SelectiveLogits | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over the labelled positions; ``(loss, logits_of_those_positions)``.

    The loss is the sum over labelled tokens divided by ``num_items_in_batch`` when given (the Trainer counts
    the labelled tokens of all micro-batches of a step, so gradient accumulation weighs every token equally),
    else the mean over this batch's labelled tokens.
    """
    mask, targets = label_positions(labels)
    if selective is not None:
        with selective.only(mask):
            logits = model(**inputs, use_cache=False).logits
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise RuntimeError(f"selective logits: the model returned logits of shape {tuple(logits.shape)} for "
                               f"{targets.shape[0]} labelled positions; set train.selective_logits: false")
    else:
        logits = model(**inputs, use_cache=False).logits[mask]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    if num_items_in_batch is not None:
        denom = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    else:
        denom = max(int(targets.numel()), 1)
    return loss / denom, logits
