"""VideoLLaMA 3: merged patches by ``image_grid_thw`` / ``video_grid_thw`` with a merge size per image and per video.

``VideoLlama3VisionModel.pixel_unshuffle`` shrinks each item's `(t, h, w)` patch grid to `(t, h / m, w / m)` with
that item's own `m` from ``image_merge_sizes`` / ``video_merge_sizes`` (the image processor's default is 1, the video
processor's 2; a caller may pass either), and ``video_compression_mask`` drops video features (patches that did not
change since the previous frame) before they are written over the video tokens. The vision config has no merge
size, so the generic adapter's one merge size from the config cannot describe these grids.
"""

from __future__ import annotations

from typing import Any

import torch

from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, per_item_list


class VideoLlama3Adapter(PlaceholderAdapter):
    """``VideoLlama3ForConditionalGeneration``: per image a `(h / m, w / m)` grid, per video `(t, h / m, w / m)`
    (cells whose feature the compression mask dropped are -1), `m` the item's own merge size."""

    family = "VideoLLaMA 3"
    grid_description = (
        "one (h/m, w/m) grid per image from `image_grid_thw`, video (t, h/m, w/m) from `video_grid_thw`, m per item "
        "from `image_merge_sizes` / `video_merge_sizes`; video cells dropped by `video_compression_mask` are -1"
    )

    def __init__(self) -> None:
        super().__init__(
            ("video_llama_3",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "video_llama_3: image_grid_thw 1x4x4, 1x4x6, 1x6x4, image_merge_sizes 1 (and 2); a 2x4x4 video, "
                "video_merge_sizes 2, compression mask",
            ),
        )

    def _media_grids(
        self, config: Any, positions: list[torch.Tensor], kwargs: dict[str, Any], kind: str, family: str
    ) -> list[list[tuple[str, torch.Tensor]]]:
        grid_thw = per_item_list(kwargs.get(f"{kind}_grid_thw"))
        if not grid_thw:
            return super()._media_grids(config, positions, kwargs, kind, family)
        merges = per_item_list(kwargs.get(f"{kind}_merge_sizes")) or [self.merge_size(config)] * len(grid_thw)
        if len(merges) != len(grid_thw):
            raise ValueError(
                f"{family}: `{kind}_merge_sizes` has {len(merges)} entries but `{kind}_grid_thw` describes "
                f"{len(grid_thw)} {kind}s. Pass the processor's outputs unchanged."
            )
        cells = [
            int(t) * (int(h) // int(m)) * (int(w) // int(m)) for (t, h, w), m in zip(grid_thw, merges, strict=True)
        ]
        keep = self._kept_cells(kwargs.get("video_compression_mask") if kind == "video" else None, cells, family)

        def plan(item: int, row: int) -> MediaPlan:
            frames, height, width = (int(v) for v in grid_thw[item])
            merge = int(merges[item])
            kept = keep[item]
            offsets = torch.full((frames * (height // merge) * (width // merge),), -1, dtype=torch.long)
            offsets[kept] = torch.arange(int(kept.sum()))
            grid = offsets.view(frames, height // merge, width // merge)
            return MediaPlan(int(kept.sum()), [("", grid[0] if kind == "image" and frames == 1 else grid)])

        return assign_media(positions, plan, kind=kind, num_items=len(grid_thw), family=family)

    @staticmethod
    def _kept_cells(mask: Any, cells: list[int], family: str) -> list[torch.Tensor]:
        """Per item, `(cells,)` booleans: which of its merged cells have a token (all, without a compression mask)."""
        if mask is None:
            return [torch.ones(count, dtype=torch.bool) for count in cells]
        mask = torch.as_tensor(mask).reshape(-1).bool().cpu()
        if mask.numel() != sum(cells):
            raise ValueError(
                f"{family}: `video_compression_mask` has {mask.numel()} entries but the videos of `video_grid_thw` "
                f"(with `video_merge_sizes`) have {sum(cells)} features. Pass the processor's outputs unchanged."
            )
        return list(mask.split(cells))
