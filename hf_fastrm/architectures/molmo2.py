"""Molmo2: per image a low-resolution view and the overlapping high-resolution crops, each pooled 2 x 2.

``Molmo2ImageProcessor`` resizes the image to one crop (the low-resolution view) and cuts the image into
overlapping crops whose overlap margins are dropped, so the kept patches tile one canvas. ``image_token_pooling``
lists, per pooled token, the patches it averages (row-major over the pooled grid) and ``image_grids`` holds per
image ``[low_h, low_w, high_h, high_w]``: the pooled grids of the two views. The processor writes the low view's
tokens, then the high view's, each row of ``<im_patch>`` tokens ended by an ``<im_col>`` token and each view wrapped
in start/end tokens; only ``<im_patch>`` (``image_patch_id``, the config's image token id) carries features. So an
image takes ``low_h * low_w + high_h * high_w`` placeholder tokens: a ``base`` grid and a ``tiles`` grid.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, square_grid, token_positions


class Molmo2Adapter(PlaceholderAdapter):
    """``Molmo2ForConditionalGeneration``: a low-resolution and a high-resolution grid per image (``image_grids``)."""

    family = "Molmo2"
    grid_description = (
        "two grids per image from `image_grids` ([low_h, low_w, high_h, high_w], pooled patches): the "
        "low-resolution view (`base`) and the high-resolution crops' canvas with the overlaps dropped (`tiles`); "
        "the `<im_col>` and start/end tokens are not image tokens. Videos: the generic rules (not tested)"
    )

    def __init__(self) -> None:
        super().__init__(
            ("molmo2",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "molmo2: its image processor's own grid code (24 px crops, patch 4, overlap 1, pooling 2x2, up to 4 "
                "crops; its two torchvision calls replaced), prompts as Molmo2Processor writes them; images 20x44, "
                "24x24, 40x20",
            ),
        )

    def check_required_inputs(self, config: Any, input_ids: torch.Tensor, inputs: dict[str, Any]) -> None:
        """Images and video frames share the `<im_patch>` id: a prompt with such tokens needs the image outputs
        (`pixel_values`, `image_token_pooling`, `image_grids`) or, for a video, the video ones."""
        if not bool((input_ids == self.image_token_id(config)).any()):
            return
        kind = "video" if inputs.get("pixel_values_videos") is not None else "image"
        names = ("pixel_values", "image_token_pooling", "image_grids")
        if kind == "video":
            names = ("pixel_values_videos", "video_token_pooling", "video_grids")
        missing = [name for name in names if inputs.get(name) is None]
        if missing:
            raise ValueError(
                f"The prompt holds Molmo2 {kind} patch tokens but generate() got no "
                f"{', '.join(f'`{name}`' for name in missing)}: the model would read placeholder embeddings instead "
                "of the image, and FastRM would explain those. Pass everything `Molmo2Processor` returned, e.g. "
                "`model.generate(**processor(images=image, text=prompt, return_tensors='pt'), ...)`."
            )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        image_grids = per_item_list(model_kwargs.get("image_grids"))
        if not image_grids:
            return super().image_layout(config, input_ids, model_kwargs)

        def plan(item: int, row: int) -> MediaPlan:
            low_h, low_w, high_h, high_w = (int(v) for v in image_grids[item])
            low = low_h * low_w
            grids = [("base", square_grid(low_h, low_w)), ("tiles", square_grid(high_h, high_w, start=low))]
            return MediaPlan(low + high_h * high_w, grids)

        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(positions, plan, kind="image", num_items=len(image_grids), family=self.family)
        return merge_rows(positions, grids)
