"""LLaVA (1.5 and friends): a CLIP-like tower whose patches become consecutive image tokens, one square grid."""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout


class LlavaAdapter(ArchitectureAdapter):
    """``LlavaForConditionalGeneration``: each image is ``(image_size / patch_size)^2`` consecutive image tokens
    (one more, the CLS token, with ``vision_feature_select_strategy="full"``; it belongs to no grid cell)."""

    family = "LLaVA (1.5, pixtral-12b, ...)"
    model_types = ("llava",)
    grid_description = (
        "one square grid per image; CLS token (strategy 'full') outside the grid; with a Pixtral tower "
        "(pixtral-12b) one (height/patch, width/patch) grid per image from `image_sizes`"
    )
    teacher_support = "yes"
    tested_configs = (
        "llava: CLIP tower (8 px, patch 2), Llama decoder; 1 and 2 images a row",
        "llava-pixtral: Pixtral tower (patch 4) in LlavaForConditionalGeneration; images 16x8, 8x12, 12x16",
    )

    prompt_template = "USER: {image}\n{question} ASSISTANT:"
    """LLaVA-1.5's prompt (for processors without a chat template)."""

    @staticmethod
    def pads_to_square(image_processor: Any) -> bool:
        """Whether LLaVA's own image processor pads the image to a square before resizing (``do_pad``)."""
        return bool(getattr(image_processor, "do_pad", False)) and type(image_processor).__name__.startswith(
            "LlavaImageProcessor"
        )

    def tokens_per_image(self, config: Any) -> tuple[int, int, int]:
        """(tokens per image, grid height, grid width)."""
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        extra = 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0
        return side * side + extra, side, side

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        if getattr(config.vision_config, "model_type", None) == "pixtral":
            return self._pixtral_layout(config, input_ids, model_kwargs)
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
            labels = [f"image {image}" for image in range(len(grids))]
            layouts.append(RowImageLayout(image_positions=positions, image_grids=grids, grid_labels=labels))
        return layouts

    def _pixtral_layout(
        self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]
    ) -> list[RowImageLayout]:
        """Pixtral-12b as ``LlavaForConditionalGeneration``: variable image sizes, rows ended by ``[IMG_BREAK]``."""
        from .grids import assign_media, merge_rows, per_item_list, token_positions
        from .mistral3 import pixtral_plan

        positions = token_positions(input_ids, self.image_token_id(config))
        image_sizes = per_item_list(model_kwargs.get("image_sizes"))
        patch = int(config.vision_config.patch_size)
        grids = assign_media(
            positions,
            lambda item, row: pixtral_plan(image_sizes[item], patch),
            kind="image",
            num_items=len(image_sizes),
            family="LLaVA (Pixtral tower)",
        )
        return merge_rows(positions, grids)
