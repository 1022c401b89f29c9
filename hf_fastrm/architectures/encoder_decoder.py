"""Encoder-decoder families whose image tokens live in the ENCODER's sequence (Florence-2, T5Gemma 2).

The text decoder never holds an image token: it cross-attends to the encoder's last hidden states, some of which
are image features written over placeholder tokens of the encoder's input (``config.image_token_id``). So the FastRM
head reads, for each generated token, the decoder's last hidden state (its final norm's output, what ``lm_head``
reads) against the encoder's last hidden states at the image placeholder positions:

* layouts: positions in the encoder's input ids (the prompt given to ``generate()``), found as in
  [`PlaceholderAdapter`]; grids from the family's vision tower;
* keys: [`EncoderDecoderAdapter.image_key_states`] returns ``encoder_outputs.last_hidden_state`` of the prefill's
  forward (``generate()`` runs the encoder once, before decoding, and hands its outputs to every step);
* query: the decoder's final-norm output of each step, as for decoder-only families.

The gradient teacher for these families follows Chefer et al. 2021's encoder-decoder rules
(`hf_fastrm.teacher.encoder_decoder`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import RowImageLayout
from .generic import NORM_NAMES, PlaceholderAdapter, _attribute_path, _layers_of
from .grids import MediaPlan, assign_media, merge_rows, token_positions

DECODER_PATHS = ("model.language_model.decoder", "model.decoder", "decoder", "model.text_decoder")
"""Where transformers keeps the text decoder of an encoder-decoder model (Florence-2: a BART model under
``model.language_model``; T5Gemma 2: ``model.decoder``)."""
ENCODER_TEXT_MODELS = ("text_model", "language_model")
"""Where an encoder that also runs the vision tower keeps its text layers."""


class EncoderDecoderAdapter(PlaceholderAdapter):
    """An adapter for encoder-decoder models with image placeholder tokens in the encoder's input.

    The layout rules are [`PlaceholderAdapter`]'s, applied to the encoder's input ids; the language model of the
    teacher and the tap is the text decoder; the image key states are the encoder's last hidden states.
    """

    is_encoder_decoder = True
    family = "encoder-decoder, images in the encoder"
    teacher_support = "yes (Chefer et al.'s encoder-decoder rules)"

    # ------------------------------------------------------------------ modules
    def encoder(self, model: nn.Module) -> nn.Module:
        """The text encoder whose input holds the image placeholder tokens: ``model.get_encoder()``, or its text
        model when that wraps one (T5Gemma 2: ``encoder.text_model``); the module holding the encoder's layers."""
        get_encoder = getattr(model, "get_encoder", None)
        encoder = get_encoder() if callable(get_encoder) else None
        if isinstance(encoder, nn.Module) and _layers_of(encoder) is None:
            encoder = next(
                (getattr(encoder, name) for name in ENCODER_TEXT_MODELS if _attribute_path(encoder, name) is not None),
                encoder,
            )
        if not isinstance(encoder, nn.Module) or _layers_of(encoder) is None:
            raise ValueError(
                f"Cannot find the encoder of {type(model).__name__} (`get_encoder()` with `.layers`). Subclass "
                "`EncoderDecoderAdapter` and override `encoder` for this family."
            )
        return encoder

    def encoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The encoder's layers, first to last."""
        return _layers_of(self.encoder(model))

    def language_model(self, model: nn.Module) -> nn.Module:
        """The text decoder (its layers hold the self- and cross-attention the teacher records)."""
        for path in DECODER_PATHS:
            module = _attribute_path(model, path)
            if module is not None and _layers_of(module) is not None:
                return module
        raise ValueError(
            f"Cannot find the text decoder of {type(model).__name__}: none of "
            f"{', '.join('model.' + p for p in DECODER_PATHS)} has layers. Override `language_model`."
        )

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The decoder's final norm; for post-norm decoders without one (BART), the last layer's output norm."""
        decoder = self.language_model(model)
        for name in ("layer_norm", *NORM_NAMES):
            norm = getattr(decoder, name, None)
            if isinstance(norm, nn.Module):
                return norm
        norm = getattr(_layers_of(decoder)[-1], "final_layer_norm", None)
        if not isinstance(norm, nn.Module):
            raise ValueError(
                f"Cannot find the final norm of {type(decoder).__name__} (a `norm`/`layer_norm`, or the last layer's "
                "`final_layer_norm`). Override `final_norm`."
            )
        return norm

    # ------------------------------------------------------------------ keys
    def image_key_states(self, decoder_states: torch.Tensor, forward_kwargs: dict[str, Any]) -> torch.Tensor:
        """`(rows, encoder_seq, hidden)`: the encoder's last hidden states the prefill's forward received
        (``encoder_outputs``, expanded by ``generate()`` for beams and return sequences like the decoder's rows)."""
        encoder_outputs = forward_kwargs.get("encoder_outputs")
        if encoder_outputs is None:
            raise ValueError(
                "FastRM reads the encoder's states of an encoder-decoder model from the `encoder_outputs` generate() "
                "passes to the decoder; this forward got none. Call the model's generate() with the processor's "
                "`input_ids` and pixel values."
            )
        states = getattr(encoder_outputs, "last_hidden_state", None)
        return states if states is not None else encoder_outputs[0]


def _conv_output(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Florence2Adapter(EncoderDecoderAdapter):
    """``Florence2ForConditionalGeneration``: a DaViT tower, a BART encoder-decoder.

    Each image gives ``1 + h * w`` features written over placeholder tokens of the encoder's input: first the mean
    of all patch features (a global token, in no grid cell), then the last stage's ``h x w`` patch features in
    row-major order (``Florence2MultiModalProjector``). ``h, w`` follow from the pixel values' size through the
    tower's strided convolutions (``patch_size``, ``patch_stride``, ``patch_padding`` per stage).
    """

    family = "Florence-2"
    grid_description = (
        "encoder positions of the image placeholders; per image a global token then an (h, w) grid, h and w from "
        "the pixel size through the DaViT stages' strided convolutions"
    )

    def __init__(self) -> None:
        super().__init__(
            ("florence2",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "florence2: tiny DaViT (1 stage, stride 4) + BART (2+2 layers); two prompts with 16x24 px images (a "
                "global token, then a 4x6 grid); tests/models/test_encoder_decoder.py",
            ),
        )

    def patch_grid(self, config: Any, height: int, width: int) -> tuple[int, int]:
        """The last vision stage's `(rows, cols)` for an image of `height x width` pixels."""
        vision = config.vision_config
        for kernel, stride, padding in zip(vision.patch_size, vision.patch_stride, vision.patch_padding, strict=True):
            height, width = _conv_output(height, kernel, stride, padding), _conv_output(width, kernel, stride, padding)
        return height, width

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        pixel_values = model_kwargs.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            return super().image_layout(config, input_ids, model_kwargs)
        rows, cols = self.patch_grid(config, int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        grid = torch.arange(1, 1 + rows * cols).view(rows, cols)  # offset 0 is the global token
        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(1 + rows * cols, [("", grid)]),
            kind="image",
            num_items=int(pixel_values.shape[0]),
            family=self.family,
        )
        return merge_rows(positions, grids)


class T5Gemma2Adapter(EncoderDecoderAdapter):
    """``T5Gemma2ForConditionalGeneration``: a SigLIP tower pooled to ``mm_tokens_per_image`` soft tokens (a square
    grid, as Gemma 3) written over placeholder tokens of the encoder's input; the decoder's merged attention attends
    to its own tokens and the encoder's states in one softmax."""

    family = "T5Gemma 2"
    grid_description = (
        "encoder positions of the image placeholders; per image a square grid of mm_tokens_per_image soft tokens "
        "(pooled SigLIP patches, row-major)"
    )

    def __init__(self) -> None:
        super().__init__(
            ("t5gemma2",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "t5gemma2: tiny SigLIP (image 16, patch 4, pooled to 2x2) + 2+2 layers (GQA, sliding and full); rows "
                "with two images and one; tests/models/test_encoder_decoder.py",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        tokens = int(config.encoder.mm_tokens_per_image)
        side = math.isqrt(tokens)
        if side * side != tokens:
            return super().image_layout(config, input_ids, model_kwargs)
        grid = torch.arange(tokens).view(side, side)
        positions = token_positions(input_ids, self.image_token_id(config))
        pixel_values = model_kwargs.get("pixel_values")
        num_items = int(pixel_values.shape[0]) if isinstance(pixel_values, torch.Tensor) else None
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(tokens, [("", grid)]),
            kind="image",
            num_items=num_items,
            family=self.family,
        )
        return merge_rows(positions, grids)


ENCODER_DECODER_FAMILIES: tuple[EncoderDecoderAdapter, ...] = (Florence2Adapter(), T5Gemma2Adapter())
