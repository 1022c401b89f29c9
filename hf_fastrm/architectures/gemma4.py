"""Gemma 4: variable-size images as padded patch lists with (x, y) patch positions, pooled k x k into soft tokens.

The image processor resizes each image (aspect ratio kept) to a multiple of ``patch_size * pooling_kernel_size``,
lists its patches with their ``(x, y)`` positions (``image_position_ids``, ``(-1, -1)`` for padding) and the model
average-pools each ``k x k`` block of patches into one soft token, in row-major block order
(``Gemma4VisionPooler``: index ``x // k + (width // k) * (y // k)``). So an image is a
``(patch_rows / k, patch_cols / k)`` grid, which the generic adapter cannot know: the positions are the only size
information the forward receives.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, merge_rows, token_positions


class Gemma4Adapter(PlaceholderAdapter):
    """``Gemma4ForConditionalGeneration``: grids from ``image_position_ids``."""

    family = "Gemma 4"
    grid_description = (
        "one (patch rows / k, patch cols / k) grid per image from `image_position_ids` (k = pooling_kernel_size; "
        "pooled blocks in row-major order); without positions the generic rules"
    )

    def __init__(self) -> None:
        super().__init__(
            ("gemma4",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "gemma4: its image processor (patch 4, pooling 2, no resize); images 16x24, 24x16, 16x16",
            ),
        )

    def position_kernel(self, config: Any) -> int:
        """Patch positions per soft token along each axis (``image_position_ids`` count patches, k x k pool)."""
        return int(config.vision_config.pooling_kernel_size)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        position_ids = model_kwargs.get("image_position_ids")
        if position_ids is None:
            return super().image_layout(config, input_ids, model_kwargs)
        kernel = self.position_kernel(config)
        shapes = []
        for positions in position_ids:  # (max_patches, 2) per image: (x, y), -1 for padding
            real = positions[(positions >= 0).all(dim=-1)]
            shapes.append(((int(real[:, 1].max()) + 1) // kernel, (int(real[:, 0].max()) + 1) // kernel))
        image_positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(
            image_positions,
            lambda item, row: MediaPlan(
                shapes[item][0] * shapes[item][1],
                [("", torch.arange(shapes[item][0] * shapes[item][1]).view(*shapes[item]))],
            ),
            kind="image",
            num_items=len(shapes),
            family=self.family,
        )
        return merge_rows(image_positions, grids)
