"""Mistral 3 (Pixtral tower): variable-size images, one row of ``[IMG]`` tokens per patch row.

The processor resizes each image to multiples of ``patch_size * spatial_merge_size`` (its size is in
``image_sizes``) and writes ``[IMG]`` per merged patch, ``[IMG_BREAK]`` after each row and ``[IMG_END]`` instead of
the last break. Only ``[IMG]`` carries image features; the break and end tokens are in no grid (nor among the image
tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, square_grid, token_positions


def pixtral_plan(image_size: list[int], patch: int) -> MediaPlan:
    """An image of `image_size` (height, width) pixels: `(height // patch, width // patch)` tokens, row-major."""
    height, width = int(image_size[0]) // patch, int(image_size[1]) // patch
    return MediaPlan(height * width, [("", square_grid(height, width))])


class Mistral3Adapter(ArchitectureAdapter):
    """``Mistral3ForConditionalGeneration``: grids from ``image_sizes`` (exact)."""

    family = "Mistral 3 (Mistral Small 3.1+, Pixtral tower)"
    model_types = ("mistral3",)
    grid_description = (
        "one (height/(patch*merge), width/(patch*merge)) grid per image from `image_sizes`; [IMG_BREAK]/[IMG_END] "
        "tokens are not image tokens"
    )
    teacher_support = "yes"
    tested_configs = ("mistral3: Pixtral tower patch 2, spatial merge 2; images 16x8, 8x12, 12x16",)

    def merged_patch(self, config: Any) -> int:
        return int(config.vision_config.patch_size) * int(getattr(config, "spatial_merge_size", 1))

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        patch = self.merged_patch(config)
        positions = token_positions(input_ids, self.image_token_id(config))
        image_sizes = per_item_list(model_kwargs.get("image_sizes"))
        grids = assign_media(
            positions,
            lambda item, row: pixtral_plan(image_sizes[item], patch),
            kind="image",
            num_items=len(image_sizes),
            family=type(self).__name__.removesuffix("Adapter"),
        )
        return merge_rows(positions, grids)
