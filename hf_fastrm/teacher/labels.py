"""Training labels from teacher maps: per token, min-max over the image tokens, relevant at or above a threshold."""

from __future__ import annotations

import torch


def relevancy_labels(
    relevancy: torch.Tensor, threshold: float = 0.3, image_token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary labels for distilling a FastRM head (the paper's best threshold is 0.3).

    Each map is min-max normalised over its valid image tokens, then marked relevant where the normalised value is
    at or above `threshold`. A map whose valid entries are all equal (or that has none) gets no relevant patch.

    Args:
        relevancy (`torch.Tensor` of shape `(..., image_tokens)`): teacher maps; NaN entries are ignored.
        threshold (`float`, *optional*, defaults to 0.3): in [0, 1].
        image_token_mask (`torch.BoolTensor` broadcastable to `relevancy`, *optional*): which entries are real image
            tokens (False for padding slots).

    Returns:
        `torch.BoolTensor` shaped like `relevancy`; False at ignored entries.

    Example:

    ```python
    >>> import torch
    >>> from hf_fastrm.teacher import relevancy_labels
    >>> relevancy_labels(torch.tensor([[0.0, 1.0, 2.0, 10.0]]))
    tensor([[False, False, False,  True]])
    ```
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must lie in [0, 1], got {threshold}.")
    valid = ~torch.isnan(relevancy)
    if image_token_mask is not None:
        valid = valid & image_token_mask.to(relevancy.device)
    values = relevancy.float() if relevancy.dtype not in (torch.float32, torch.float64) else relevancy
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    low = torch.where(valid, values, inf).amin(dim=-1, keepdim=True)
    high = torch.where(valid, values, -inf).amax(dim=-1, keepdim=True)
    spread = high - low
    normalised = (values - low) / torch.where(spread > 0, spread, torch.ones_like(spread))
    return valid & (spread > 0) & (normalised >= threshold)
