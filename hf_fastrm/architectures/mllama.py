"""Mllama (Llama 3.2 Vision): images enter through gated cross-attention layers, not as tokens of the sequence.

The prompt holds one ``<|image|>`` token per image, but the decoder never reads image features at those positions:
``MllamaModel.forward`` encodes ``pixel_values`` `(batch, images, tiles, channels, size, size)` into
``cross_attention_states``, `(batch * images * tiles, patches, hidden)` after the multi-modal projector (already in
the decoder's width), and hands them to the language model, whose cross-attention layers (``text_config.
cross_attention_layers``) attend to them; decoding steps reuse the keys from the cache. Per tile the ``patches`` are
a class token followed by the ``(image_size / patch_size)^2`` patches in row-major order; an image's tiles are laid
out ``(tile rows, tile columns)`` as ``vision_config.supported_aspect_ratios[aspect_ratio_id - 1]`` says, in
row-major order (the image processor's ``split_to_tiles``); images and tiles beyond a row's own are padding.

So the image "tokens" of a row are its real patches among the ``images * tiles * patches`` cross-attention states
(class tokens and padding left out), and each image is one ``(tile rows * p, tile columns * p)`` grid (``p =
image_size / patch_size``). The layouts say ``source="cross_attention"``; the tap reads the states from the language
model's ``cross_attention_states`` argument at prefill, and the FastRM head reads each generated token's last hidden
state against them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, ImageStateReader, RowImageLayout


class MllamaAdapter(ArchitectureAdapter):
    """``MllamaForConditionalGeneration``: image tokens are the cross-attention states (see the module docstring)."""

    model_types = ("mllama",)
    family = "Mllama (cross-attention)"
    grid_description = (
        "cross-attention: the image tokens are the states the cross-attention layers attend to (projected vision "
        "features, class tokens and padding tiles left out); one (tile rows * p, tile cols * p) grid per image from "
        "`aspect_ratio_ids` and the vision config's `supported_aspect_ratios` (p = image_size / patch_size)"
    )
    teacher_support = (
        "yes: Chefer et al.'s bi-modal rule at the cross-attention layers (R_ti += Rbar_tt Abar_ti), self-attention "
        "rules elsewhere"
    )
    tested_configs = (
        "mllama: 2 text layers (1 cross-attention), 2 tiles of 4x4 patches; one image of 2x1 tiles, two images of "
        "1x1 and 1x2 tiles in a left-padded batch",
    )
    image_inputs = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")
    per_token_inputs = ("cross_attention_mask",)

    def image_state_source(self, model: nn.Module) -> tuple[nn.Module, ImageStateReader]:
        """The language model's ``cross_attention_states`` argument, `(batch * images * tiles, patches, hidden)`,
        read as `(batch, images * tiles * patches, hidden)`."""

        def read(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
            states = kwargs.get("cross_attention_states")
            if states is None:
                return None
            tokens = kwargs.get("input_ids")
            if tokens is None:
                tokens = kwargs.get("inputs_embeds")
            batch = tokens.shape[0] if tokens is not None else 1
            return states.reshape(batch, -1, states.shape[-1])

        return self.language_model(model), read

    def cross_attention_layers(self, model: nn.Module) -> list[int]:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return sorted(int(layer) for layer in getattr(config, "cross_attention_layers", None) or [])

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per row, the real patches among its cross-attention states and one grid per image.

        Args:
            config: the `MllamaConfig`.
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the prompt (one ``<|image|>`` token per image).
            model_kwargs: must hold ``aspect_ratio_ids`` `(batch, images)` (0 for padding images) and
                ``pixel_values`` `(batch, images, tiles, channels, size, size)` or ``aspect_ratio_mask``
                `(batch, images, tiles)` (for the padded image and tile counts).
        """
        ratio_ids = model_kwargs.get("aspect_ratio_ids")
        padded = model_kwargs.get("pixel_values")
        padded_shape = padded.shape[1:3] if isinstance(padded, torch.Tensor) and padded.dim() == 6 else None
        if padded_shape is None and isinstance(model_kwargs.get("aspect_ratio_mask"), torch.Tensor):
            padded_shape = model_kwargs["aspect_ratio_mask"].shape[1:3]
        if ratio_ids is None or padded_shape is None:
            raise ValueError(
                "Mllama's image layout needs the processor's `aspect_ratio_ids` and `pixel_values` (or "
                "`aspect_ratio_mask`): pass everything the processor returned to generate()."
            )
        max_tiles = int(padded_shape[1])
        vision = config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        per_tile = side * side + 1  # the class token first, then the patches in row-major order
        arrangements = [tuple(int(v) for v in pair) for pair in vision.supported_aspect_ratios]
        image_token = self.image_token_id(config)
        ratio_ids = ratio_ids.detach().cpu().reshape(input_ids.shape[0], -1)
        layouts = []
        for row in range(input_ids.shape[0]):
            images = [int(i) for i in ratio_ids[row].tolist() if int(i) > 0]
            tokens = int((input_ids[row] == image_token).sum())
            if len(images) != tokens:
                raise ValueError(
                    f"Row {row} of the prompt holds {tokens} image tokens but its `aspect_ratio_ids` describe "
                    f"{len(images)} images. Build the inputs with the model's processor from the same images and text."
                )
            positions, grids, labels = [], [], []
            offset = 0
            for image, ratio_id in enumerate(images):
                if ratio_id > len(arrangements):
                    raise ValueError(
                        f"`aspect_ratio_ids` holds {ratio_id}, but the vision config supports {len(arrangements)} "
                        "tile arrangements: the inputs do not belong to this model."
                    )
                tile_rows, tile_cols = arrangements[ratio_id - 1]
                if tile_rows * tile_cols > max_tiles:
                    raise ValueError(
                        f"Image {image} of row {row} has {tile_rows}x{tile_cols} tiles but the pixel values hold "
                        f"{max_tiles} per image."
                    )
                tiles = torch.arange(tile_rows * tile_cols)
                first = (image * max_tiles + tiles) * per_tile + 1  # each tile's first patch, after its class token
                positions.append((first.view(-1, 1) + torch.arange(side * side)).flatten())
                # grid cell (tile_row * p + y, tile_col * p + x) -> tile (tile_row, tile_col), patch (y, x)
                cells = torch.arange(tile_rows * tile_cols * side * side).view(tile_rows, tile_cols, side, side)
                grids.append(offset + cells.permute(0, 2, 1, 3).reshape(tile_rows * side, tile_cols * side))
                labels.append(f"image {image}")
                offset += tiles.numel() * side * side
            empty = torch.zeros(0, dtype=torch.long)
            layouts.append(
                RowImageLayout(
                    image_positions=torch.cat(positions) if positions else empty,
                    image_grids=grids,
                    grid_labels=labels,
                    source="cross_attention",
                )
            )
        return layouts
