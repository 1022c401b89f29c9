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

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, ImageStateReader, InlineAttentionForward, RowImageLayout, bert_style_attention


def blip_text_self_attention(
    module: nn.Module,
    attention_function: Callable[..., Any],
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``BlipTextSelfAttention.forward`` (self- or cross-attention, with its cache rules) with its inline
    ``softmax(q k^T / sqrt(d) + mask) v`` done by `attention_function` (the `AttentionInterface` signature); see
    [`ArchitectureAdapter.inline_attention`].

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, seq, hidden)`): the block's input (the queries).
        attention_mask (`torch.Tensor` of shape `(batch, 1, seq, keys)`, *optional*): the text's additive mask.
        encoder_hidden_states (`torch.Tensor` of shape `(batch, image_states, vision_hidden)`, *optional*): the image
            states; given, this is cross-attention (its mask is `encoder_attention_mask`, as in BLIP's forward).
        cache (`Cache`, *optional*): BLIP's `EncoderDecoderCache` (cross-attention keys computed once).

    Returns:
        `(context (batch, seq, hidden), weights or None)`, as ``BlipTextSelfAttention.forward``.
    """
    from transformers.cache_utils import EncoderDecoderCache

    if "past_key_values" in kwargs and cache is None:  # the name BLIP's forward still accepts (deprecated)
        cache = kwargs.pop("past_key_values")
    input_shape = hidden_states.shape[:-1]
    query = module.query(hidden_states).view(*input_shape, -1, module.attention_head_size).transpose(1, 2)
    is_cross_attention = encoder_hidden_states is not None
    attention_mask = encoder_attention_mask if is_cross_attention else attention_mask
    is_updated = False
    current_cache = cache
    if isinstance(cache, EncoderDecoderCache):
        is_updated = bool(cache.is_updated.get(module.layer_idx))
        current_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
    current_states = encoder_hidden_states if is_cross_attention else hidden_states
    if is_cross_attention and cache is not None and is_updated:
        key = current_cache.layers[module.layer_idx].keys
        value = current_cache.layers[module.layer_idx].values
    else:
        kv_shape = (*current_states.shape[:-1], -1, module.attention_head_size)
        key = module.key(current_states).view(kv_shape).transpose(1, 2)
        value = module.value(current_states).view(kv_shape).transpose(1, 2)
        if cache is not None:
            key, value = current_cache.update(key, value, module.layer_idx, kwargs=kwargs)
            if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                cache.is_updated[module.layer_idx] = True
    return bert_style_attention(module, attention_function, query, key, value, attention_mask, input_shape)


class BlipAdapter(ArchitectureAdapter):
    """``BlipForConditionalGeneration``: image tokens are the text decoder's cross-attention states."""

    model_types = ("blip",)
    family = "BLIP (captioner, cross-attention)"
    grid_description = (
        "cross-attention: the image tokens are the text decoder's `encoder_hidden_states` (the vision tower's CLS, "
        "in no cell, then an (H / patch, W / patch) patch grid, row-major); vision and text widths must be equal"
    )
    teacher_support = (
        "yes (Chefer et al.'s bi-modal rule; `BlipTextSelfAttention` computes its softmax inline and goes through the "
        "teacher's attention while it runs, `inline_attention`; `layers=` counts each decoder layer's self- and "
        "cross-attention as two)"
    )
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
        """The text decoder's attention blocks in forward order: each BERT layer's self-attention
        (``layer.attention``), then its cross-attention to the image (``layer.crossattention``). The teacher's rules
        take each as one layer (as IDEFICS' cross-attention blocks), so ``layers=`` indexes this list."""
        blocks: list[nn.Module] = []
        for layer in self.language_model(model).encoder.layer:
            blocks.append(layer.attention)
            blocks.append(layer.crossattention)
        return nn.ModuleList(blocks)

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The last layer's output LayerNorm (post-norm BERT): the states the LM head's transform reads."""
        return self.language_model(model).encoder.layer[-1].output.LayerNorm

    def cross_attention_layers(self, model: nn.Module) -> list[int]:
        """The cross-attention blocks of [`decoder_layers`]: every second one."""
        return list(range(1, len(self.decoder_layers(model)), 2))

    def inline_attention(self, model: nn.Module) -> dict[nn.Module, InlineAttentionForward]:
        """Every ``BlipTextSelfAttention`` of the text decoder (self and cross; inline softmax) with
        [`blip_text_self_attention`]."""
        return {block.self: blip_text_self_attention for block in self.decoder_layers(model)}

    def generation_prompt(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """What BLIP's generate() hands the text decoder: ``input_ids`` with BOS over the first token and the last
        (the processor's ``[SEP]``) dropped, or BOS alone without a prompt; the attention mask likewise; the end of
        sequence is ``[SEP]``. The inputs are not changed (BLIP's own generate() writes BOS into them)."""
        pixel_values = inputs.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError("BLIP needs the `pixel_values` generate() was given to explain its caption.")
        text = model.config.text_config
        input_ids = inputs.get("input_ids")
        if input_ids is None:
            input_ids = torch.full((pixel_values.shape[0], 1), int(text.bos_token_id), device=pixel_values.device)
            attention_mask = None
        else:
            input_ids = torch.as_tensor(input_ids).clone()
            input_ids[:, 0] = int(text.bos_token_id)
            input_ids = input_ids[:, :-1]
            attention_mask = inputs.get("attention_mask")
            attention_mask = attention_mask[:, :-1] if attention_mask is not None else None
        prompt = {**inputs, "input_ids": input_ids, "eos_token_id": int(text.sep_token_id)}
        if attention_mask is None:
            prompt.pop("attention_mask", None)
        else:
            prompt["attention_mask"] = attention_mask
        return prompt

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
