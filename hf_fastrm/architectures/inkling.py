"""Inkling (``inkling_mm_model``) and Inkling 2 (``inkling2``, ``inkling2_loop``): one placeholder token per patch.

* Inkling's image processor cuts each image into ``patch_size`` squares, row-major, ``ceil(height / patch)`` rows of
  ``width // patch + 1`` columns (always one padded column more than the image fills), and its tower folds each
  patch (two copies in time) into ONE feature. The processor counts the patches per image (``num_patches``) but
  drops that count before the model (``unused_input_names``): the forward receives only the concatenated
  ``pixel_values`` of shape ``(patches, 2, patch, patch, channels)``. Neither the rows and columns of an image nor
  even where one image ends are among its inputs, so each run of consecutive image tokens (the processor writes
  ``<|content_image|>`` before each image) is one image, a 1-D grid in row-major patch order. The generic adapter
  would instead read ``pixel_values.shape[0]`` as the number of images (one token each).
* Inkling 2's image processor cuts each image into ``patch_size * spatial_merge_size`` squares, one per image token,
  and writes ``image_grid_thw`` counted in those tokens (``[1, ceil(height / side), ceil(width / side)]``), not in
  native patches as Qwen-VL does. So the grid is ``image_grid_thw``'s rows and columns with a merge of 1; the
  generic adapter would divide them by ``spatial_merge_size`` once more.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import consecutive_runs, merge_rows, token_positions


class InklingAdapter(PlaceholderAdapter):
    """``InklingForConditionalGeneration``: one 1-D grid per run of consecutive image tokens (a patch a token)."""

    family = "Inkling"
    grid_description = (
        "one 1-D grid per run of consecutive image tokens, patches in row-major order: the forward receives no "
        "patch rows/columns or per-image patch counts (the processor drops `num_patches`)"
    )

    def __init__(self) -> None:
        super().__init__(
            ("inkling_mm_model",),
            family=self.family,
            grid_description=self.grid_description,
            patch_grids=False,
            teacher_support="no: the teacher drops the relative-position logits (`position_bias`) its attention adds, "
            "so the teacher-forced forward departs from the model; short convolutions on keys/values mix tokens "
            "outside any attention map. FastRM is unaffected",
            tested_configs=(
                "inkling_mm_model: pixel values as its image processor lays them out (patch 4, images 8x8, 8x12, "
                "10x6: 6, 8 and 6 patches); hybrid short-convolution / attention decoder",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        positions = token_positions(input_ids, self.image_token_id(config))
        grids = []
        for row_positions in positions:
            runs = consecutive_runs(row_positions)
            grids.append(
                [
                    (f"image {index}", row_positions[start : start + length])
                    for index, (start, length) in enumerate(runs)
                ]
            )
        return merge_rows(positions, grids)


class Inkling2Adapter(PlaceholderAdapter):
    """``Inkling2ForConditionalGeneration`` / ``Inkling2LoopForConditionalGeneration``: grids straight from
    ``image_grid_thw`` (counted in image tokens, so no merge division)."""

    family = "Inkling 2, Inkling 2 Loop"
    grid_description = (
        "one (rows, cols) grid per image from `image_grid_thw`, which Inkling 2 counts in image tokens (merged "
        "patch blocks), not in native patches: no division by `spatial_merge_size`"
    )

    def __init__(self) -> None:
        super().__init__(
            ("inkling2", "inkling2_loop"),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support="no: its attention uses attention sinks (refused by the teacher) and relative-position "
            "logits (`position_bias`, not modelled); short convolutions mix tokens outside any attention map. FastRM "
            "is unaffected",
            tested_configs=(
                "inkling2: pixel values as its image processor lays them out (patch 4, merge 2: 8 px a token; "
                "images 13x16, 16x20, 21x14 padded up to 2x2, 2x3, 3x2 tokens); hybrid decoder",
                "inkling2_loop: the same with Inkling2LoopForConditionalGeneration (layer 1 looped twice)",
            ),
        )

    def merge_size(self, config: Any) -> int:
        return 1
