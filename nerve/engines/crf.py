"""A small linear-chain CRF (negative log-likelihood and Viterbi decoding), batch-first.

Written here rather than taken from ``pytorch-crf`` (unmaintained since 2019) so the project has one dependency
fewer; tests compare it with brute-force enumeration of every tag sequence. Masks must be left-aligned: each
row's valid positions come first (the token-classification head compacts word-start positions to satisfy
this).
"""

from __future__ import annotations

import torch
from torch import nn


class CRF(nn.Module):
    """Transition scores between ``num_tags`` tags, plus start and end scores."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError("num_tags must be positive")
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        """``transitions[i, j]``: score of tag ``j`` following tag ``i``."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> None:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be [batch, length, {self.num_tags}], got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError("mask must be [batch, length]")
        if emissions.shape[1] and not bool(mask[:, 0].all()):
            raise ValueError("the first position of every row must be valid (left-aligned mask)")

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of ``tags`` per row."""
        mask = mask.to(emissions.dtype)
        b = torch.arange(emissions.shape[0], device=emissions.device)
        s = self.start_transitions[tags[:, 0]] + emissions[b, 0, tags[:, 0]]
        for t in range(1, emissions.shape[1]):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[b, t, tags[:, t]]
            s = s + step * mask[:, t]
        last = mask.long().sum(1) - 1
        s = s + self.end_transitions[tags[b, last]]
        return s

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log of the sum of exp(score) over all tag sequences, per row (forward algorithm)."""
        alpha = self.start_transitions + emissions[:, 0]  # [B, K]
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions.unsqueeze(0), dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + self.end_transitions, dim=1)

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood of ``tags`` (``mean`` over rows, ``sum``, or ``none``)."""
        mask = mask.bool()
        self._check(emissions, mask)
        tags = torch.where(mask, tags, torch.zeros_like(tags))
        nll = self.log_partition(emissions, mask) - self.score(emissions, tags, mask)
        if reduction == "none":
            return nll
        return nll.sum() if reduction == "sum" else nll.mean()

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best tag sequence of each row (Viterbi), as lists as long as the row's valid positions."""
        mask = mask.bool()
        self._check(emissions, mask)
        batch, length, _ = emissions.shape
        if length == 0:
            return [[] for _ in range(batch)]
        score = self.start_transitions + emissions[:, 0]
        history = []
        for t in range(1, length):
            cand = score.unsqueeze(2) + self.transitions.unsqueeze(0)  # [B, from, to]
            best, idx = cand.max(dim=1)
            nxt = best + emissions[:, t]
            score = torch.where(mask[:, t].unsqueeze(1), nxt, score)
            history.append(idx)
        score = score + self.end_transitions
        lengths = mask.long().sum(1).tolist()
        out = []
        for i in range(batch):
            n = lengths[i]
            tag = int(score[i].argmax())
            path = [tag]
            for t in range(n - 1, 0, -1):
                tag = int(history[t - 1][i, tag])
                path.append(tag)
            out.append(path[::-1])
        return out
