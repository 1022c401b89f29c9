"""LLaVA-OneVision: LLaVA-NeXT's any-res tiles capped at ``anyres_max_N``, single-image base grids for multi-image
prompts, and pooled video frames."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import RowImageLayout
from .grids import (
    MediaPlan,
    assign_media,
    config_value,
    per_item_list,
    square_grid,
    token_positions,
)
from .llava_next import LlavaNextVideoAdapter, anyres_tile_grid, tower_feature_grid


class LlavaOnevisionAdapter(LlavaNextVideoAdapter):
    """``LlavaOnevisionForConditionalGeneration``.

    * A row with one image: base grid + tiles grid as LLaVA-NeXT, the tiles grid shrunk (bilinear) when it holds
      more than ``anyres_max_N`` tiles' worth of patches; a newline token ends each tile row.
    * A row with several images (``batch_num_images``): one base grid per image, then one newline token.
    * A video: ``(frames, ceil(side / 2), ceil(side / 2))`` pooled patches, then one newline token.
    """

    family = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    grid_description = (
        "single image: base grid + stitched any-res tiles grid (padding cut away, shrunk past anyres_max_N); "
        "several images in a row (`batch_num_images`): one base grid each; video: one (frames, h, w) grid of "
        "2x-pooled patches; newline tokens are in no grid"
    )
    teacher_support = "yes"
    tested_configs = (
        "llava_onevision: SigLIP tower, anyres_max_1 (tiles grid shrunk); a tiled 10x30 image, and 2 images in a row",
        "llava_onevision-video: the same plus a 2-frame video in each row",
    )

    def _image_plan(self, config: Any, image_size: list[int], strategy: str, aspect_ratio: str) -> MediaPlan:
        count, base = tower_feature_grid(config, strategy)
        side = base.shape[0]
        height, width = anyres_tile_grid(config, image_size)
        max_num_patches = int(aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(height * width / (max_num_patches * side**2))
        if ratio > 1.1:
            height, width = int(height // ratio), int(width // ratio)
        tiles = square_grid(height, width, start=count, row_stride=width + 1)
        return MediaPlan(count + height * (width + 1), [("base", base), ("tiles", tiles)])

    def _base_only_plan(self, config: Any, strategy: str) -> MediaPlan:
        count, base = tower_feature_grid(config, strategy)
        return MediaPlan(count + 1, [("", base)])

    def _video_plan(self, config: Any, frames: int, strategy: str) -> MediaPlan:
        count, _ = tower_feature_grid(config, strategy)
        pooled = math.ceil(int(count**0.5) / 2)
        per_frame = pooled * pooled
        grid = torch.arange(frames * per_frame).view(frames, pooled, pooled)
        return MediaPlan(frames * per_frame + 1, [("", grid)])

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        image_positions = token_positions(input_ids, self.image_token_id(config))
        video_positions = token_positions(input_ids, self.video_token_id(config))
        strategy = config_value(config, model_kwargs, "vision_feature_select_strategy", "full")
        aspect_ratio = config_value(config, model_kwargs, "vision_aspect_ratio", "anyres_max_9")
        image_sizes = per_item_list(model_kwargs.get("image_sizes"))
        batch_num_images = per_item_list(model_kwargs.get("batch_num_images"))
        # The model tiles an image only when its row holds exactly one (all images when `batch_num_images` is absent).
        tiled = [n == 1 for n in batch_num_images for _ in range(n)] if batch_num_images else None

        def image_plan(item: int, row: int) -> MediaPlan:
            if tiled is not None and item < len(tiled) and not tiled[item]:
                return self._base_only_plan(config, strategy)
            return self._image_plan(config, image_sizes[item], strategy, aspect_ratio)

        image_grids = assign_media(
            image_positions, image_plan, kind="image", num_items=len(image_sizes), family="LLaVA-OneVision"
        )
        return self._with_videos(config, model_kwargs, strategy, image_positions, video_positions, image_grids)
