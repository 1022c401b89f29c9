"""BLIP (``BlipForConditionalGeneration``): a ViT captioner whose BERT-style text decoder cross-attends to the image.

``BlipForConditionalGeneration.generate()`` runs the vision model itself and hands generation to
``text_decoder.generate(input_ids, encoder_hidden_states=image_embeds, ...)`` (the prompt's first token replaced by
BOS, its last, the processor's ``[SEP]``, dropped): the top model's forward never runs while it generates. So the tap
watches the text decoder ([`BlipAdapter.generation_module`]) and reads the image states from the
``encoder_hidden_states`` its prefill receives (expanded by the decoder's generate() for beams and return sequences,
row by row). Every one of those states is the image's: the vision tower's CLS token (in no grid cell), then its
``(H / patch, W / patch)`` patches in row-major order. The layouts say ``source="cross_attention"``.

The head reads those states as keys in the decoder's width, so the vision and text widths must be equal (BLIP-base:
768 and 768); BLIP-large (1024 vs 768) is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, ImageStateReader, RowImageLayout


class BlipAdapter(ArchitectureAdapter):
    """``BlipForConditionalGeneration``: image tokens are the text decoder's cross-attention states."""

    model_types = ("blip",)
    family = "BLIP (captioner, cross-attention)"
    grid_description = (
        "cross-attention: the image tokens are the text decoder's `encoder_hidden_states` (the vision tower's CLS, "
        "in no cell, then an (H / patch, W / patch) patch grid, row-major); vision and text widths must be equal"
    )
    teacher_support = (
        "no: BLIP's vision and text attention (`BlipAttention`, `BlipTextSelfAttention`) compute their softmax "
        "inline, not through transformers' attention interface, which the gradient teacher's probed attention needs"
    )
    teacher_refusal = teacher_support
    """Why the gradient teacher refuses BLIP (`gradient_relevancy` raises `NotImplementedError` with it)."""
    tested_configs = (
        "blip: tiny ViT (16 px, patch 4: CLS + 4x4) and BERT-style text decoder (2 layers, cross-attention), both "
        "width 32; two images, captioning without a prompt and with one; tests/models/test_blip.py",
    )
    image_inputs = ("pixel_values",)

    def check_widths(self, model: nn.Module) -> None:
        config = model.config
        vision, text = int(config.vision_config.hidden_size), int(config.text_config.hidden_size)
        if vision != text:
            raise ValueError(
                f"This BLIP model's vision width ({vision}) differs from its text decoder's ({text}): a FastRM head "
                "reads the image states as keys in the decoder's width, so hf_fastrm supports BLIP checkpoints whose "
                "widths are equal (BLIP-base), not this one (BLIP-large: 1024 vs 768)."
            )

    def generation_module(self, model: nn.Module) -> nn.Module:
        """``model.text_decoder``: BLIP's generate() calls its generate()."""
        self.check_widths(model)
        return model.text_decoder

    def language_model(self, model: nn.Module) -> nn.Module:
        """The text decoder's BERT (``text_decoder.bert``: ``encoder.layer``)."""
        return model.text_decoder.bert

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).encoder.layer

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The last layer's output LayerNorm (post-norm BERT): the states the LM head's transform reads."""
        return self.decoder_layers(model)[-1].output.LayerNorm

    def cross_attention_layers(self, model: nn.Module) -> list[int]:
        return list(range(len(self.decoder_layers(model))))

    def image_token_id(self, config: Any) -> int:
        raise ValueError("BLIP has no image placeholder token: its image states are cross-attention states.")

    def required_inputs(self, config: Any, input_ids: torch.Tensor) -> tuple[str, ...]:
        return ()

    def starts_with_one_token(self, forward_kwargs: dict[str, Any]) -> bool:
        """A text decoder call with image states and an empty cache starts a generation: captioning without a
        prompt feeds BOS alone."""
        if forward_kwargs.get("encoder_hidden_states") is None:
            return False
        cache = forward_kwargs.get("cache", forward_kwargs.get("past_key_values"))
        return cache is None or int(cache.get_seq_length()) == 0

    def image_state_source(self, model: nn.Module) -> tuple[nn.Module, ImageStateReader]:
        """The text decoder's ``encoder_hidden_states`` `(rows, 1 + patches, hidden)`."""
        self.check_widths(model)

        def read(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
            return kwargs.get("encoder_hidden_states")

        return model.text_decoder, read

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per row, one image: every cross-attention state, the CLS first (no cell), then the patch grid.

        Args:
            config: the `BlipConfig`.
            input_ids (`torch.LongTensor` of shape `(rows, seq)`): the decoder's prompt.
            model_kwargs: ``pixel_values`` `(rows, channels, H, W)` (the grid from its size) or the decoder's
                ``encoder_hidden_states`` `(rows, 1 + side**2, hidden)`, checked against the config's image size.
        """
        patch = int(config.vision_config.patch_size)
        pixel_values = model_kwargs.get("pixel_values")
        states = model_kwargs.get("encoder_hidden_states")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
            rows, cols = int(pixel_values.shape[-2]) // patch, int(pixel_values.shape[-1]) // patch
        else:
            side = int(config.vision_config.image_size) // patch
            rows, cols = side, side
            if isinstance(states, torch.Tensor) and int(states.shape[1]) != 1 + side * side:
                # inside generate() the decoder sees only the states, whose count does not say the image's shape
                raise ValueError(
                    f"BLIP's text decoder got {states.shape[1]} image states, not the CLS + {side}x{side} patches of "
                    f"a {config.vision_config.image_size} px image: FastRM does not follow images of another size "
                    "(`interpolate_pos_encoding=True`). Let the processor resize the image to the configured size."
                )
        grid = torch.arange(1, 1 + rows * cols).view(rows, cols)
        positions = torch.arange(1 + rows * cols)
        return [
            RowImageLayout(
                image_positions=positions, image_grids=[grid], grid_labels=["image 0"], source="cross_attention"
            )
            for _ in range(input_ids.shape[0])
        ]
