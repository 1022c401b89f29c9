"""Gemma 3: every image (and every pan-and-scan crop) is ``mm_tokens_per_image`` tokens on a square grid.

The vision tower's patches are average-pooled to a ``sqrt(mm_tokens_per_image)`` square (row-major) and written
between ``<start_of_image>`` and ``<end_of_image>``. With pan-and-scan the processor adds, after the original
image, one such block per crop; the crop boxes (``num_crops``) do not reach the model's forward, so each crop is
reported as its own grid, in prompt order after its original image.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import MediaPlan, assign_media, merge_rows, square_grid, token_positions


class Gemma3Adapter(ArchitectureAdapter):
    """``Gemma3ForConditionalGeneration`` (and ShieldGemma 2, which is the same model)."""

    family = "Gemma 3, ShieldGemma 2"
    model_types = ("gemma3", "shieldgemma2")
    grid_description = (
        "one sqrt(mm_tokens_per_image)^2 grid per image block (pooled patches, row-major); pan-and-scan crops are "
        "extra blocks reported as their own grids (the crop boxes are not among the forward's inputs)"
    )
    teacher_support = "yes"
    tested_configs = ("gemma3: SigLIP 8 px, mm_tokens_per_image 4; pan-and-scan on (an 8x24 image gives 3 crops)",)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        tokens = int(config.mm_tokens_per_image)
        side = round(tokens**0.5)
        positions = token_positions(input_ids, self.image_token_id(config))
        pixel_values = model_kwargs.get("pixel_values")
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(tokens, [("", square_grid(side))]),
            kind="image",
            num_items=int(pixel_values.shape[0]) if pixel_values is not None else None,
            family="Gemma3",
        )
        return merge_rows(positions, grids)
