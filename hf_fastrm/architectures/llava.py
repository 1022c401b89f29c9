"""LLaVA (1.5 and friends): a CLIP-like tower whose patches become consecutive image tokens, one square grid."""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout


class LlavaAdapter(ArchitectureAdapter):
    """``LlavaForConditionalGeneration``: each image is ``(image_size / patch_size)^2`` consecutive image tokens
    (one more, the CLS token, with ``vision_feature_select_strategy="full"``; it belongs to no grid cell)."""

    model_types = ("llava",)
    grid_description = "one square grid per image; CLS token (strategy 'full') outside the grid"

    def tokens_per_image(self, config: Any) -> tuple[int, int, int]:
        """(tokens per image, grid height, grid width)."""
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        extra = 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0
        return side * side + extra, side, side

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        per_image, height, width = self.tokens_per_image(config)
        extra = per_image - height * width
        layouts = []
        for row, positions in enumerate(self.image_token_positions(input_ids, self.image_token_id(config))):
            if positions.numel() % per_image:
                raise ValueError(
                    f"Row {row} of the prompt has {positions.numel()} image tokens, not a multiple of the "
                    f"{per_image} tokens one image takes in this model. Build prompts with the model's processor."
                )
            grids = [
                (torch.arange(height * width) + image * per_image + extra).view(height, width)
                for image in range(positions.numel() // per_image)
            ]
            layouts.append(RowImageLayout(image_positions=positions, image_grids=grids))
        return layouts
