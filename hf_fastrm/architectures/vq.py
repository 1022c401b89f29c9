"""Chameleon and Emu3: images tokenized by a VQ-VAE, the codes' embeddings written over image placeholder tokens.

Both processors (transformers 5.24) write a run of ``<image>`` placeholder ids (``config.image_token_id``, read from
the vocabulary map) per image; the model's forward encodes the pixels with its VQ-VAE (`get_image_tokens`: the
latent grid's argmin codes, mapped to vocabulary ids) and writes those ids' embeddings over the placeholders. So the
image tokens are the placeholders, and each image's grid is the VQ latent grid, the pixels downsampled by
``f = 2 ** (len(vq_config.channel_multiplier) - 1)`` (one factor 2 per encoder level but the last):

* Chameleon: ``(height / f, width / f)`` codes in row-major order, from `pixel_values` (every image of a batch has
  one size: the processor crops them square);
* Emu3: per image ``(height / f, width / f)`` from `image_sizes` (the pixels are padded to the batch's largest;
  the VQ-VAE crops each latent grid to its image), each row of codes followed by an end-of-line token
  (``<|extra_200|>``'s embedding, written over a placeholder too): ``h * (w + 1)`` placeholders, the end-of-line
  tokens in no grid cell.

The codes are discrete (an argmin), so no gradient reaches the pixels: a cell's "part of the image" is its VQ
latent cell, not something a pixel gradient can show.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, square_grid, token_positions


def vq_downsampling(config: Any) -> int:
    """The VQ-VAE encoder's spatial downsampling: 2 per level of `vq_config.channel_multiplier` but the last."""
    return 2 ** (len(config.vq_config.channel_multiplier) - 1)


class ChameleonAdapter(PlaceholderAdapter):
    """``ChameleonForConditionalGeneration``: one ``(height / f, width / f)`` VQ latent grid per image."""

    family = "Chameleon"
    grid_description = (
        "one (height/f, width/f) VQ latent grid per image from `pixel_values` (f = 2^(levels of "
        "`vq_config.channel_multiplier` - 1)); the image tokens are the `<image>` placeholders the codes replace"
    )

    def __init__(self) -> None:
        super().__init__(
            ("chameleon",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=("chameleon: VQ-VAE of 2 levels (f = 2) on 8x8 images: 4x4 codes; 1 and 2 images a row",),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        pixel_values = model_kwargs.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            return super().image_layout(config, input_ids, model_kwargs)
        factor = vq_downsampling(config)
        height, width = int(pixel_values.shape[-2]) // factor, int(pixel_values.shape[-1]) // factor
        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(height * width, [("", square_grid(height, width))]),
            kind="image",
            num_items=int(pixel_values.shape[0]),
            family=self.family,
        )
        return merge_rows(positions, grids)


class Emu3Adapter(PlaceholderAdapter):
    """``Emu3ForConditionalGeneration``: per image a ``(height / f, width / f)`` VQ latent grid from `image_sizes`;
    the end-of-line token after each row of codes is in no grid."""

    family = "Emu3"
    grid_description = (
        "one (height/f, width/f) VQ latent grid per image from `image_sizes` (f = 2^(levels of "
        "`vq_config.channel_multiplier` - 1)); the end-of-line token after each row of codes (a placeholder too) is "
        "in no grid"
    )
    image_inputs = ("pixel_values", "image_sizes")

    def __init__(self) -> None:
        super().__init__(
            ("emu3",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "emu3: VQ-VAE of 3 levels (f = 4); images 16x16, 16x24, 24x16 padded to 24x24 with `image_sizes`: "
                "4x4, 4x6, 6x4 codes plus an end-of-line token a row",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        sizes = per_item_list(model_kwargs.get("image_sizes"))
        if not sizes:
            return super().image_layout(config, input_ids, model_kwargs)
        factor = vq_downsampling(config)
        shapes = [(int(size[0]) // factor, int(size[1]) // factor) for size in sizes]

        def plan(item: int, row: int) -> MediaPlan:
            height, width = shapes[item]
            return MediaPlan(height * (width + 1), [("", square_grid(height, width, row_stride=width + 1))])

        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(positions, plan, kind="image", num_items=len(shapes), family=self.family)
        return merge_rows(positions, grids)
