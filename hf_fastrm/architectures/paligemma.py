"""PaliGemma: the image tokens are a prefix, ``(image_size / patch_size)**2`` per image, one square grid each."""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import MediaPlan, assign_media, merge_rows, square_grid, token_positions


class PaliGemmaAdapter(ArchitectureAdapter):
    """``PaliGemmaForConditionalGeneration``: a SigLIP tower without CLS token, every patch one image token."""

    family = "PaliGemma (1, 2)"
    model_types = ("paligemma",)
    grid_description = "one (image_size/patch_size)^2 grid per image; the image tokens open the prompt"
    teacher_support = "yes"
    tested_configs = ("paligemma: SigLIP 8 px / patch 2 (16 tokens an image); 1 and 2 images a row",)

    def generated_token_types(self, key: str, value: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Generated tokens continue the prompt's causal suffix: they repeat its last ``token_type_ids`` value."""
        if key == "token_type_ids":
            return value[..., -1:].expand(*value.shape[:-1], new_tokens)
        return super().generated_token_types(key, value, new_tokens)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        positions = token_positions(input_ids, self.image_token_id(config))
        pixel_values = model_kwargs.get("pixel_values")
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(side * side, [("", square_grid(side))]),
            kind="image",
            num_items=int(pixel_values.shape[0]) if pixel_values is not None else None,
            family="PaliGemma",
        )
        return merge_rows(positions, grids)
