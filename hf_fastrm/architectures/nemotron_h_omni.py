"""Nemotron 3 Nano Omni (``NemotronH_Omni_Reasoning_V3``): a RADIO tower, pixel shuffle, a hybrid Mamba decoder.

Where the image features enter: the processor writes ``config.image_token_id`` (the checkpoints' legacy spelling
``img_context_token_id``; the default config leaves it `None`) once per feature, and the model scatters the
projected features over those tokens (``get_placeholder_mask(input_ids, ..., self.image_token_id)``). Each image is
``image_grid_hw = (h, w)`` RADIO patches, pixel-shuffled by ``downsample_ratio`` (0.5) into ``(h / 2, w / 2)``
tokens in row-major order (``pixel_shuffle`` keeps the rows), so that is its grid.

The model class is the causal LM itself (no ``.model``): the text decoder is ``language_model.model``
(``NemotronHModel``, final norm ``norm_f``).

Videos reuse the image token and, with ``video_pruning_rate`` > 0, the model drops video tokens from the sequence
after the prompt was built (EVS), so the prompt's positions no longer are the decoder's: videos are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import MediaPlan, assign_media, merge_rows, per_item_list, token_positions


class NemotronHOmniAdapter(PlaceholderAdapter):
    """``NemotronH_Omni_Reasoning_V3``: one ``(h / f, w / f)`` grid per image from ``image_grid_hw``."""

    image_inputs = ("pixel_values", "image_grid_hw")

    def __init__(self) -> None:
        super().__init__(
            ("nemotron_h_omni",),
            family="Nemotron 3 Nano Omni",
            grid_description="one (h/f, w/f) grid per image from `image_grid_hw` (RADIO patches, f = 1 / "
            "downsample_ratio, pixel shuffle row-major); videos refused (they reuse the image token and EVS pruning "
            "removes tokens)",
            tested_configs=(
                "nemotron_h_omni: RADIO tower, image_grid_hw 4x4, 4x6, 6x4 (downsample 0.5); decoder of one Mamba2, "
                "one attention and one MoE layer; images only (no audio, no video)",
            ),
            teacher_support="no: hybrid decoder (its Mamba2 blocks have no self-attention map to record; the "
            "teacher refuses it with that message)",
        )

    def language_model(self, model: nn.Module) -> nn.Module:
        decoder = getattr(getattr(model, "language_model", None), "model", None)
        if isinstance(decoder, nn.Module) and isinstance(getattr(decoder, "norm_f", None), nn.Module):
            return decoder
        return super().language_model(model)

    def video_token_id(self, config: Any) -> int | None:
        return None  # videos write the image token

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        if model_kwargs.get("pixel_values_videos") is not None:
            raise ValueError(
                "Nemotron 3 Nano Omni: FastRM explains images only. Videos reuse the image token and the model prunes "
                "video tokens (EVS) after the prompt is built, so their positions are not the decoder's. Generate "
                "without `pixel_values_videos`, or without FastRM."
            )
        grid_hw = per_item_list(model_kwargs.get("image_grid_hw"))
        if not grid_hw:
            return super().image_layout(config, input_ids, model_kwargs)
        factor = round(1 / float(config.downsample_ratio))
        shapes = [(int(h) // factor, int(w) // factor) for h, w in grid_hw]
        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(
                shapes[item][0] * shapes[item][1],
                [("", torch.arange(shapes[item][0] * shapes[item][1]).view(*shapes[item]))],
            ),
            kind="image",
            num_items=len(shapes),
            family="Nemotron 3 Nano Omni",
        )
        return merge_rows(positions, grids)
