"""``"rollout"``: attention rollout (Abnar & Zuidema 2020) over the language model's layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..outputs import FastRMResult
from .base import RelevancyMethod, register_method, sequences_of
from .forward import forced_sequence, recorded_attention, unwrap_model


@register_method
class AttentionRollout(RelevancyMethod):
    r"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", arXiv 2005.00928).

    Each language-model layer's attention, averaged over heads, is mixed with the residual connection,
    ``Atilde_l = 0.5 A_l + 0.5 I`` (rows still sum to 1), and the layers are multiplied,
    ``R = Atilde_L ... Atilde_1``; a token's map is row ``p`` of ``R`` (``p``: the position that chose it) at the
    image positions. Only that row is needed, so it is propagated as a vector, as the gradient teacher does:
    ``v = e_p; for l = L..1: v <- 0.5 v + 0.5 v A_l``. One forward of the returned sequences with eager attention in
    the language model only (restored afterwards); no gradient.

    Args:
        layers (`list[int]`, *optional*): the language-model layers entering the product (all by default).
    """

    name = "rollout"
    streams = False

    def __init__(self, layers: list[int] | None = None) -> None:
        self.layers = layers

    def attribute(
        self, model: nn.Module, inputs: dict[str, Any], outputs_or_sequences: Any, **options: Any
    ) -> FastRMResult:
        from ..teacher.gradient import select_layers

        model = unwrap_model(model)
        forced = forced_sequence(model, inputs, sequences_of(outputs_or_sequences), **options)
        selected = select_layers(self.layers, len(forced.adapter.decoder_layers(model)))
        probabilities = recorded_attention(forced, selected)
        first = probabilities[selected[0]]
        length = first.shape[-1]
        positions = forced.chosen_positions.to(first.device)
        row = torch.nn.functional.one_hot(positions, length).to(first.dtype)
        row = row.unsqueeze(0).expand(first.shape[0], -1, -1)  # (batch, steps, length)
        for layer in reversed(selected):
            attention = probabilities[layer].to(row.device)
            row = 0.5 * row + 0.5 * (row @ attention)
        return forced.result(row, self.name)
