"""LLaVA-NeXT (1.6) and LLaVA-NeXT-Video: any-resolution tiles, a base image and newline tokens.

Each image becomes the base image's features (a square grid of the vision tower's patches) followed by the tiled
high-resolution view: the tiles are stitched into one grid, the padding the processor added is cut away
(``unpad_image``) and one ``image_newline`` token ends every row. All of it uses the image token id. Videos
(LLaVA-NeXT-Video) are pooled frames, one square grid per frame, without newline tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .base import ArchitectureAdapter, RowImageLayout
from .grids import (
    MediaPlan,
    assign_media,
    config_value,
    merge_rows,
    per_item_list,
    square_grid,
    token_positions,
    union_positions,
)

# Vision towers whose output has no CLS token in front of the patches.
_CLS_FREE_TOWERS = ("siglip_vision_model", "siglip2_vision_model", "pixtral", "aimv2_vision_model")


def tower_feature_grid(config: Any, strategy: str) -> tuple[int, torch.Tensor]:
    """Features one crop yields after the select strategy, and where each patch sits among them.

    The tower outputs ``[CLS] + side * side`` patch features (no CLS for SigLIP-like towers); ``"default"`` drops
    the first feature (the CLS token, or the first patch of a tower without one), ``"full"`` keeps all.

    Returns:
        (number of features, `torch.LongTensor` of shape `(side, side)`: each patch's offset among them, -1 where
        the strategy dropped it).
    """
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    has_cls = getattr(vision, "model_type", "") not in _CLS_FREE_TOWERS
    offsets = square_grid(side) + int(has_cls)
    count = side * side + int(has_cls)
    if strategy == "default":
        offsets, count = offsets - 1, count - 1
    return count, offsets


def anyres_tile_grid(config: Any, image_size: list[int]) -> tuple[int, int]:
    """Height and width (in patches) of the tiled high-resolution view after the padding is cut away, exactly as
    ``LlavaNextModel.pack_image_features`` computes it."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    tiles_high, tiles_wide = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, vision.image_size)
    stitched = torch.empty(1, tiles_high * side, tiles_wide * side)
    height, width = unpad_image(stitched, image_size).shape[1:]
    return int(height), int(width)


def image_sizes_layout(
    adapter: ArchitectureAdapter,
    config: Any,
    input_ids: torch.Tensor,
    model_kwargs: dict[str, Any],
    plan: Callable[[list[int]], MediaPlan],
    family: str,
) -> list[RowImageLayout]:
    """The layout of families whose image plan follows from each image's ``image_sizes`` entry (LLaVA-NeXT's any-res
    tiles, Granite 4 Vision): `plan(image_size)` per image, images assigned to the rows' placeholder runs in order.
    A prompt with image tokens but no ``image_sizes`` is refused."""
    positions = token_positions(input_ids, adapter.image_token_id(config))
    image_sizes = per_item_list(model_kwargs.get("image_sizes"))
    if not image_sizes and any(row.numel() for row in positions):
        raise ValueError(
            f"{type(adapter).__name__}: the prompt has image tokens but no `image_sizes`; pass the processor's "
            "outputs (including `image_sizes`) to generate()."
        )
    grids = assign_media(
        positions, lambda item, row: plan(image_sizes[item]), kind="image", num_items=len(image_sizes), family=family
    )
    return merge_rows(positions, grids)


class LlavaNextAdapter(ArchitectureAdapter):
    """``LlavaNextForConditionalGeneration``: per image a base grid and a tiles grid (exact, from ``image_sizes``)."""

    family = "LLaVA-NeXT (1.6)"
    model_types = ("llava_next",)
    grid_description = (
        "two grids per image: the base image (tower patches) and the stitched any-res tiles with the padding cut "
        "away, as `image_sizes` fixes them; the newline token ending each tile row is in no grid"
    )
    teacher_support = "yes"
    tested_configs = (
        "llava_next: CLIP tower (8 px, patch 2), pinpoints 8x16/16x8/16x16/8x24; images 10x30, 20x12, 16x16",
    )

    def _image_plan(self, config: Any, image_size: list[int], strategy: str) -> MediaPlan:
        count, base = tower_feature_grid(config, strategy)
        height, width = anyres_tile_grid(config, image_size)
        tiles = square_grid(height, width, start=count, row_stride=width + 1)
        return MediaPlan(count + height * (width + 1), [("base", base), ("tiles", tiles)])

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        strategy = config_value(config, model_kwargs, "vision_feature_select_strategy", "default")
        return image_sizes_layout(
            self, config, input_ids, model_kwargs, lambda size: self._image_plan(config, size, strategy), "LLaVA-NeXT"
        )


class LlavaNextVideoAdapter(LlavaNextAdapter):
    """``LlavaNextVideoForConditionalGeneration``: images as LLaVA-NeXT; each video one `(frames, h, w)` grid of
    pooled patches (``spatial_pool_stride``)."""

    family = "LLaVA-NeXT-Video"
    model_types = ("llava_next_video",)
    grid_description = (
        "images as LLaVA-NeXT (base + tiles grids); each video one (frames, height, width) grid of pooled patches"
    )
    teacher_support = "yes"
    tested_configs = ("llava_next_video: a 3-frame video (pool stride 2) and a 10x30 image in one row",)

    def video_token_id(self, config: Any) -> int:
        token_id = getattr(config, "video_token_id", None)
        return int(token_id if token_id is not None else config.video_token_index)

    def _video_plan(self, config: Any, frames: int, strategy: str) -> MediaPlan:
        count, _ = tower_feature_grid(config, strategy)
        side = int(count**0.5)
        pooled = side // config.spatial_pool_stride
        per_frame = pooled * pooled
        grid = torch.arange(frames * per_frame).view(frames, pooled, pooled)
        return MediaPlan(frames * per_frame, [("", grid)])

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        image_id, video_id = self.image_token_id(config), self.video_token_id(config)
        image_positions = token_positions(input_ids, image_id)
        video_positions = token_positions(input_ids, video_id)
        strategy = config_value(config, model_kwargs, "vision_feature_select_strategy", "default")
        image_sizes = per_item_list(model_kwargs.get("image_sizes"))
        image_grids = assign_media(
            image_positions,
            lambda item, row: self._image_plan(config, image_sizes[item], strategy),
            kind="image",
            num_items=len(image_sizes),
            family="LLaVA-NeXT-Video",
        )
        return self._with_videos(config, model_kwargs, strategy, image_positions, video_positions, image_grids)

    def _with_videos(
        self,
        config: Any,
        model_kwargs: dict[str, Any],
        strategy: str,
        image_positions: list[torch.Tensor],
        video_positions: list[torch.Tensor],
        image_grids: list,
    ) -> list[RowImageLayout]:
        """Adds each video's `(frames, h, w)` grid (from `_video_plan`) to the rows' image grids."""
        videos = model_kwargs.get("pixel_values_videos")
        frames = int(videos.shape[1]) if videos is not None else 0
        video_grids = assign_media(
            video_positions,
            lambda item, row: self._video_plan(config, frames, strategy),
            kind="video",
            num_items=int(videos.shape[0]) if videos is not None else 0,
            family=self.family,
        )
        positions = union_positions(image_positions, video_positions)
        return merge_rows(positions, image_grids, video_grids)
