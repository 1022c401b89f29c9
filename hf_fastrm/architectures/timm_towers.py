"""Families whose vision tower is a timm model (FastVLM's FastViT, Gemma 3n's MobileNet v5, Perception LM's ViT).

Their configs name no image or patch size the generic adapter could confirm a square with (the tower's numbers live
in timm's own config), so the generic rules would give every image a 1-D grid. What the model code says instead:

* FastVLM and Gemma 3n: the tower is convolutional and returns a `(batch, channels, height, width)` map, which the
  model flattens row-major into the image's tokens; the processors crop (FastVLM) or resize (Gemma 3n) every image
  to a square, so an image of ``n`` tokens is a ``sqrt(n) x sqrt(n)`` grid (Gemma 3n: ``vision_soft_tokens_per_image``
  = 256, 16 x 16, in the released checkpoints).
* Perception LM: `pixel_values` is `(images, tiles, channels, height, width)`; every tile is a square ViT patch grid,
  average-pooled ``projector_pooling_ratio`` times, and its tokens follow each other tile by tile. With the processor's
  ``"thumb+tile"`` strategy tile 0 is the whole image (thumbnail) and the others its crops, so each image gets one
  square grid per tile (``"thumbnail"``, ``"tile 1"``, ...); videos likewise one square grid per frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media

NOT_SQUARE = "one 1-D grid per image when its token count is not a square"


class FeatureMapAdapter(PlaceholderAdapter):
    """A convolutional tower's row-major feature map of a square image: a square grid per image from its token
    count (the run of placeholders, or the prompt's tokens shared evenly by the images in `pixel_values`)."""

    def _count_plan(self, config: Any, count: int) -> MediaPlan:
        side = math.isqrt(count)
        if side * side != count:
            return MediaPlan(count, [("", torch.arange(count))])
        return MediaPlan(count, [("", torch.arange(count).view(side, side))])


class PerceptionLMAdapter(PlaceholderAdapter):
    """``PerceptionLMForConditionalGeneration``: one square grid per tile (images) or frame (videos)."""

    def __init__(self) -> None:
        super().__init__(
            ("perception_lm",),
            family="Perception LM",
            grid_description=(
                "one square grid per tile of each image (`pixel_values` (images, tiles, C, H, W); tile 0 the "
                "thumbnail under the processor's thumb+tile strategy) and per frame of each video; the generic "
                "rules when a tile's token count is not a square"
            ),
            tested_configs=(
                "perception_lm: 1 tile an image, 4 x 4 patches pooled to 2 x 2; 1 and 2 images a row (vision tower "
                "replaced by a CLIP ViT stand-in: timm cannot be installed beside the CPU torch here); layout only "
                "(tests/models/test_timm_towers.py): 2 images of 3 tiles (thumbnail + 2 tiles) and a video of 2 "
                "frames, token counts from the model's own features",
            ),
        )

    def _media_grids(
        self, config: Any, positions: list[torch.Tensor], kwargs: dict[str, Any], kind: str, family: str
    ) -> list[list[tuple[str, torch.Tensor]]]:
        pixel_values = kwargs.get("pixel_values" if kind == "image" else "pixel_values_videos")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
            return super()._media_grids(config, positions, kwargs, kind, family)
        items, parts = int(pixel_values.shape[0]), int(pixel_values.shape[1])
        total = sum(int(p.numel()) for p in positions)
        per_part, rest = divmod(total, max(items * parts, 1))
        side = math.isqrt(per_part)
        if rest or per_part == 0 or side * side != per_part:
            return super()._media_grids(config, positions, kwargs, kind, family)
        grid = torch.arange(per_part).view(side, side)
        if parts == 1:
            grids = [("", grid)]
        elif kind == "image":
            grids = [("thumbnail", grid)] + [(f"tile {t}", grid + t * per_part) for t in range(1, parts)]
        else:
            grids = [(f"frame {t}", grid + t * per_part) for t in range(parts)]
        plan = MediaPlan(per_part * parts, grids)
        return assign_media(positions, lambda item, row: plan, kind=kind, num_items=items, family=family)


TIMM_FAMILIES: tuple[PlaceholderAdapter, ...] = (
    FeatureMapAdapter(
        ("fast_vlm",),
        family="FastVLM",
        grid_description="one square grid per image: FastViT's row-major feature map of the square-cropped image; "
        + NOT_SQUARE,
        tested_configs=(
            "fast_vlm: 16 px images, a 4 x 4 feature map; 1 and 2 images a row (vision tower replaced by a ConvNeXt "
            "stand-in: timm cannot be installed beside the CPU torch here)",
        ),
    ),
    FeatureMapAdapter(
        ("gemma3n",),
        family="Gemma 3n",
        grid_description="one square grid per image: MobileNet v5's row-major feature map (`vision_soft_tokens_per_"
        "image` = 256, 16 x 16, in the released checkpoints); " + NOT_SQUARE,
        tested_configs=(
            "gemma3n: images only (no audio), 16 soft tokens (4 x 4) an image; 1 and 2 images a row; AltUp decoder "
            "(vision tower replaced by a ConvNeXt stand-in: timm cannot be installed beside the CPU torch here)",
        ),
    ),
    PerceptionLMAdapter(),
)
