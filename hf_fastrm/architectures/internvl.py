"""InternVL: ``<img>`` + ``<IMG_CONTEXT>`` * (tiles * n) + ``</img>`` per image, each tile a pixel-shuffled square.

The processor cuts an image into up to ``max_patches`` tiles of the tower's input size, then appends a thumbnail
of the whole image (when there is more than one tile). Each tile is ``n = (side * downsample_ratio)**2`` tokens.
The tile arrangement (``rows x cols``) is not among the forward's inputs and the prompt does not say it, so each
tile is its own grid, followed by the thumbnail's grid. Video frames are written as one-tile images.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import build_row_layout, consecutive_runs, square_grid, token_positions


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


class InternVLAdapter(ArchitectureAdapter):
    """``InternVLForConditionalGeneration``."""

    family = "InternVL (2.5, 3)"
    model_types = ("internvl",)
    grid_description = (
        "one grid per image with a single tile; otherwise one grid per tile (the rows x cols arrangement is not in "
        "the forward's inputs) then the thumbnail's grid; each tile a pixel-shuffled (side*downsample_ratio)^2 "
        "square"
    )
    teacher_support = "yes"
    tested_configs = ("internvl: 8 px tiles, downsample 0.5 (4 tokens a tile), up to 4 tiles; 8x20, 8x8, 16x8 images",)

    def tile_side(self, config: Any) -> int:
        vision = config.vision_config
        side = _first(vision.image_size) // _first(vision.patch_size)
        return int(side * config.downsample_ratio)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        side = self.tile_side(config)
        block = side * side
        layouts = []
        for row, positions in enumerate(token_positions(input_ids, self.image_token_id(config))):
            grids: list[tuple[str, torch.Tensor]] = []
            for image, (start, length) in enumerate(consecutive_runs(positions)):
                if length % block:
                    raise ValueError(
                        f"InternVL: row {row} of the prompt has an image of {length} tokens, not a multiple of the "
                        f"{block} tokens one tile takes in this model. Build prompts with the model's processor."
                    )
                tiles = [positions[start + offset : start + offset + block] for offset in range(0, length, block)]
                if len(tiles) == 1:
                    grids.append((f"image {image}", tiles[0][square_grid(side)]))
                    continue
                for index, tile in enumerate(tiles[:-1]):
                    grids.append((f"image {image} tile {index}", tile[square_grid(side)]))
                grids.append((f"image {image} thumbnail", tiles[-1][square_grid(side)]))
            layouts.append(build_row_layout(positions, grids))
        return layouts
