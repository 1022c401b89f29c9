"""HY-V4-VL: merged patches by ``image_grid_thw`` / ``video_grid_thw``, each merged row ended by a newline feature.

``HYV4VLVisionPatchMerger`` merges every frame on its own and appends one ``image_newline`` feature to each merged
row, so a frame of ``(h, w)`` merged patches takes ``h * (w + 1)`` placeholder tokens and a video of ``t`` frames
``t * h * (w + 1)`` (``HYV4VLModel.get_image_features`` splits its features that way; its rope index lays the
tokens out the same). Unlike HunYuanVL there are no begin/end features. The generic adapter (which expects
``t * h * w``) cannot know the newline column.
"""

from __future__ import annotations

import torch

from .generic import PlaceholderAdapter
from .grids import MediaPlan, square_grid


class HYV4VLAdapter(PlaceholderAdapter):
    """``HYV4VLForConditionalGeneration``: a ``(h/merge, w/merge)`` grid per image, ``(t, h/merge, w/merge)`` per
    video; the newline feature ending each merged row is in no grid."""

    family = "HY-V4-VL"
    grid_description = (
        "one (h/merge, w/merge) grid per image from `image_grid_thw`, (t, h/merge, w/merge) per video from "
        "`video_grid_thw`; the newline feature ending each merged row (a placeholder token too) is in no grid"
    )

    def __init__(self) -> None:
        super().__init__(
            ("hy_v4_vl",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support="yes (its learned attention sinks modelled as a dropped softmax column per head)",
            tested_configs=(
                "hy_v4_vl: image_grid_thw 1x4x4, 1x4x6, 1x6x4 (merge 2): 6, 8 and 9 tokens; hyper-connection MLA "
                "decoder with a sparse-attention indexer",
            ),
        )

    @staticmethod
    def _thw_plan(grid_thw: list[int], merge: int, squeeze_time: bool) -> MediaPlan:
        """`frames * height * (width + 1)` tokens: per frame, row-major merged rows each followed by a newline."""
        frames, height, width = (int(v) for v in grid_thw)
        height, width = height // merge, width // merge
        frame = height * (width + 1)
        grid = torch.stack([square_grid(height, width, start=t * frame, row_stride=width + 1) for t in range(frames)])
        return MediaPlan(frames * frame, [("", grid[0] if squeeze_time and frames == 1 else grid)])
