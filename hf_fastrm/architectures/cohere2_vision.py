"""Cohere2 Vision (Command A Vision): an image is cut into tiles plus a thumbnail, each tile its own square grid.

``Cohere2VisionProcessor`` writes an image as ``BOI + (tile_tokens + LINE_BREAK) * tiles + EOI``: every tile (a
crop of the image on the processor's tiled canvas, and, when there is more than one, a last tile that is the whole
image resized: the thumbnail, ``crop_image_to_patches(use_thumbnail=True)``) is one ``pixel_values`` entry and one run
of ``side x side`` image tokens after the tower's pixel shuffle. The canvas' rows and columns are not among the
forward's inputs (the processor drops ``num_patches``), so tiles are not stitched: each tile is one square grid (as
the generic adapter finds them), and this adapter only says which image each tile belongs to and which one is the
thumbnail. Tiles of one image are separated by exactly one token (the line break); two images by at least two (EOI,
BOI).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter


class Cohere2VisionAdapter(PlaceholderAdapter):
    """``Cohere2VisionForConditionalGeneration``: the generic square grids, one per tile, labelled by image."""

    family = "Cohere2 Vision (Command A Vision)"

    def __init__(self) -> None:
        super().__init__(
            ("cohere2_vision",),
            family=self.family,
            grid_description=(
                "one square grid per tile (token count confirmed by the vision config); an image cut into tiles "
                "gives `image k tile j` grids and `image k thumbnail` (the tile arrangement is not among the "
                "forward's inputs)"
            ),
            tested_configs=(
                "cohere2_vision: SigLIP tower 8 px / patch 2, pixel shuffle; 1 and 2 images a row; an image of 3 "
                "tiles (2 crops + thumbnail) beside 1-tile images in a left-padded batch "
                "(tests/models/test_cohere2_tiles.py)",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """The generic layout (one square grid per tile), with each grid labelled ``image k`` (an image of one tile),
        or ``image k tile j`` and ``image k thumbnail`` (an image of several tiles, the thumbnail last)."""
        layouts = super().image_layout(config, input_ids, model_kwargs)
        for layout in layouts:
            spans = []
            for grid in layout.image_grids:
                slots = grid[grid >= 0]
                positions = layout.image_positions[slots]
                spans.append((int(positions.min()), int(positions.max())))
            images: list[list[int]] = []
            for index, (start, _) in enumerate(spans):
                if images and start - spans[index - 1][1] == 2:  # one token (the line break) between two tiles
                    images[-1].append(index)
                else:
                    images.append([index])
            labels = [""] * len(spans)
            for image, tiles in enumerate(images):
                if len(tiles) == 1:
                    labels[tiles[0]] = f"image {image}"
                    continue
                for tile, grid_index in enumerate(tiles[:-1]):
                    labels[grid_index] = f"image {image} tile {tile}"
                labels[tiles[-1]] = f"image {image} thumbnail"
            layout.grid_labels = labels
        return layouts
