"""``"attention"``: raw attention of each generated token's position to the image tokens (a gradient-free baseline)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..outputs import FastRMResult
from .base import RelevancyMethod, register_method, sequences_of
from .forward import forced_sequence, recorded_attention, unwrap_model


@register_method
class RawAttention(RelevancyMethod):
    r"""The attention probabilities of the position that chose each token, to the image tokens: one language-model
    layer (the last by default), mean over heads. No gradient; one forward of the returned sequences with eager
    attention in the language model only (restored afterwards).

    The maps are probabilities (non-negative, not normalised over the image tokens: the rest of the row goes to
    text tokens).

    Args:
        layer (`int`, *optional*, defaults to -1): the language-model layer (negative counts from the end).
    """

    name = "attention"
    streams = False

    def __init__(self, layer: int = -1) -> None:
        if not isinstance(layer, int):
            raise TypeError(f"`layer` must be an integer layer index, got {layer!r}.")
        self.layer = layer

    def attribute(
        self, model: nn.Module, inputs: dict[str, Any], outputs_or_sequences: Any, **options: Any
    ) -> FastRMResult:
        model = unwrap_model(model)
        forced = forced_sequence(model, inputs, sequences_of(outputs_or_sequences), **options)
        num_layers = len(forced.adapter.decoder_layers(model))
        if not -num_layers <= self.layer < num_layers:
            raise ValueError(f"Layer {self.layer} does not exist: the language model has {num_layers} layers.")
        layer = self.layer % num_layers
        probabilities = recorded_attention(forced, [layer])[layer]  # (batch, length, length)
        rows = probabilities[:, forced.chosen_positions.to(probabilities.device)]  # (batch, steps, length)
        return forced.result(rows, self.name)
