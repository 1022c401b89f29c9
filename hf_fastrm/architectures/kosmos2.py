"""Kosmos-2 and Kosmos-2.5: image latents written where ``image_embeds_position_mask`` is 1.

Their processors write ``latent_query_num`` ordinary token ids per image between ``<image>`` and ``</image>`` and
mark those positions in ``image_embeds_position_mask`` (no placeholder id exists in the config); the text model
writes the image-to-text projection's latents (learned queries attending to the whole image: no patch grid) over the
marked positions of its input embeddings. So the image tokens are the positions where the mask is 1, one 1-D grid
of ``latent_query_num`` tokens per image, in prompt order.

Kosmos-2's own `generate()` encodes the image and calls ``text_model.generate()``, so the tap watches the text model
([`KosmosAdapter.generation_module`]); Kosmos-2.5 generates through its top-level forward (``flattened_patches``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, RowImageLayout
from .grids import MediaPlan, assign_media, merge_rows

MASK_INPUT = "image_embeds_position_mask"


class KosmosAdapter(ArchitectureAdapter):
    """``Kosmos2ForConditionalGeneration`` / ``Kosmos2_5ForConditionalGeneration``: positions from
    ``image_embeds_position_mask``.

    Args:
        model_types: the ``config.model_type`` values served.
        pixels (`str`): the processor output holding the images (``pixel_values``, ``flattened_patches``).
        delegates_generation (`bool`): the model's own `generate()` calls ``text_model.generate()``.
        tested_configs: the suite's cases.
    """

    family = "Kosmos-2 / Kosmos-2.5"
    grid_description = (
        "one 1-D grid per image of `latent_query_num` tokens, where `image_embeds_position_mask` is 1 (latents of "
        "learned queries have no patch grid)"
    )
    teacher_support = "yes"
    image_mask_inputs = (MASK_INPUT,)

    def __init__(
        self,
        model_types: tuple[str, ...],
        *,
        pixels: str,
        delegates_generation: bool,
        tested_configs: tuple[str, ...] = (),
    ) -> None:
        self.model_types = tuple(model_types)
        self.image_inputs = (pixels, MASK_INPUT)
        self.delegates_generation = delegates_generation
        self.tested_configs = tuple(tested_configs)

    # ------------------------------------------------------------------ modules
    def generation_module(self, model: nn.Module) -> nn.Module:
        return model.text_model if self.delegates_generation else model

    def language_model(self, model: nn.Module) -> nn.Module:
        decoder = getattr(getattr(model, "text_model", None), "model", None)
        if not isinstance(decoder, nn.Module) or not hasattr(decoder, "layers"):
            raise ValueError(f"Cannot find the text decoder of {type(model).__name__} (expected `text_model.model`).")
        return decoder

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.language_model(model).layer_norm

    def computes_own_positions(self, model: nn.Module) -> bool:
        """True: the text model derives its sinusoidal positions from ``input_ids`` and the padding index (its
        ``prepare_inputs_for_generation`` passes none)."""
        return True

    def decoding_position_ids(self, model: nn.Module, input_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """The text model's positions as `generate()` gets them: over the prompt ``padding_idx`` + the count of
        non-padding tokens so far (padding at ``padding_idx``); a generated token at index ``t`` is decoded at cache
        length + 1, ``t + 1 + padding_idx``, which counts a left-padded row's padding too (a full forward would not).
        `input_ids` `(batch, seq)` holds prompt and generated tokens."""
        padding = int(self.language_model(model).embed_positions.padding_idx)
        real = input_ids.ne(padding).long()
        prompt = real[:, :prompt_length].cumsum(-1) * real[:, :prompt_length]
        steps = torch.arange(prompt_length + 1, input_ids.shape[1] + 1, device=input_ids.device)
        return torch.cat([prompt, steps * real[:, prompt_length:]], dim=-1) + padding

    # ------------------------------------------------------------------ inputs
    def required_inputs(self, config: Any, input_ids: torch.Tensor) -> tuple[str, ...]:
        """The images and their position mask: without them the prompt holds no image to explain."""
        return self.image_inputs

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per row, the positions where ``image_embeds_position_mask`` is 1, ``latent_query_num`` per image."""
        mask = model_kwargs.get(MASK_INPUT)
        if not isinstance(mask, torch.Tensor) or mask.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{type(config).__name__}: the image tokens are the positions where `{MASK_INPUT}` is 1, and "
                f"generate() got {'no mask' if mask is None else f'a mask of shape {tuple(mask.shape)}'} for a prompt "
                f"of shape {tuple(input_ids.shape)}. Pass everything the model's processor returned."
            )
        mask = mask[:, : input_ids.shape[1]].bool()  # at prefill generate() may have padded it for new tokens
        positions = [row.nonzero().flatten().cpu() for row in mask]
        latents = int(config.latent_query_num)
        plan = MediaPlan(latents, [("", torch.arange(latents))])
        family = getattr(config, "model_type", None) or type(config).__name__
        grids = assign_media(positions, lambda item, row: plan, kind="image", num_items=None, family=family)
        return merge_rows(positions, grids)


KOSMOS_FAMILIES = (
    KosmosAdapter(
        ("kosmos-2",),
        pixels="pixel_values",
        delegates_generation=True,
        tested_configs=("kosmos-2: CLIP-style tower, 4 latents an image; one image a row",),
    ),
    KosmosAdapter(
        ("kosmos-2.5",),
        pixels="flattened_patches",
        delegates_generation=False,
        tested_configs=("kosmos-2.5: Pix2Struct-style flattened patches, 4 latents an image; one image a row",),
    ),
)
