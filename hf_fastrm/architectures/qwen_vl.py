"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL (and its MoE twin): merged patches sized by ``image_grid_thw``.

The vision tower cuts an image into ``(t, h, w)`` patches (``image_grid_thw``, in patches) and merges each
``spatial_merge_size x spatial_merge_size`` block into one token, in row-major block order. So an image is
``t * h * w / merge**2`` image tokens on a ``(h / merge, w / merge)`` grid; a video the same with ``t`` frame
groups (``video_grid_thw``). Qwen3-VL writes a timestamp between frames: tokens stay in frame order.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, token_positions, union_positions


class Qwen2VLAdapter(ArchitectureAdapter):
    """``Qwen2VLForConditionalGeneration`` and the families that share its vision layout (exact)."""

    family = "Qwen2-VL, Qwen2.5-VL, Qwen3-VL"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
    image_inputs = ("pixel_values", "image_grid_thw")
    video_inputs = ("pixel_values_videos", "video_grid_thw")
    grid_description = (
        "one (h/merge, w/merge) grid per image from `image_grid_thw` (merged patches, row-major); one "
        "(t, h/merge, w/merge) grid per video from `video_grid_thw`"
    )
    teacher_support = "yes (qwen3_vl_moe: exact but slow, its grouped expert matmul has no vmap rule)"
    tested_configs = (
        "qwen2_vl: patch 2, merge 2; images 8x12, 16x8, 12x12 (2 rows)",
        "qwen2_vl-video: the same plus a 4-frame video (grid_thw 2x4x6)",
        "qwen2_5_vl: window attention (window 8 px, full attention in block 1); the 3 images",
        "qwen3_vl-video: deepstack layer 0; the 3 images and a video written frame by frame with timestamps",
        "qwen3_vl_moe: the Qwen3-VL case's images with a 4-expert MoE decoder",
    )

    def merge_size(self, config: Any) -> int:
        return int(getattr(config.vision_config, "spatial_merge_size", 2))

    def video_token_id(self, config: Any) -> int:
        return int(config.video_token_id)

    def _plan(self, grid_thw: list[int], merge: int, squeeze_time: bool) -> MediaPlan:
        frames, height, width = (int(v) for v in grid_thw)
        height, width = height // merge, width // merge
        grid = torch.arange(frames * height * width).view(frames, height, width)
        if squeeze_time and frames == 1:
            grid = grid[0]
        return MediaPlan(frames * height * width, [("", grid)])

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        merge = self.merge_size(config)
        image_positions = token_positions(input_ids, self.image_token_id(config))
        video_positions = token_positions(input_ids, self.video_token_id(config))
        family = type(self).__name__.removesuffix("Adapter")
        image_thw = per_item_list(model_kwargs.get("image_grid_thw"))
        video_thw = per_item_list(model_kwargs.get("video_grid_thw"))
        image_grids = assign_media(
            image_positions,
            lambda item, row: self._plan(image_thw[item], merge, squeeze_time=True),
            kind="image",
            num_items=len(image_thw),
            family=family,
        )
        video_grids = assign_media(
            video_positions,
            lambda item, row: self._plan(video_thw[item], merge, squeeze_time=False),
            kind="video",
            num_items=len(video_thw),
            family=family,
        )
        positions = union_positions(image_positions, video_positions)
        return merge_rows(positions, image_grids, video_grids)
