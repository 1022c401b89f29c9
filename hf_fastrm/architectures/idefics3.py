"""Idefics3 and SmolVLM: image splitting into square crops plus a global image, each a run of image tokens.

The processor writes, per image split into ``rows x cols`` crops::

    <fake_token_around_image><row_1_col_1><image>*n ... <fake_token_around_image><row_1_col_C><image>*n \\n
    ...
    \\n <fake_token_around_image><global-img><image>*n <fake_token_around_image>

and for an image that is not split only the global part. Each crop is ``n = (side / scale_factor)**2`` tokens, a
pixel-shuffled ``(side / scale_factor)`` square grid. Neither the row/column counts nor the marker token ids reach
the model's forward (only ``image_token_id`` is in the config), so they are read off the prompt:

* the global image is the run whose preceding token equals the one before the row's last run (every image ends
  with its global run, so that token is ``<global-img>``);
* the crops before it form the image's tiles; a new crop row starts where more than two tokens (the fake token
  and the row/column token) separate a crop from the previous one, i.e. after the ``\\n``.

This holds for prompts built by the processor with the checkpoints' tokenizers (the marker tokens are single
special tokens); if the row breaks cannot be read, each crop gets its own grid, and a row whose sub-images follow
each other without markers (a hand-made prompt) gets one grid per sub-image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, RowImageLayout
from .grids import build_row_layout, consecutive_runs, square_grid, token_positions

# Tokens between two crops of one crop row: <fake_token_around_image> and <row_i_col_j>.
_IN_ROW_GAP = 2


def split_into_blocks(positions: torch.Tensor, block: int, family: str, row: int) -> list[int]:
    """Start indices (into `positions`) of the sub-images: runs of consecutive image tokens, each `block` long
    (a run of several blocks without separators is cut into blocks)."""
    starts = []
    for start, length in consecutive_runs(positions):
        if length % block:
            raise ValueError(
                f"{family}: row {row} of the prompt has a run of {length} image tokens, not a multiple of the {block} "
                "tokens one (sub-)image takes in this model. Build prompts with the model's processor."
            )
        starts.extend(range(start, start + length, block))
    return starts


class Idefics3Adapter(ArchitectureAdapter):
    """``Idefics3ForConditionalGeneration`` and ``SmolVLMForConditionalGeneration`` (text decoder at
    ``model.model.text_model``)."""

    family = "Idefics3, SmolVLM / SmolVLM2"
    model_types = ("idefics3", "smolvlm")
    grid_description = (
        "split image: one grid of the crops stitched in their rows x cols arrangement (read from the row/column "
        "marker tokens in the prompt) + one global-image grid; unsplit image or video frame: one grid; each crop "
        "is a pixel-shuffled (side/scale_factor)^2 square"
    )
    teacher_support = "yes"
    tested_configs = (
        "idefics3: crops of 8 px (4 tokens each), longest edge 16; split images giving 2x2, 1x2 and 2x1 crops",
        "smolvlm: the same tower; split images in one row, unsplit images (as video frames) in the other",
    )

    def language_model(self, model: nn.Module) -> nn.Module:
        inner = getattr(model, "model", model)
        text_model = getattr(inner, "text_model", None)
        if text_model is None:
            raise ValueError(
                f"Cannot find the text model of {type(model).__name__} (expected `model.model.text_model`)."
            )
        return text_model

    def crop_side(self, config: Any) -> int:
        vision = config.vision_config
        return (vision.image_size // vision.patch_size) // config.scale_factor

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        side = self.crop_side(config)
        block = side * side
        family = type(self).__name__.removesuffix("Adapter")
        layouts = []
        for row, positions in enumerate(token_positions(input_ids, self.image_token_id(config))):
            ids = input_ids[row].cpu()
            starts = split_into_blocks(positions, block, family, row)
            sub_images = [positions[start : start + block] for start in starts]
            tags = [int(ids[sub[0] - 1]) if sub[0] > 0 else -1 for sub in sub_images]
            gaps = [int(sub_images[i][0] - sub_images[i - 1][-1] - 1) if i else -1 for i in range(len(sub_images))]
            if self.image_token_id(config) in tags:  # sub-images without markers between them: a hand-made prompt
                tags = [-1] * len(tags)
            global_tag = tags[-1] if tags else None
            grids: list[tuple[str, torch.Tensor]] = []
            crops: list[int] = []
            image = 0
            for index, sub in enumerate(sub_images):
                if tags[index] != global_tag:
                    crops.append(index)
                    continue
                label = f"image {image}"
                global_grid = sub[square_grid(side)]
                if crops:
                    grids.extend(
                        self._crop_grids(label, [sub_images[i] for i in crops], [gaps[i] for i in crops], side)
                    )
                    grids.append((f"{label} global", global_grid))
                else:
                    grids.append((label, global_grid))
                crops = []
                image += 1
            for crop in crops:  # crops with no global image after them: a hand-made prompt
                grids.append((f"image {image} crop", sub_images[crop][square_grid(side)]))
            layouts.append(build_row_layout(positions, grids))
        return layouts

    @staticmethod
    def _crop_grids(
        label: str, crops: list[torch.Tensor], gaps: list[int], side: int
    ) -> list[tuple[str, torch.Tensor]]:
        """The crops stitched into one `(rows * side, cols * side)` grid, or one grid per crop if rows are unclear."""
        row_starts = [0] + [i for i in range(1, len(crops)) if gaps[i] > _IN_ROW_GAP]
        cols = row_starts[1] if len(row_starts) > 1 else len(crops)
        rows = len(crops) // cols
        regular = rows * cols == len(crops) and row_starts == list(range(0, len(crops), cols))
        if not regular:
            return [(f"{label} crop {i}", crop[square_grid(side)]) for i, crop in enumerate(crops)]
        stitched = torch.empty(rows * side, cols * side, dtype=torch.long)
        for i, crop in enumerate(crops):
            r, c = divmod(i, cols)
            stitched[r * side : (r + 1) * side, c * side : (c + 1) * side] = crop[square_grid(side)]
        return [(f"{label} tiles", stitched)]
