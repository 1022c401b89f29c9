"""Granite 4 Vision: LLaVA-NeXT any-resolution tiles, each crop shrunk by Window Q-Former downsamplers.

Every crop's ``side x side`` patch features (``side = image_size / patch_size``, CLS dropped) go through a Window
Q-Former that writes ``side * r`` by ``side * r`` features (``r = downsample_rate``, e.g. ``"1/2"``), in raster order.
``pack_image_features`` then lays an image out as LLaVA-NeXT does at that reduced side: the base crop's
``(side * r)^2`` features, then the crops stitched into one grid with the padding cut away (``unpad_image``) and one
``image_newline`` feature ending each row. The deepstack projectors add further copies of the same layout at later
decoder layers (the prompt's tokens are the same), so one layout serves them all.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, square_grid
from .llava_next import image_sizes_layout


def reduced_side(config: Any) -> int:
    """Features along one side of a crop after the Q-Former downsampler: ``image_size / patch_size * rate``."""
    vision = config.vision_config
    return int(vision.image_size // vision.patch_size * Fraction(config.downsample_rate))


def granite4_tile_grid(config: Any, image_size: list[int]) -> tuple[int, int]:
    """Rows and columns of the stitched crops after the padding is cut away, as ``pack_image_features`` does."""
    from transformers.models.granite4_vision.modeling_granite4_vision import get_anyres_image_grid_shape, unpad_image

    side = reduced_side(config)
    tiles_high, tiles_wide = get_anyres_image_grid_shape(
        image_size, config.image_grid_pinpoints, config.vision_config.image_size
    )
    stitched = torch.empty(1, tiles_high * side, tiles_wide * side)
    height, width = unpad_image(stitched, image_size).shape[1:]
    return int(height), int(width)


class Granite4VisionAdapter(PlaceholderAdapter):
    """``Granite4VisionForConditionalGeneration``: a base grid and a tiles grid per image (from ``image_sizes``)."""

    family = "Granite 4 Vision"
    grid_description = (
        "two grids per image at the Q-Former's reduced side (image_size / patch_size * downsample_rate): the base "
        "crop and the stitched any-res crops with the padding cut away, as `image_sizes` fixes them; the newline "
        "ending each tile row is in no grid"
    )

    def __init__(self) -> None:
        super().__init__(
            ("granite4_vision",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "granite4_vision: CLIP tower 16 px / patch 4, downsample 1/2, pinpoints 16x32/32x16/32x32, one "
                "deepstack and one spatial layer; images 10x30, 20x12, 16x16",
            ),
        )

    def _image_plan(self, config: Any, image_size: list[int]) -> MediaPlan:
        side = reduced_side(config)
        height, width = granite4_tile_grid(config, image_size)
        base = square_grid(side)
        tiles = square_grid(height, width, start=side * side, row_stride=width + 1)
        return MediaPlan(side * side + height * (width + 1), [("base", base), ("tiles", tiles)])

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        return image_sizes_layout(
            self, config, input_ids, model_kwargs, lambda size: self._image_plan(config, size), self.family
        )
