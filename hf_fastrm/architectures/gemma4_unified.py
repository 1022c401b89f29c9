"""Gemma 4 unified (encoder-free): each merged ``k x k`` block of patches is one soft token, at ``image_position_ids``.

``Gemma4UnifiedImageProcessor`` merges each ``pooling_kernel_size x pooling_kernel_size`` block of patches into one
model patch (row-major over the blocks) and gives its ``(x, y)`` position in blocks (``(-1, -1)`` for padding);
``Gemma4UnifiedVisionEmbedder`` projects every real model patch to one soft token, with no tower and no pooling. So an
image is a ``(max y + 1, max x + 1)`` grid read off the positions: Gemma 4's rule with a kernel of 1.
"""

from __future__ import annotations

from typing import Any

from .gemma4 import Gemma4Adapter
from .generic import PlaceholderAdapter


class Gemma4UnifiedAdapter(Gemma4Adapter):
    """``Gemma4UnifiedForConditionalGeneration``: grids from ``image_position_ids`` counted in merged patches."""

    family = "Gemma 4 unified"
    grid_description = (
        "one (block rows, block cols) grid per image from `image_position_ids` (already in merged k x k blocks, one "
        "soft token each, row-major); without positions the generic rules"
    )

    def __init__(self) -> None:
        PlaceholderAdapter.__init__(
            self,
            ("gemma4_unified",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "gemma4_unified: encoder-free embedder (patch 4, merge 2: 8 px blocks); images 16x24, 24x16, 16x16",
            ),
        )

    def position_kernel(self, config: Any) -> int:
        return 1
