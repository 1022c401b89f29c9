"""One result assembly for every relevancy method: token masks, image slots, NaN masking and confidence.

Every method (the head inside `generate()`, the gradient teacher, attention baselines, a user's own) produces per
generated token a row of relevance over the image tokens; [`assemble_result`] turns those rows into a
[`FastRMResult`] by one rule, so the same `generate()` output gets the same `token_mask`, `special_token_mask`,
`image_token_mask` and `sequence_confidence` whichever method explains it.

The rule:

* **end of sequence**: the call's `eos_token_id` when it set one, else the model's generation config's. A row's
  tokens after its first end-of-sequence token are not generated (`token_mask` False, maps and confidence NaN); the
  end-of-sequence token itself is.
* **special tokens** (left out of `sequence_confidence`): the end-of-sequence ids in effect for the call, plus the
  generation config's eos, pad and bos ids; an explicit `special_token_ids` list replaces this default.
* **image slots**: per row the image tokens in prompt order (all images of the row); rows with fewer image tokens are
  padded, padding slots are NaN and excluded from the entropy.
* **confidence**: [`map_confidence`] of each map over the real image slots; `sequence_confidence` is its mean over
  the generated, non-special tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.utils import logging

from .architectures.base import RowImageLayout
from .confidence import map_confidence, sequence_confidence
from .outputs import FastRMResult

logger = logging.get_logger(__name__)

__all__ = [
    "assemble_result",
    "eos_token_ids",
    "gather_image_slots",
    "image_slots",
    "special_token_ids",
    "token_masks",
    "warn_if_only_special_tokens",
]


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value])]


def eos_token_ids(model: Any, eos_token_id: int | list[int] | None = None) -> list[int]:
    """The end-of-sequence ids in effect: the call's `eos_token_id` if given, else `model.generation_config`'s."""
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return _ids(eos_token_id)


def special_token_ids(
    model: Any, eos_token_id: int | list[int] | None = None, special_token_ids: list[int] | None = None
) -> list[int]:
    """Token ids left out of `sequence_confidence`: `special_token_ids` when given; otherwise the call's end of
    sequence ([`eos_token_ids`]) and the generation config's eos, pad and bos ids."""
    if special_token_ids is not None:
        return sorted(set(_ids(special_token_ids)))
    config = getattr(model, "generation_config", None)
    ids = set(eos_token_ids(model, eos_token_id))
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        ids.update(_ids(getattr(config, name, None)))
    return sorted(ids)


def call_eos_token_id(call_kwargs: dict[str, Any]) -> int | list[int] | None:
    """The `eos_token_id` a `generate()` call set (directly or through its `generation_config`), or None."""
    if call_kwargs.get("eos_token_id") is not None:
        return call_kwargs["eos_token_id"]
    generation_config = call_kwargs.get("generation_config")
    return getattr(generation_config, "eos_token_id", None) if generation_config is not None else None


