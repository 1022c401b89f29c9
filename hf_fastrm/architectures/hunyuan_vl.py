"""HunYuanVL: merged patches by ``image_grid_thw``, each row ended by a newline feature, the image wrapped in
begin/end features, all written over the image placeholder tokens.

``HunYuanVLVisionModel``'s merger appends one ``image_newline`` feature per merged row and puts ``image_begin`` /
``image_end`` around the image, so an image of ``(h, w)`` merged patches takes ``1 + h * (w + 1) + 1`` placeholder
tokens; the generic adapter (which expects ``h * w``) cannot know that.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, square_grid, token_positions


class HunYuanVLAdapter(PlaceholderAdapter):
    """``HunYuanVLForConditionalGeneration``: a ``(h/merge, w/merge)`` grid per image; newline, begin and end
    features are in no grid."""

    family = "HunYuanVL"
    grid_description = (
        "one (h/merge, w/merge) grid per image from `image_grid_thw`; the per-row newline and the begin/end "
        "features (placeholder tokens too) are in no grid"
    )

    def __init__(self) -> None:
        super().__init__(
            ("hunyuan_vl",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=("hunyuan_vl: image_grid_thw 1x4x4, 1x4x6, 1x6x4 (merge 2): 8, 11 and 11 tokens",),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        grid_thw = per_item_list(model_kwargs.get("image_grid_thw"))
        if not grid_thw:
            return super().image_layout(config, input_ids, model_kwargs)
        merge = self.merge_size(config)

        def plan(item: int, row: int) -> MediaPlan:
            _, height, width = (int(v) // merge if i else int(v) for i, v in enumerate(grid_thw[item]))
            grid = square_grid(height, width, start=1, row_stride=width + 1)
            return MediaPlan(height * (width + 1) + 2, [("", grid)])

        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(positions, plan, kind="image", num_items=len(grid_thw), family=self.family)
        return merge_rows(positions, grids)
