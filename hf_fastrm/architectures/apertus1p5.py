"""Apertus 1.5: images tokenized by a VQ vision tokenizer, the codes' embeddings written over placeholder tokens.

``Apertus1p5Model.get_image_features`` runs each image (cut to its ``image_sizes``) through an encode-only VQGAN
(downsampling ``2 ** (len(channel_multiplier) - 1)``, 16 in the released config), takes the codebook index of every
latent cell in row-major order, offsets it into the vocabulary and embeds it with the text embedding table; the
forward then writes those embeddings over the ``image_token_id`` placeholders. The processor writes each image as
``<boi>H*W<wrapper>`` followed by ``H`` rows of ``W`` placeholders separated by end-of-line tokens, then ``<eoi>``
(``H, W = height // factor, width // factor``). So the image tokens are the placeholders and each image is the
``(height / factor, width / factor)`` latent grid; the end-of-line tokens are not image tokens and are in no grid.
The generic adapter cannot know the factor (the vision config has no patch size).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RowImageLayout
from .generic import PlaceholderAdapter
from .grids import grids_from_shapes, per_item_list


def vq_downsampling(config: Any) -> int:
    """The vision tokenizer's downsampling factor: one code per `factor x factor` pixels."""
    return 2 ** (len(config.vision_config.channel_multiplier) - 1)


class Apertus1p5Adapter(PlaceholderAdapter):
    """``Apertus1p5ForConditionalGeneration``: one ``(height / factor, width / factor)`` grid per image from
    ``image_sizes`` (factor: the VQ tokenizer's downsampling)."""

    family = "Apertus 1.5"
    grid_description = (
        "one (height/f, width/f) grid per image from `image_sizes` (f = the VQ vision tokenizer's downsampling, "
        "2**(len(channel_multiplier) - 1)); image tokens are the placeholders the code embeddings replace; "
        "end-of-line tokens between rows are in no grid"
    )
    image_inputs = ("pixel_values", "image_sizes")

    def __init__(self) -> None:
        super().__init__(
            ("apertus1p5",),
            family=self.family,
            grid_description=self.grid_description,
            tested_configs=(
                "apertus1p5: VQGAN tokenizer (downsampling 4), images 16x16, 16x24, 24x16 padded to 24x24 with "
                "image_sizes; rows of placeholders separated by end-of-line tokens as its processor writes them",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        sizes = per_item_list(model_kwargs.get("image_sizes"))
        if not sizes:
            return super().image_layout(config, input_ids, model_kwargs)
        factor = vq_downsampling(config)
        shapes = [(int(height) // factor, int(width) // factor) for height, width in sizes]
        return grids_from_shapes(input_ids, self.image_token_id(config), shapes, self.family)
