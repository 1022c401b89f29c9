"""VipLLaVA: LLaVA with features from several tower layers; the CLS token is always dropped."""

from __future__ import annotations

from typing import Any

from .llava import LlavaAdapter


class VipLlavaAdapter(LlavaAdapter):
    """``VipLlavaForConditionalGeneration``: ``(image_size / patch_size)**2`` tokens per image, one square grid."""

    family = "VipLLaVA"
    model_types = ("vipllava",)
    grid_description = "one square grid per image (CLS dropped)"
    teacher_support = "yes"
    tested_configs = ("vipllava: CLIP tower (8 px, patch 2), features of layers -2 and -1; 2 images in a row",)

    def tokens_per_image(self, config: Any) -> tuple[int, int, int]:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side * side, side, side
