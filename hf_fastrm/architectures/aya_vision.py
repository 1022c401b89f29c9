"""Aya Vision: per image, tiles tagged ``TILE_1 .. TILE_{n-1}`` and a global tile tagged ``TILE_GLOBAL``.

The processor writes ``<|START_OF_IMG|>`` then, for each tile, its tag and ``(side / downsample_factor)**2``
``<|IMG_PATCH|>`` tokens (a pixel-shuffled square, row-major), the global tile last, then ``<|END_OF_IMG|>``. The
tile arrangement (``rows x cols``) is not among the forward's inputs, so each tile is its own grid; the global
tile is recognised by its tag (the token before the row's last run, which is always a global tile).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import build_row_layout, square_grid, token_positions
from .idefics3 import split_into_blocks


class AyaVisionAdapter(ArchitectureAdapter):
    """``AyaVisionForConditionalGeneration`` (Cohere2 decoder)."""

    family = "Aya Vision"
    model_types = ("aya_vision",)
    grid_description = (
        "one grid per tile (the rows x cols arrangement is not in the forward's inputs) and one for the global "
        "tile; an image of a single tile is one grid; each tile a pixel-shuffled (side/downsample_factor)^2 square"
    )
    teacher_support = "yes"
    tested_configs = ("aya_vision: SigLIP 8 px, downsample 2, up to 4 tiles; 8x20, 8x8, 16x8 images",)

    def tile_side(self, config: Any) -> int:
        vision = config.vision_config
        return (vision.image_size // vision.patch_size) // int(config.downsample_factor)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        side = self.tile_side(config)
        block = side * side
        layouts = []
        for row, positions in enumerate(token_positions(input_ids, self.image_token_id(config))):
            ids = input_ids[row].cpu()
            tiles = [
                positions[start : start + block] for start in split_into_blocks(positions, block, "AyaVision", row)
            ]
            tags = [int(ids[tile[0] - 1]) if tile[0] > 0 else -1 for tile in tiles]
            if self.image_token_id(config) in tags:  # tiles without tags between them: one grid each
                tags = [-1] * len(tags)
            global_tag = tags[-1] if tags else None
            grids: list[tuple[str, torch.Tensor]] = []
            pending: list[torch.Tensor] = []
            image = 0
            for tile, tag in zip(tiles, tags, strict=True):
                if tag != global_tag:
                    pending.append(tile)
                    continue
                if pending:
                    grids.extend((f"image {image} tile {i}", t[square_grid(side)]) for i, t in enumerate(pending))
                    grids.append((f"image {image} global", tile[square_grid(side)]))
                else:
                    grids.append((f"image {image}", tile[square_grid(side)]))
                pending = []
                image += 1
            grids.extend((f"image {image} tile {i}", t[square_grid(side)]) for i, t in enumerate(pending))
            layouts.append(build_row_layout(positions, grids))
        return layouts
