"""DeepSeek-OCR 2 and Unlimited-OCR: per image optional local crops, a global view and a view separator.

Both encode each view with a SAM tower whose neck ends in two stride-2 convolutions (so a view of ``S`` pixels gives
``ceil(ceil(floor(S / patch) / 2) / 2)`` feature rows), and write per image: the local crops (when the image was
cropped), then the global view, then one ``view_separator`` feature, all over the image placeholder token.

* Unlimited-OCR (DeepSeek-OCR style): the features ARE the SAM patch grid (a CLIP encoder over the SAM map). The
  crops are stitched into one ``(rows * q, cols * q)`` grid (``patches_grid`` gives columns and rows) and the global
  view is a ``(q, q)`` grid; every row of either ends with an ``image_newline`` feature.
* DeepSeek-OCR 2: a causal "visual flow" encoder reads the SAM patches and writes only its LEARNED queries: 144 per
  view (``query_768_resolution``) when the view has at most 144 SAM patches, else 256 (``query_1024_resolution``).
  Each query attends to every patch and to the earlier queries, so the queries are in no patch grid: each view is
  an honest 1-D grid in query order.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, square_grid, token_positions

SMALL_QUERIES, LARGE_QUERIES = 144, 256
"""DeepSeek-OCR 2's learned query tables (``query_768_resolution``, ``query_1024_resolution``)."""


def sam_feature_side(config: Any, pixels: int) -> int:
    """Feature rows (or columns) the SAM tower writes for `pixels` rows: patch embedding, then two stride-2 convs."""
    side = pixels // int(config.vision_config.sam_config.patch_size)
    return math.ceil(math.ceil(side / 2) / 2)


class _ViewsAdapter(PlaceholderAdapter):
    """Shared walk over images: local crops (if any), the global view, the separator."""

    def _view_plans(self, config: Any, model_kwargs: dict[str, Any]) -> list[MediaPlan]:
        """One plan per image (in `pixel_values` order) from the processor outputs: `pixel_values` `(images, 3, S,
        S)`, `pixel_values_local` `(crops, 3, T, T)`, `num_local_patches` (crops per image) and, for Unlimited-OCR,
        `patches_grid` (`[columns, rows]` per image)."""
        raise NotImplementedError

    @staticmethod
    def _local_counts(model_kwargs: dict[str, Any], num_images: int) -> list[int]:
        """Local crops per image (0 each when the inputs hold no `pixel_values_local`)."""
        if model_kwargs.get("pixel_values_local") is None:
            return [0] * num_images
        counts = per_item_list(model_kwargs.get("num_local_patches"))
        if len(counts) != num_images:
            raise ValueError(
                "The inputs hold `pixel_values_local` but no `num_local_patches` for each image; pass every output of "
                "the model's processor to generate()."
            )
        return [int(count) for count in counts]

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        positions = token_positions(input_ids, self.image_token_id(config))
        if model_kwargs.get("pixel_values") is None:
            return super().image_layout(config, input_ids, model_kwargs)
        plans = self._view_plans(config, model_kwargs)
        grids = assign_media(
            positions, lambda item, row: plans[item], kind="image", num_items=len(plans), family=self.family
        )
        return merge_rows(positions, grids)


class UnlimitedOcrAdapter(_ViewsAdapter):
    """``UnlimitedOcrForConditionalGeneration``: a stitched crops grid (if cropped) and a global grid per image."""

    family = "Unlimited-OCR"
    grid_description = (
        "per image the stitched local crops, a (rows * q, cols * q) grid from `patches_grid` (if the image was "
        "cropped), then the global view's (q, q) grid (q: the SAM tower's feature side, patch then two stride-2 "
        "convs); the newline ending every row and the view separator are in no grid"
    )

    def __init__(self) -> None:
        super().__init__(
            ("unlimited_ocr",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "unlimited_ocr: SAM patch 4, 64 px global views (4x4), 32 px crops (2x2 each), crops 3x1 and 1x2 "
                "(DeepSeek-OCR 2's PIL image processor; `patches_grid` as Unlimited-OCR's processor writes it)",
            ),
        )

    def _view_plans(self, config: Any, model_kwargs: dict[str, Any]) -> list[MediaPlan]:
        pixel_values = model_kwargs["pixel_values"]
        local = model_kwargs.get("pixel_values_local")
        counts = self._local_counts(model_kwargs, int(pixel_values.shape[0]))
        grid = per_item_list(model_kwargs.get("patches_grid"))
        if any(counts) and len(grid) != len(counts):
            raise ValueError(
                "Unlimited-OCR: the inputs hold local crops but no `patches_grid` (columns, rows) per image; pass "
                "every output of the model's processor to generate()."
            )
        global_side = sam_feature_side(config, int(pixel_values.shape[-2]))
        plans = []
        for image, count in enumerate(counts):
            grids, start = [], 0
            if count:
                columns, rows = (int(v) for v in grid[image])
                side = sam_feature_side(config, int(local.shape[-2]))
                height, width = rows * side, columns * side
                grids.append(("tiles", square_grid(height, width, start=0, row_stride=width + 1)))
                start = height * (width + 1)
            grids.append(("base", square_grid(global_side, global_side, start=start, row_stride=global_side + 1)))
            plans.append(MediaPlan(start + global_side * (global_side + 1) + 1, grids))
        return plans


class DeepseekOcr2Adapter(_ViewsAdapter):
    """``DeepseekOcr2ForConditionalGeneration``: one 1-D grid of learned queries per crop and for the global view."""

    family = "DeepSeek-OCR 2"
    grid_description = (
        "1-D: per image one grid per local crop (`tile k`), then the global view (`base`), each its learned causal "
        "queries in order (144 per view of at most 144 SAM patches, else 256; the queries read the whole view, "
        "they are no patch grid); the view separator is in no grid"
    )

    def __init__(self) -> None:
        super().__init__(
            ("deepseek_ocr2",),
            family=self.family,
            grid_description=self.grid_description,
            patch_grids=False,
            tested_configs=(
                "deepseek_ocr2: its PIL image processor (64 px global view, 32 px crops); 144 queries a view, the first "
                "image cropped 2x1",
            ),
        )

    @staticmethod
    def _queries(config: Any, view: torch.Tensor) -> int:
        patches = sam_feature_side(config, int(view.shape[-2])) * sam_feature_side(config, int(view.shape[-1]))
        return SMALL_QUERIES if patches <= SMALL_QUERIES else LARGE_QUERIES

    def _view_plans(self, config: Any, model_kwargs: dict[str, Any]) -> list[MediaPlan]:
        pixel_values = model_kwargs["pixel_values"]
        local = model_kwargs.get("pixel_values_local")
        counts = self._local_counts(model_kwargs, int(pixel_values.shape[0]))
        global_queries = self._queries(config, pixel_values)
        plans = []
        for count in counts:
            grids, start = [], 0
            for tile in range(count):
                queries = self._queries(config, local)
                grids.append((f"tile {tile}", torch.arange(start, start + queries)))
                start += queries
            grids.append(("base", torch.arange(start, start + global_queries)))
            plans.append(MediaPlan(start + global_queries + 1, grids))
        return plans
