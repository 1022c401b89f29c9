"""VideoLLaMA 3: merged patches by ``image_grid_thw`` / ``video_grid_thw`` with a merge size per image and per video.

``VideoLlama3VisionModel.pixel_unshuffle`` shrinks each item's `(t, h, w)` patch grid to `(t, h / m, w / m)` with
that item's own `m` from ``image_merge_sizes`` / ``video_merge_sizes`` (the image processor's default is 1, the video
processor's 2; a caller may pass either), and ``video_compression_mask`` drops video features (patches that did not
change since the previous frame) before they are written over the video tokens. The vision config has no merge
size, so the generic adapter's one merge size from the config cannot describe these grids.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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
                "video_merge_sizes 2, compression mask; through generate() (greedy, beam search 3 returning 2, "
                "sampling with 2 return sequences) a 2x4x4 video with an all-True mask, alone and left-padded beside a "
                "1x4x4 one, and the compressed video (greedy; refused where generate() expands the rows)",
            ),
        )

    def method_wrappers(self, model: nn.Module) -> dict[str, Callable[[Callable], Callable]]:
        """Refuses, before the model's own expansion fails on it, a compressed video in a batch generate() expands
        for beam search / ``num_return_sequences`` (`EXPANDED_COMPRESSED_VIDEO`)."""
        return {"_expand_inputs_for_generation": functools.partial(_refusing_compressed_expansion, self.family)}

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
        """Per item, `(cells,)` booleans: which of its merged cells have a token (all, without a compression mask).

        `mask` is the flat `(features,)` ``video_compression_mask`` of the prompts, or that mask as generate() leaves
        it after expanding the rows for beam search / ``num_return_sequences``: `(features * k,)`, each entry repeated
        `k` times (``repeat_interleave``), while the layouts are asked for the unexpanded prompts.
        """
        if mask is None:
            return [torch.ones(count, dtype=torch.bool) for count in cells]
        mask = torch.as_tensor(mask).reshape(-1).bool().cpu()
        total = sum(cells)
        if mask.numel() != total and total and mask.numel() % total == 0:
            repeats = mask.numel() // total
            runs = mask.view(total, repeats)
            if bool((runs == runs[:, :1]).all()):  # generate() repeated each entry `repeats` times
                if bool(mask.all()):
                    # nothing dropped: the model writes each expanded row its own copy of every feature
                    return [torch.ones(count, dtype=torch.bool) for count in cells]
                raise ValueError(EXPANDED_COMPRESSED_VIDEO.format(family=family, repeats=repeats))
        if mask.numel() != total:
            raise ValueError(
                f"{family}: `video_compression_mask` has {mask.numel()} entries but the videos of `video_grid_thw` "
                f"(with `video_merge_sizes`) have {total} features. Pass the processor's outputs unchanged."
            )
        return list(mask.split(cells))


EXPANDED_COMPRESSED_VIDEO = (
    "{family}: generate() expanded a batch with a compressed video ({repeats} rows per prompt, for beam search or "
    "`num_return_sequences`), which the model itself cannot decode in transformers 5.24: "
    "`_expand_multimodal_outputs` groups the encoded videos by each row's count of video tokens, which "
    "`video_compression_mask` made smaller than the videos' feature counts, so the groups come out empty (plain "
    "generate() fails with 'torch.cat(): expected a non-empty list of Tensors'), and `_expand_inputs_for_generation` "
    "repeats each entry of the flat mask (repeat_interleave) where each row's copy needs the whole mask. Generate "
    "with num_beams=1 and num_return_sequences=1 (one call per sample), or without dropped features (an all-True "
    "or no `video_compression_mask`, with a video token per feature)."
)
"""The refusal of a compressed video in an expanded batch (a transformers 5.24 bug, see the message)."""


def _refusing_compressed_expansion(family: str, original: Callable) -> Callable:
    """Wraps the model's bound `_expand_inputs_for_generation`: raises `EXPANDED_COMPRESSED_VIDEO` when it would
    repeat rows (``expand_size`` > 1) holding a video with dropped features (a ``video_compression_mask`` not all
    True); otherwise the model's own expansion."""

    @functools.wraps(original)
    def expand(*args: Any, **kwargs: Any) -> Any:
        expand_size = kwargs.get("expand_size", args[0] if args else 1)
        mask = kwargs.get("video_compression_mask")
        if (
            expand._fastrm_active
            and isinstance(expand_size, int)
            and expand_size > 1
            and mask is not None
            and not bool(torch.as_tensor(mask).all())
        ):
            raise ValueError(EXPANDED_COMPRESSED_VIDEO.format(family=family, repeats=expand_size))
        return original(*args, **kwargs)

    expand._fastrm_active = True
    return expand
