"""Helpers for adapters: from token positions and per-image plans to [`RowImageLayout`]s.

Two ways image tokens are laid out in the families transformers ships:

* counted: each image (or video) takes a number of tokens that the processor outputs fix (``image_sizes``,
  ``image_grid_thw``, a constant); images follow each other in prompt order, across the batch rows in order.
  [`assign_media`] walks the rows and hands out the images, each described by a [`MediaPlan`].
* delimited: sub-images are runs of consecutive image tokens separated by marker tokens (tile tags, row/column
  tokens, ``<fake_token_around_image>``). [`consecutive_runs`] finds the runs.

Either way an adapter ends with absolute sequence positions per grid, which [`build_row_layout`] turns into a
[`RowImageLayout`] (indices into the row's image-token positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .base import RowImageLayout


@dataclass
class MediaPlan:
    """How one image (or video) fills its tokens.

    Attributes:
        num_tokens (`int`): how many of the row's image tokens it takes.
        grids (`list[tuple[str, torch.LongTensor]]`): (label suffix, grid) pairs; each grid holds offsets into the
            image's own tokens (0 .. num_tokens - 1), -1 where no token covers the cell. Offsets in no grid are
            separator tokens (newlines, CLS).
    """

    num_tokens: int
    grids: list[tuple[str, torch.Tensor]] = field(default_factory=list)


def square_grid(height: int, width: int | None = None, start: int = 0, row_stride: int | None = None) -> torch.Tensor:
    """Offsets of a row-major `(height, width)` grid starting at `start`; `row_stride` > width skips newline tokens.

    Returns:
        `torch.LongTensor` of shape `(height, width)`.
    """
    width = height if width is None else width
    row_stride = width if row_stride is None else row_stride
    rows = torch.arange(height).unsqueeze(1) * row_stride
    return rows + torch.arange(width).unsqueeze(0) + start


def consecutive_runs(positions: torch.Tensor) -> list[tuple[int, int]]:
    """Splits sorted positions into runs of consecutive values.

    Args:
        positions (`torch.LongTensor` of shape `(n,)`): sorted sequence positions.

    Returns:
        `list[tuple[int, int]]`: (index of the run's first element in `positions`, run length).
    """
    if positions.numel() == 0:
        return []
    breaks = (positions[1:] - positions[:-1] != 1).nonzero().flatten() + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), positions.numel()]
    return [(start, end - start) for start, end in zip(starts, ends, strict=True)]


def token_positions(input_ids: torch.Tensor, token_ids: int | Sequence[int]) -> list[torch.Tensor]:
    """Per row, the sorted positions of tokens whose id is in `token_ids` (`(batch, seq)` -> list of `(n_row,)`)."""
    ids = torch.as_tensor([token_ids] if isinstance(token_ids, int) else list(token_ids), device=input_ids.device)
    return [row.nonzero().flatten().cpu() for row in torch.isin(input_ids, ids)]


def assign_media(
    positions_per_row: list[torch.Tensor],
    plan_for: Callable[[int, int], MediaPlan],
    *,
    kind: str,
    num_items: int | None,
    family: str,
) -> list[list[tuple[str, torch.Tensor]]]:
    """Hands images (or videos) out to the batch rows in prompt order, each taking the tokens its plan says.

    Args:
        positions_per_row: per row, the sorted positions of this kind's tokens.
        plan_for: `(item_index, row) -> MediaPlan`, the item's token count and grids.
        kind (`str`): ``"image"`` or ``"video"`` (labels and errors).
        num_items (`int`, *optional*): how many items the processor outputs describe; `None` when every item looks
            alike and the token count alone says how many there are.
        family (`str`): the family's name, for errors.

    Returns:
        Per row, `(label, grid of absolute positions)` pairs (-1 where no token covers a cell).
    """
    result: list[list[tuple[str, torch.Tensor]]] = []
    item = 0
    for row, positions in enumerate(positions_per_row):
        row_grids: list[tuple[str, torch.Tensor]] = []
        used = 0
        local = 0
        while used < positions.numel():
            if num_items is not None and item >= num_items:
                raise ValueError(
                    f"{family}: row {row} of the prompt has more {kind} tokens than the {num_items} {kind}(s) the "
                    f"processor outputs describe. Pass the processor's outputs (pixel values and their size "
                    "tensors) to generate() unchanged, with prompts built by the same processor call."
                )
            plan = plan_for(item, row)
            if plan.num_tokens <= 0 or used + plan.num_tokens > positions.numel():
                raise ValueError(
                    f"{family}: {kind} {item} needs {plan.num_tokens} tokens but row {row} has "
                    f"{positions.numel() - used} {kind} tokens left. The prompt's {kind} tokens do not match the "
                    "processor outputs passed with it; build both with one processor call."
                )
            block = positions[used : used + plan.num_tokens]
            for suffix, offsets in plan.grids:
                absolute = torch.where(offsets >= 0, block[offsets.clamp(min=0)], torch.full_like(offsets, -1))
                row_grids.append((f"{kind} {local} {suffix}".rstrip(), absolute))
            used += plan.num_tokens
            item += 1
            local += 1
        result.append(row_grids)
    if num_items is not None and item != num_items:
        raise ValueError(
            f"{family}: the prompt holds {kind} tokens for {item} {kind}(s) but the processor outputs describe "
            f"{num_items}. Build the prompt and the pixel values with one processor call."
        )
    return result


def build_row_layout(image_positions: torch.Tensor, grids: list[tuple[str, torch.Tensor]]) -> RowImageLayout:
    """A [`RowImageLayout`] from absolute positions.

    Args:
        image_positions (`torch.LongTensor` of shape `(n,)`): every image token of the row (the positions relevancy
            is reported over), sorted.
        grids: `(label, grid of absolute positions)` pairs, -1 where no token covers a cell; ordered by the grid's
            first token in the prompt.
    """
    image_positions = image_positions.cpu()
    ordered = sorted(grids, key=lambda pair: int(pair[1][pair[1] >= 0].min()) if (pair[1] >= 0).any() else 0)
    index_grids = []
    for label, absolute in ordered:
        index = torch.searchsorted(image_positions, absolute.clamp(min=0))
        index = index.clamp(max=max(image_positions.numel() - 1, 0))
        found = image_positions[index] == absolute
        if bool(((absolute >= 0) & ~found).any()):
            raise ValueError(f"Grid {label!r} points at positions that are not image tokens (an adapter bug).")
        index_grids.append(torch.where(absolute >= 0, index, torch.full_like(index, -1)))
    return RowImageLayout(
        image_positions=image_positions,
        image_grids=index_grids,
        grid_labels=[label for label, _ in ordered],
    )


def merge_rows(
    positions_per_row: list[torch.Tensor], *grids_per_row: list[list[tuple[str, torch.Tensor]]]
) -> list[RowImageLayout]:
    """One [`RowImageLayout`] per row from the rows' image positions and one or more per-row grid lists."""
    layouts = []
    for row, positions in enumerate(positions_per_row):
        grids = [pair for per_row in grids_per_row for pair in per_row[row]]
        layouts.append(build_row_layout(positions, grids))
    return layouts


def grids_from_shapes(
    input_ids: torch.Tensor, token_id: int, shapes: list[tuple[int, int]], family: str
) -> list[RowImageLayout]:
    """Layouts of `input_ids` `(batch, seq)` whose image tokens (`token_id`) are, image after image in prompt order,
    one row-major `(height, width)` grid each (`shapes`, one per image of the batch, from the processor outputs)."""
    positions = token_positions(input_ids, token_id)
    grids = assign_media(
        positions,
        lambda item, row: MediaPlan(shapes[item][0] * shapes[item][1], [("", square_grid(*shapes[item]))]),
        kind="image",
        num_items=len(shapes),
        family=family,
    )
    return merge_rows(positions, grids)


def union_positions(*positions_per_row: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per row, the sorted union of several kinds of token positions (images and videos)."""
    return [torch.cat(rows).sort().values for rows in zip(*positions_per_row, strict=True)]


def config_value(config, model_kwargs: dict, name: str, default=None):
    """A forward kwarg when the call passed one (generate() forwards it), else the config's value."""
    value = model_kwargs.get(name)
    if value is None:
        value = getattr(config, name, None)
    return default if value is None else value


def per_item_list(value) -> list:
    """`image_sizes`-like inputs (tensor, array, nested lists) as a Python list of items."""
    if value is None:
        return []
    if hasattr(value, "tolist"):
        return value.tolist()
    return [item.tolist() if hasattr(item, "tolist") else item for item in value]