def token_masks(
    new_tokens: torch.Tensor,
    eos_ids: list[int],
    special_ids: list[int],
    generated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(token_mask, special_token_mask)`, each `(batch, steps)`.

    Args:
        new_tokens (`torch.LongTensor` of shape `(batch, known)`): the generated tokens. `known` may be smaller than
            `steps` (a logits processor never sees the last chosen token): unknown tokens count as generated,
            not end of sequence and not special.
        eos_ids, special_ids (`list[int]`): see [`eos_token_ids`], [`special_token_ids`].
        generated (`torch.BoolTensor` of shape `(batch, steps)`, *optional*): steps that produced a token of the
            row at all (False for beam-search steps after a beam finished); all True by default.

    Returns:
        `token_mask`: generated tokens up to and including the row's first end-of-sequence token;
        `special_token_mask`: those of them that are special tokens.
    """
    if generated is None:
        generated = torch.ones(new_tokens.shape, dtype=torch.bool, device=new_tokens.device)
    generated = generated.to(new_tokens.device)
    known = min(new_tokens.shape[1], generated.shape[1])
    new_tokens = new_tokens[:, :known]
    is_eos = torch.zeros_like(generated)
    special = torch.zeros_like(generated)
    if eos_ids:
        is_eos[:, :known] = torch.isin(new_tokens, torch.as_tensor(eos_ids, device=new_tokens.device))
    if special_ids:
        special[:, :known] = torch.isin(new_tokens, torch.as_tensor(special_ids, device=new_tokens.device))
    ended_before = torch.zeros_like(generated)
    ended_before[:, 1:] = is_eos.cumsum(dim=1)[:, :-1] > 0
    token_mask = generated & ~ended_before
    return token_mask, token_mask & special


def image_slots(layouts: list[RowImageLayout], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(image_index, image_token_mask)`, each `(batch, image_tokens)`: the image tokens' positions in the sequence
    (0 in padding slots) and which slots are real."""
    width = max(layout.num_image_tokens for layout in layouts)
    index = torch.zeros(len(layouts), width, dtype=torch.long)
    mask = torch.zeros(len(layouts), width, dtype=torch.bool)
    for row, layout in enumerate(layouts):
        index[row, : layout.num_image_tokens] = layout.image_positions.to(torch.long)
        mask[row, : layout.num_image_tokens] = True
    return index.to(device), mask.to(device)


def gather_image_slots(rows: torch.Tensor, layouts: list[RowImageLayout]) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance over every position, `(batch, steps, length)`, picked at the image tokens: `(batch, steps,
    image_tokens)` (padding slots hold position 0's value; [`assemble_result`] masks them), and the slot mask."""
    index, mask = image_slots(layouts, rows.device)
    return rows.gather(2, index.unsqueeze(1).expand(-1, rows.shape[1], -1)), mask


def assemble_result(
    relevancy: torch.Tensor,
    *,
    image_token_mask: torch.Tensor,
    image_layouts: list[RowImageLayout],
    new_tokens: torch.Tensor,
    eos_ids: list[int],
    special_ids: list[int],
    beam_indices: torch.Tensor | None = None,
    method: str = "fastrm",
) -> FastRMResult:
    """The [`FastRMResult`] of per-token relevancy rows (the module docstring states the rule).

    Args:
        relevancy (`torch.FloatTensor` of shape `(rows, steps, image_tokens)`): per step, the relevance of each image
            slot for the token chosen at that step (NaN where a method computed nothing). With `beam_indices`, the
            rows are the beams of the search (``batch * num_beams``); otherwise the returned sequences.
        image_token_mask (`torch.BoolTensor` of shape `(rows, image_tokens)`): real image slots.
        image_layouts (`list[RowImageLayout]`): per row of `relevancy`, its image layout.
        new_tokens (`torch.LongTensor` of shape `(returned_rows, known)`): the generated tokens of each returned
            sequence (see [`token_masks`] when `known < steps`).
        eos_ids, special_ids (`list[int]`): [`eos_token_ids`] and [`special_token_ids`] of the call.
        beam_indices (`torch.LongTensor` of shape `(returned_rows, steps)`, *optional*): `generate()`'s
            `beam_indices`: the maps then follow each returned beam (-1 after it finished).
        method (`str`, *optional*, defaults to ``"fastrm"``): the method's registered name.

    Returns:
        [`FastRMResult`] with `relevancy` `(returned_rows, steps, image_tokens)`.
    """
    layouts = list(image_layouts)
    image_mask = image_token_mask.to(relevancy.device)
    generated = None
    if beam_indices is not None:
        steps = min(beam_indices.shape[1], relevancy.shape[1])
        beam_indices = beam_indices[:, :steps].to(relevancy.device)
        source = beam_indices.clamp(min=0)
        step = torch.arange(steps, device=relevancy.device).expand_as(source)
        relevancy = relevancy[source, step]
        first = source[:, 0]
        image_mask = image_mask[first]
        layouts = [layouts[int(row)] for row in first]
        generated = beam_indices >= 0
    else:
        generated = torch.ones(relevancy.shape[:2], dtype=torch.bool, device=relevancy.device)
    new_tokens = new_tokens[:, : relevancy.shape[1]].to(relevancy.device)
    token_mask, special = token_masks(new_tokens, eos_ids, special_ids, generated)
    relevancy = relevancy.masked_fill(~(token_mask.unsqueeze(-1) & image_mask.unsqueeze(1)), math.nan)
    confidence = map_confidence(relevancy, image_mask.unsqueeze(1))
    counted = token_mask & ~special
    warn_if_only_special_tokens(counted)
    return FastRMResult(
        relevancy=relevancy,
        confidence=confidence,
        sequence_confidence=sequence_confidence(confidence, counted),
        token_mask=token_mask,
        image_token_mask=image_mask,
        image_layouts=layouts,
        method=method,
        special_token_mask=special,
    )


def warn_if_only_special_tokens(counted: torch.Tensor) -> None:
    """Warns when a row's `sequence_confidence` is NaN because it generated no token that counts.

    Args:
        counted (`torch.BoolTensor` of shape `(batch, new_tokens)`): generated, non-special tokens.
    """
    empty = (~counted.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        logger.warning(
            f"sequence_confidence is NaN for row(s) {empty}: every token they generated is a special token (for "
            "example the answer is only the end-of-sequence token), and special tokens are left out of the mean. "
            "Their per-token `confidence` is still there; a longer or better prompt gives an answer to explain."
        )
