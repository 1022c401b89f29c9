"""Where the prompt's text tokens sit (what a question-aware head reads besides the image tokens)."""

from __future__ import annotations

import torch

from .architectures import RowImageLayout


def text_token_index(
    prompt_length: int,
    layouts: list[RowImageLayout],
    attention_mask: torch.Tensor | None = None,
    prefix: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the prompt positions that hold text: attended (``attention_mask`` 1, so padding is left out) and
    not an image token (cross-attention layouts name no prompt position, so every attended position is kept).

    Args:
        prompt_length (`int`): length of the (padded) prompt.
        layouts (`list[RowImageLayout]`): one per row, from the family adapter.
        attention_mask (`torch.Tensor` of shape `(batch, prompt_length)`, *optional*): all ones when not given.
        prefix (`int`, *optional*, defaults to 0): positions before the prompt in the decoder's sequence (GIT's
            prepended image features; see `ArchitectureAdapter.sequence_prefix`); the index counts them.

    Returns:
        ``(index, mask)``: `(batch, text_tokens)` positions (0 where padded) and `(batch, text_tokens)` bool, True
        for real text tokens; ``text_tokens`` is the largest count over the rows (at least 1).
    """
    batch = len(layouts)
    keep = torch.ones(batch, prefix + prompt_length, dtype=torch.bool)
    keep[:, :prefix] = False  # only image features are prepended
    if attention_mask is not None:
        keep[:, prefix:] &= attention_mask[:, :prompt_length].detach().cpu().bool()
    for row, layout in enumerate(layouts):
        if not layout.cross_attention:  # cross-attention image states are not positions of the prompt
            keep[row, layout.image_positions.cpu()] = False
    counts = keep.sum(dim=1)
    width = max(1, int(counts.max()) if batch else 1)
    index = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for row in range(batch):
        positions = keep[row].nonzero().flatten()
        index[row, : positions.numel()] = positions
        mask[row, : positions.numel()] = True
    return index, mask


def gather_positions(hidden: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden[row, index[row]]`` with padded entries zeroed: `(batch, seq, H)` -> `(batch, n, H)`."""
    index = index.to(hidden.device)
    states = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return states * mask.to(hidden.device).unsqueeze(-1).to(states.dtype)
