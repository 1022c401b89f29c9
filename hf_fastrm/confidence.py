"""Confidence of a relevancy map: one minus its normalised entropy over the image tokens.

For a map ``r`` over ``N`` image tokens, ``p_i = r_i / sum_j r_j``, ``H = -sum_i p_i log p_i / log N`` and
``confidence = 1 - H``: 1 when all relevance sits on one patch (a grounded token), 0 when it is spread evenly.
"""

from __future__ import annotations

import math

import torch


def map_confidence(relevancy: torch.Tensor, image_token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Confidence of each map.

    Args:
        relevancy (`torch.Tensor` of shape `(..., image_tokens)`): non-negative relevance; NaN entries are ignored.
        image_token_mask (`torch.BoolTensor` broadcastable to `relevancy`, *optional*): which entries are real image
            tokens (False for padding when rows hold different numbers of images).

    Returns:
        `torch.Tensor` of shape `(...)` in [0, 1]; NaN where a map has no valid entry or sums to zero.
    """
    valid = ~torch.isnan(relevancy)
    if image_token_mask is not None:
        valid = valid & image_token_mask
    values = torch.where(valid, relevancy.float().clamp(min=0), torch.zeros((), device=relevancy.device))
    total = values.sum(dim=-1, keepdim=True)
    probs = values / total
    entropy = -torch.where(probs > 0, probs * probs.log(), torch.zeros((), device=relevancy.device)).sum(dim=-1)
    count = valid.sum(dim=-1)
    log_count = torch.log(count.clamp(min=2).float())
    confidence = torch.where(count > 1, 1.0 - entropy / log_count, torch.ones_like(entropy))
    empty = (count == 0) | (total.squeeze(-1) <= 0)
    return confidence.clamp(0.0, 1.0).masked_fill(empty, math.nan)


def sequence_confidence(confidence: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean confidence over the tokens in `token_mask` (generated, non-special), per sequence.

    Args:
        confidence (`torch.Tensor` of shape `(batch, new_tokens)`)
        token_mask (`torch.BoolTensor` of shape `(batch, new_tokens)`)

    Returns:
        `torch.Tensor` of shape `(batch,)`; NaN for a sequence with no such token.
    """
    keep = token_mask & ~torch.isnan(confidence)
    total = torch.where(keep, confidence, torch.zeros((), device=confidence.device)).sum(dim=-1)
    count = keep.sum(dim=-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))
