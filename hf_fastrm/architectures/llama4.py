"""Llama 4: tiles (chunks) separated by ``<|tile_x_separator|>`` / ``<|tile_y_separator|>``, then a global chunk.

The processor writes, for an image cut into ``rows x cols`` chunks::

    <|image_start|> (<|patch|>*n <|tile_x_separator|>)... <|patch|>*n <|tile_y_separator|> ... <|image|> <|patch|>*n <|image_end|>

(only the global chunk for an image that fits one chunk). Each chunk is ``n = (side * pixel_shuffle_ratio)**2``
patch tokens, a pixel-shuffled square (row-major). The chunk arrangement (``aspect_ratios``) does not reach the
model's forward, so it is read off the prompt: the token after a run tells what follows (another chunk in the
row, the next row, or the end of the image; the row's last run is always a global chunk, so the token after it is
``<|image_end|>``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, RowImageLayout
from .grids import build_row_layout, square_grid, token_positions
from .idefics3 import split_into_blocks


class Llama4Adapter(ArchitectureAdapter):
    """``Llama4ForConditionalGeneration`` (text decoder at ``model.language_model.model``)."""

    family = "Llama 4"
    model_types = ("llama4",)
    grid_description = (
        "split image: one grid of the chunks stitched rows x cols (read from the tile separator tokens) + one "
        "global-chunk grid; small image: one grid; each chunk a pixel-shuffled (side*ratio)^2 square"
    )
    fastrm_issue = "no: `Llama4ForConditionalGeneration.generate()` fails in transformers 5.24 (`outputs.image_outputs`) before FastRM is involved; layouts are tested"
    teacher_support = (
        "untested: `Llama4ForConditionalGeneration.forward` fails in transformers 5.24 (`outputs.image_outputs`), "
        "before FastRM or the teacher are involved"
    )
    tested_configs = (
        "llama4: chunks of 8 px, pixel shuffle 0.5, MoE decoder; aspect ratios 1x2, 1x1, 2x1, 2x2 "
        "(layout and locality only; generation fails upstream)",
    )

    def language_model(self, model: nn.Module) -> nn.Module:
        causal_lm = getattr(model, "language_model", None)
        decoder = getattr(causal_lm, "model", None)
        if decoder is None:
            raise ValueError(
                f"Cannot find the text decoder of {type(model).__name__} (expected `model.language_model.model`)."
            )
        return decoder

    def chunk_side(self, config: Any) -> int:
        vision = config.vision_config
        return int((vision.image_size // vision.patch_size) * vision.pixel_shuffle_ratio)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        side = self.chunk_side(config)
        block = side * side
        layouts = []
        for row, positions in enumerate(token_positions(input_ids, self.image_token_id(config))):
            ids = input_ids[row].cpu()
            chunks = [positions[s : s + block] for s in split_into_blocks(positions, block, "Llama4", row)]
            after = [int(ids[chunk[-1] + 1]) if chunk[-1] + 1 < ids.numel() else -1 for chunk in chunks]
            if self.image_token_id(config) in after:  # chunks without separators between them: one grid each
                after = [-1] * len(after)
            end_tag = after[-1] if after else None
            grids: list[tuple[str, torch.Tensor]] = []
            pending: list[int] = []
            image = 0
            for index, chunk in enumerate(chunks):
                if after[index] != end_tag:
                    pending.append(index)
                    continue
                label = f"image {image}"
                if pending:
                    grids.extend(self._stitch(label, [chunks[i] for i in pending], [after[i] for i in pending], side))
                    grids.append((f"{label} global", chunk[square_grid(side)]))
                else:
                    grids.append((label, chunk[square_grid(side)]))
                pending = []
                image += 1
            grids.extend((f"image {image} chunk {i}", chunks[c][square_grid(side)]) for i, c in enumerate(pending))
            layouts.append(build_row_layout(positions, grids))
        return layouts

    @staticmethod
    def _stitch(label: str, chunks: list[torch.Tensor], after: list[int], side: int) -> list[tuple[str, torch.Tensor]]:
        # The last chunk of every row is followed by the row separator; the others by the column separator.
        row_end = after[-1]
        cols = after.index(row_end) + 1
        rows = len(chunks) // cols
        regular = rows * cols == len(chunks) and all(
            (tag == row_end) == ((i + 1) % cols == 0) for i, tag in enumerate(after)
        )
        if not regular:
            return [(f"{label} chunk {i}", chunk[square_grid(side)]) for i, chunk in enumerate(chunks)]
        stitched = torch.empty(rows * side, cols * side, dtype=torch.long)
        for i, chunk in enumerate(chunks):
            r, c = divmod(i, cols)
            stitched[r * side : (r + 1) * side, c * side : (c + 1) * side] = chunk[square_grid(side)]
        return [(f"{label} tiles", stitched)]
