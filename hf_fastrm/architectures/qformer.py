"""BLIP-2, InstructBLIP and InstructBLIP-Video: a Q-Former's learned queries written over placeholder tokens.

transformers 5.x processors of these families write ``num_query_tokens`` placeholder tokens per image
(``config.image_token_index``; InstructBLIP-Video ``video_token_index``, ``num_query_tokens`` per frame) into
``input_ids``; the model runs the image through its vision tower and Q-Former and writes the queries' outputs (through
``language_projection``) over those tokens of the language model's ``inputs_embeds``. What the generic adapter cannot
know:

* where the text decoder is: ``model.language_model`` is a whole causal LM (OPT: ``.model.decoder`` with
  ``final_layer_norm``; LLaMA / Vicuna: ``.model`` with ``norm``);
* that generation runs on that causal LM: the family's own `generate()` writes the image features into
  ``inputs_embeds`` and calls ``language_model.generate()``, so the tap watches the language model
  ([`QFormerAdapter.generation_module`]);
* how many tokens an image takes: exactly ``num_query_tokens`` (a video: that many per frame), one 1-D grid each,
  since learned queries attend to the whole image and have no patch grid.

Encoder-decoder language models (BLIP-2 / InstructBLIP with Flan-T5) are not supported: their image tokens are in
the T5 encoder, not in the sequence the generated tokens' decoder states come from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import RowImageLayout
from .generic import PlaceholderAdapter, _attribute_path, _layers_of
from .grids import MediaPlan, assign_media, merge_rows, token_positions

DECODER_PATHS = ("model.decoder", "model")
"""Where a causal LM keeps its text decoder (OPT: ``model.decoder``; LLaMA and most others: ``model``)."""


class QFormerAdapter(PlaceholderAdapter):
    """``Blip2ForConditionalGeneration``, ``InstructBlipForConditionalGeneration``,
    ``InstructBlipVideoForConditionalGeneration`` with a decoder-only language model."""

    family = "BLIP-2 / InstructBLIP (Q-Former; decoder-only language models, not Flan-T5)"
    grid_description = (
        "one 1-D grid per image of `num_query_tokens` tokens (Q-Former learned queries have no patch grid); a video "
        "one 1-D grid of frames x `num_query_tokens` tokens, frame by frame"
    )

    video_inputs = ("pixel_values",)
    """InstructBLIP-Video's videos come as ``pixel_values`` `(videos, frames, channels, height, width)`."""

    def __init__(self) -> None:
        super().__init__(
            ("blip-2", "instructblip", "instructblipvideo"),
            family=self.family,
            grid_description=self.grid_description,
            patch_grids=False,
            tested_configs=(
                "blip-2: OPT decoder, 4 queries an image; 1 and 2 images a row",
                "instructblip: OPT decoder, instruction-aware Q-Former (`qformer_input_ids`); 1 and 2 images a row",
                "instructblipvideo: OPT decoder; videos of 2 frames x 4 queries; 1 and 2 videos a row",
            ),
        )

    # ------------------------------------------------------------------ modules
    def causal_lm(self, model: nn.Module) -> nn.Module:
        """``model.language_model``, the causal LM whose `generate()` the family's `generate()` calls."""
        config = model.config
        if getattr(config, "use_decoder_only_language_model", True) is False:
            raise ValueError(
                f"{type(model).__name__} has an encoder-decoder language model ({config.text_config.model_type}): its "
                "image tokens are in the encoder, not in the sequence the generated tokens are decoded from, so "
                "hf_fastrm does not support it. Use a checkpoint with a decoder-only language model (OPT, Vicuna)."
            )
        causal_lm = getattr(model, "language_model", None)
        if not isinstance(causal_lm, nn.Module):
            raise ValueError(f"Cannot find `language_model` on {type(model).__name__}.")
        return causal_lm

    def generation_module(self, model: nn.Module) -> nn.Module:
        return self.causal_lm(model)

    def language_model(self, model: nn.Module) -> nn.Module:
        causal_lm = self.causal_lm(model)
        for path in DECODER_PATHS:
            decoder = _attribute_path(causal_lm, path)
            if decoder is not None and _layers_of(decoder) is not None and self._last_module(decoder) is not None:
                return decoder
        raise ValueError(
            f"Cannot find the text decoder of {type(causal_lm).__name__} (looked at "
            f"{', '.join('language_model.' + p for p in DECODER_PATHS)} for decoder layers and a final norm)."
        )

    def _last_module(self, decoder: nn.Module) -> nn.Module | None:
        # OPT projects the normed states to the embedding width when the two differ (`project_out`): lm_head reads that
        projection = getattr(decoder, "project_out", None)
        return projection if isinstance(projection, nn.Module) else self._norm_of(decoder)

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The module whose output ``lm_head`` reads: the decoder's final norm (OPT: its ``project_out`` if set)."""
        return self._last_module(self.language_model(model))

    # ------------------------------------------------------------------ layout
    @staticmethod
    def placeholder(config: Any) -> tuple[str, int]:
        """``("video", video_token_index)`` for InstructBLIP-Video, else ``("image", image_token_index)``."""
        for kind, name in (("video", "video_token_index"), ("image", "image_token_index")):
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return kind, value
        raise ValueError(
            f"{type(config).__name__} sets no `image_token_index`: this checkpoint predates the processors that write "
            "the Q-Former's query placeholders into `input_ids` (transformers 5.x needs them too). Use an updated "
            "checkpoint or set `image_token_index` to the processor's image token id."
        )

    def image_token_id(self, config: Any) -> int:
        return self.placeholder(config)[1]

    def video_token_id(self, config: Any) -> int | None:
        return None  # a video config's placeholder is its only one, served as `image_token_id`

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per row, ``num_query_tokens`` placeholders per image (per frame of a video), in prompt order."""
        family = getattr(config, "model_type", None) or type(config).__name__
        kind, token_id = self.placeholder(config)
        per_item = int(config.num_query_tokens)
        if kind == "video":
            pixel_values = model_kwargs.get("pixel_values")
            if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
                raise ValueError(
                    f"{family}: how many frames each video has is unknown without `pixel_values` of shape (videos, "
                    "frames, channels, height, width). Pass everything the model's processor returned."
                )
            per_item *= int(pixel_values.shape[1])
        positions = token_positions(input_ids, token_id)
        plan = MediaPlan(per_item, [("", torch.arange(per_item))])
        grids = assign_media(positions, lambda item, row: plan, kind=kind, num_items=None, family=family)
        return merge_rows(positions, grids)
