"""IDEFICS (1): images enter through gated cross-attention blocks before decoder layers, not as tokens of the sequence.

``IdeficsModel.forward`` encodes ``pixel_values`` `(batch, images, channels, size, size)` with its vision tower, and
(``config.use_resampler``) resamples each image into ``perceiver_config.resampler_n_latents`` latents; the image
states, `(batch, images * per_image, vision width)`, are attended to by a gated cross-attention block
(``model.model.gated_cross_attn_layers``) before every ``cross_layer_interval``-th decoder layer, each text token
seeing the images ``image_attention_mask`` `(batch, seq, images)` allows. Per image there are ``n_latents`` latents
(no patch grid: one 1-D grid per image) or, without the resampler, the vision tower's class token and its
``(image_size / patch_size)^2`` patches in row-major order (one square grid, class token left out). Images a row does
not have (padding columns of ``image_attention_mask``) are left out.

The image states are in the vision tower's width, not the decoder's, so the states the FastRM head reads as keys are
the first cross-attention block's key projection of them (``cross_attn.k_proj``: the decoder's width, what its text
queries are matched against), read at prefill from that block's inputs. The gradient teacher sees the cross-attention
blocks as layers of their own, each before the decoder layer it precedes (`decoder_layers` interleaves them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, ImageStateReader, RowImageLayout


class IdeficsAdapter(ArchitectureAdapter):
    """``IdeficsForVisionText2Text``: image tokens are the cross-attention states (see the module docstring)."""

    model_types = ("idefics",)
    family = "IDEFICS (cross-attention)"
    grid_description = (
        "cross-attention: the image tokens are the states the gated cross-attention blocks attend to, through the "
        "first block's key projection (decoder width); perceiver latents: one 1-D grid per image; without the "
        "resampler one (p, p) patch grid per image (class token left out)"
    )
    teacher_support = (
        "yes: Chefer et al.'s bi-modal rule at the gated cross-attention blocks (R_ti += Rbar_tt Abar_ti), "
        "self-attention rules elsewhere"
    )
    tested_configs = (
        "idefics: 2 decoder layers, a cross-attention block before each; perceiver of 3 latents; one image and two "
        "images in a left-padded batch",
        "idefics-patches: the same without the resampler: 4 x 4 patch grids",
    )
    image_inputs = ("pixel_values", "image_attention_mask")
    per_token_inputs = ("image_attention_mask",)

    def language_model(self, model: nn.Module) -> nn.Module:
        """``IdeficsModel`` is the decoder itself (``layers``, ``gated_cross_attn_layers``, ``norm``)."""
        return getattr(model, "model", model)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers with each gated cross-attention block before the layer it precedes, in forward order."""
        decoder = self.language_model(model)
        interval = int(decoder.cross_layer_interval)
        ordered: list[nn.Module] = []
        for index, layer in enumerate(decoder.layers):
            if index % interval == 0:
                ordered.append(decoder.gated_cross_attn_layers[index // interval])
            ordered.append(layer)
        return nn.ModuleList(ordered)

    def cross_attention_layers(self, model: nn.Module) -> list[int]:
        crossing = {id(block) for block in self.language_model(model).gated_cross_attn_layers}
        return [index for index, layer in enumerate(self.decoder_layers(model)) if id(layer) in crossing]

    def required_inputs(self, config: Any, input_ids: torch.Tensor) -> tuple[str, ...]:
        """``image_attention_mask`` (which images each token sees; the layout's image count). Precomputed
        ``image_encoder_embeddings`` or ``perceiver_embeddings`` may stand in for the pixel values."""
        return ("image_attention_mask",)

    def image_state_source(self, model: nn.Module) -> tuple[nn.Module, ImageStateReader]:
        """The first gated cross-attention block's ``image_hidden_states`` `(batch, images * per_image, vision
        width)`, through its key projection: `(batch, images * per_image, hidden)`."""
        block = self.language_model(model).gated_cross_attn_layers[0]

        def read(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
            states = kwargs.get("image_hidden_states", args[2] if len(args) > 2 else None)
            return None if states is None else block.cross_attn.k_proj(states)

        return block, read

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per row, its images' states among the cross-attention states, one grid per image.

        Args:
            config: the `IdeficsConfig`.
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the prompt.
            model_kwargs: must hold ``image_attention_mask`` `(batch, seq, images)` (padding images: all zero).
        """
        mask = model_kwargs.get("image_attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 3:
            raise ValueError(
                "IDEFICS' image layout needs the processor's `image_attention_mask` (batch, seq, images): pass "
                "everything the processor returned to generate()."
            )
        if config.use_resampler:
            per_image = int(config.perceiver_config.resampler_n_latents)
            side, first = None, 0
        else:
            side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
            per_image, first = side * side + 1, 1  # the class token first, then the patches in row-major order
        present = mask.detach().cpu().bool().any(dim=1)  # (batch, images)
        layouts = []
        for row in range(input_ids.shape[0]):
            images = present[row].nonzero().flatten().tolist()
            positions, grids, labels = [], [], []
            for order, image in enumerate(images):
                count = per_image - first
                positions.append(image * per_image + first + torch.arange(count))
                cells = order * count + torch.arange(count)
                grids.append(cells if side is None else cells.view(side, side))
                labels.append(f"image {order}")
            layouts.append(
                RowImageLayout(
                    image_positions=torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
                    image_grids=grids,
                    grid_labels=labels,
                    source="cross_attention",
                )
            )
        return layouts
