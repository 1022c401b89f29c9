"""GIT (``GitForCausalLM``): image features prepended to the text, with no token of theirs in ``input_ids``.

``GitModel`` runs each image through its CLIP tower, projects every feature (the CLS token first, then the patches
row-major) and puts them BEFORE the text embeddings: the decoder's sequence is ``image_tokens + input_ids``, the
image block attending to itself bidirectionally, the text causally. So the image tokens are the first
``image_tokens`` positions of the decoder's sequence (`ArchitectureAdapter.sequence_prefix`), never in
``input_ids``; prompt and generated tokens sit that many positions later. An image is ``1 + (image_size /
patch_size)^2`` tokens: the CLS token (an image token in no grid cell) and a square patch grid; a video
(``pixel_values`` of shape `(batch, frames, channels, height, width)`) is that per frame, one `(frames, h, w)` grid.

The decoder is a BERT-style post-norm encoder: no final norm, the last layer's output ``LayerNorm`` gives the
states ``output`` (the LM head) reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, InlineAttentionForward, RowImageLayout, bert_style_attention
from .grids import square_grid


def git_self_attention(
    module: nn.Module,
    attention_function: Callable[..., Any],
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``GitSelfAttention.forward`` with its inline ``softmax(q k^T / sqrt(d) + mask) v`` done by
    `attention_function` (the `AttentionInterface` signature); see [`ArchitectureAdapter.inline_attention`].

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, seq, hidden)`): the layer's input.
        attention_mask (`torch.Tensor` of shape `(batch, 1, seq, keys)`, *optional*): GitModel's additive mask (the
            image prefix bidirectional, the text causal).
        cache (`Cache`, *optional*): updated with this layer's keys and values, as GIT's forward does.

    Returns:
        `(context (batch, seq, hidden), weights or None)`, as ``GitSelfAttention.forward``.
    """
    if "past_key_values" in kwargs and cache is None:  # the name GIT's forward still accepts (deprecated)
        cache = kwargs.pop("past_key_values")
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, module.attention_head_size)
    query = module.query(hidden_states).view(hidden_shape).transpose(1, 2)
    key = module.key(hidden_states).view(hidden_shape).transpose(1, 2)
    value = module.value(hidden_states).view(hidden_shape).transpose(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx, kwargs=kwargs)
    return bert_style_attention(module, attention_function, query, key, value, attention_mask, input_shape)


class GitAdapter(ArchitectureAdapter):
    """``GitForCausalLM``: the image tokens are the sequence's prefix."""

    model_types = ("git",)
    family = "GIT"
    grid_description = (
        "the first 1 + (image_size/patch_size)^2 positions of the decoder's sequence (prepended, not in input_ids): "
        "CLS token in no cell, one (h, w) patch grid; a video (frames, h, w)"
    )
    teacher_support = (
        "yes (`GitSelfAttention` computes its softmax inline; while the teacher runs it goes through the teacher's "
        "attention, `inline_attention`)"
    )
    tested_configs = (
        "git: CLIP tower 64 px / patch 16, 17 prepended tokens an image; one image a row",
        "git-video: 2 frames (`num_image_with_embedding`), 2 x 17 prepended tokens a video (slow tests)",
    )

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.git.encoder

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layer

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The last layer's output ``LayerNorm`` (post-norm layers: its output is the last hidden state)."""
        return self.decoder_layers(model)[-1].output.LayerNorm

    def inline_attention(self, model: nn.Module) -> dict[nn.Module, InlineAttentionForward]:
        """Every text layer's ``GitSelfAttention`` (inline softmax) with [`git_self_attention`]."""
        return {layer.attention.self: git_self_attention for layer in self.decoder_layers(model)}

    def required_inputs(self, config: Any, input_ids: torch.Tensor) -> tuple[str, ...]:
        """The pixel values: without them the sequence holds no image."""
        return self.image_inputs

    @staticmethod
    def _frames_and_side(config: Any, model_kwargs: dict[str, Any]) -> tuple[int, int]:
        pixel_values = model_kwargs.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() not in (4, 5):
            raise ValueError(
                "GIT puts the image in front of the text, so FastRM needs the `pixel_values` generate() was given "
                "(`(batch, channels, height, width)`, or `(batch, frames, channels, height, width)` for video)."
            )
        vision = config.vision_config
        frames = int(pixel_values.shape[1]) if pixel_values.dim() == 5 else 1
        return frames, int(vision.image_size) // int(vision.patch_size)

    def sequence_prefix(self, config: Any, model_kwargs: dict[str, Any]) -> int:
        frames, side = self._frames_and_side(config, model_kwargs)
        return frames * (1 + side * side)

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per row, positions ``0 .. prefix - 1`` of the decoder's sequence; per frame the CLS token, then the
        patches row-major."""
        frames, side = self._frames_and_side(config, model_kwargs)
        per_frame = 1 + side * side
        grid = torch.stack([square_grid(side, side, start=frame * per_frame + 1) for frame in range(frames)])
        label = "image 0" if frames == 1 else "video 0"
        grid = grid[0] if frames == 1 else grid
        return [
            RowImageLayout(torch.arange(frames * per_frame), [grid.clone()], [label])
            for _ in range(input_ids.shape[0])
        ]
