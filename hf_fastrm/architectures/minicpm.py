"""MiniCPM-V 4.6 / 4.7 and MiniCPM-OCR: NaViT-packed patches, merged, written over image placeholder tokens.

In transformers 5.24 these models write image features over ``config.image_token_id`` placeholders (the default
config leaves the id unset: checkpoints set it) with ``masked_scatter``, one run per encoded picture, in the order of
``target_sizes`` (each picture's patch rows and columns; the whole image and each of its slices are separate
pictures). Each picture's patches are merged row-major: the window-attention merger halves the grid (unless
``downsample_mode="4x"``), then the merger takes ``merge_kernel_size`` blocks ``merger_times`` times, so a picture
of ``(h, w)`` patches gives an ``(h / d_h, w / d_w)`` grid, row-major, that the generic adapter cannot know.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import grids_from_shapes, per_item_list


class MiniCPMVAdapter(PlaceholderAdapter):
    """``MiniCPMV4_6ForConditionalGeneration`` and kin: one merged grid per `target_sizes` entry."""

    family = "MiniCPM-V 4.6 / 4.7, MiniCPM-OCR"
    grid_description = (
        "one (h/d, w/d) grid per `target_sizes` entry (d = 2 for the window merger unless downsample_mode='4x', "
        "times merge_kernel_size^merger_times); a sliced image's slices are grids of their own (the slice "
        "arrangement is not among the forward's inputs)"
    )
    image_inputs = ("pixel_values", "target_sizes")
    video_inputs = ("pixel_values_videos", "target_sizes_videos")

    def __init__(self) -> None:
        super().__init__(
            ("minicpmv4_6", "minicpmv4_7", "minicpm_ocr"),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support="no: hybrid decoder (Qwen3.5 text model: Gated DeltaNet linear-attention layers have no "
            "attention map to record)",
            tested_configs=(
                "minicpmv4_6: target_sizes 8x8, 8x12, 12x8 patches (window merger 2, merger 2): 2x2, 2x3, 3x2",
                "minicpmv4_7: the same with its 3-D rotary positions (mm_token_type_ids)",
                "minicpm_ocr: minicpmv4_6's model code, downsample_mode '4x' (no window merger): 4x4, 4x6, 6x4",
            ),
        )

    def downsampling(self, config: Any, model_kwargs: dict[str, Any]) -> tuple[int, int]:
        """Patches per grid cell along rows and columns."""
        mode = model_kwargs.get("downsample_mode") or config.downsample_mode
        window = 1 if mode == "4x" else 2
        merge_h, merge_w = (int(v) for v in config.merge_kernel_size)
        times = int(config.merger_times)
        return window * merge_h**times, window * merge_w**times

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        sizes = per_item_list(model_kwargs.get("target_sizes"))
        if not sizes:
            return super().image_layout(config, input_ids, model_kwargs)
        down_h, down_w = self.downsampling(config, model_kwargs)
        shapes = [(int(h) // down_h, int(w) // down_w) for h, w in sizes]
        return grids_from_shapes(input_ids, self.image_token_id(config), shapes, self.family)
