"""Fuyu: image patches embedded by one linear layer (no vision tower) and written over placeholder tokens laid out
as the image's rows, each row ended by a newline token.

``FuyuProcessor`` (transformers 5.24) writes per image ``rows`` times (``cols`` ``|SPEAKER|`` placeholders
(``config.image_token_id``) and one ``|NEWLINE|``), then ``<s>``; `pixel_values` are the images' patches
concatenated row-major, ``(total_patches, patch * patch * channels)``, and the forward scatters their embeddings
over the placeholders in order. The newline id is not in the config and the patch list does not say where one
image ends, so the grid comes from the placeholder pattern in `input_ids`: each run of placeholders is one grid row,
and runs of the same length separated by a single token (the same token after every row: the newline) are the
rows of one image.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import consecutive_runs, merge_rows, token_positions


class FuyuAdapter(PlaceholderAdapter):
    """``FuyuForCausalLM``: one ``(rows, cols)`` grid per image from its placeholder rows; newline tokens in no
    grid."""

    family = "Fuyu"
    grid_description = (
        "one (rows, cols) grid per image from the placeholder pattern: each run of `image_token_id` is a row of "
        "patches, runs of equal length separated by one newline token are one image; newlines are in no grid"
    )

    def __init__(self) -> None:
        super().__init__(
            ("fuyu",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "fuyu: patch 4, images of 2x2, 2x3 and 3x2 patches written as its processor does (a newline after "
                "each row of placeholders); 1 and 2 images a row",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        positions = token_positions(input_ids, self.image_token_id(config))
        grids = [self._row_grids(input_ids[row].cpu(), positions[row]) for row in range(input_ids.shape[0])]
        return merge_rows(positions, grids)

    @staticmethod
    def _row_grids(ids: torch.Tensor, positions: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """`(label, (rows, cols) grid of absolute positions)` per image of one prompt row `ids` `(seq,)`."""
        images: list[list[tuple[int, int]]] = []  # per image, its rows as (first position, length)
        newline = None
        for start, length in consecutive_runs(positions):
            first = int(positions[start])
            if images:
                last_first, last_length = images[-1][-1]
                gap_end = last_first + last_length  # the token right after the previous row
                same_image = (
                    length == last_length
                    and first == gap_end + 1
                    and (newline is None or int(ids[gap_end]) == newline)
                )
                if same_image:
                    newline = int(ids[gap_end])
                    images[-1].append((first, length))
                    continue
            images.append([(first, length)])
            newline = None
        grids = []
        for index, rows in enumerate(images):
            grid = torch.stack([torch.arange(first, first + length) for first, length in rows])
            grids.append((f"image {index}", grid))
        return grids
