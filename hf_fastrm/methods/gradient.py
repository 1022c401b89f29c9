"""``"gradient"``: the gradient teacher's exact maps (see `hf_fastrm.teacher` and docs/teacher.md)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..outputs import FastRMResult
from ..results import call_eos_token_id
from .base import RelevancyMethod, register_method, sequences_of


@register_method
class GradientRelevancy(RelevancyMethod):
    r"""Chefer et al. 2021 rules 5 and 6 on the language model, every token from its own gradient: exact for this
    rule ([`hf_fastrm.teacher.gradient_relevancy`]). Equal to LVLM-Interpret for the first generated token; for
    later tokens LVLM-Interpret reuses rows of earlier tokens (the ``"lvlm-interpret"`` method reproduces that).

    Args:
        init_kwargs: options of [`gradient_relevancy`] (`layers`, `target`, `token_chunk_size`,
            `attention_block_rows`, `show_progress`, `special_token_ids`).
    """

    name = "gradient"
    streams = False

    def __init__(self, **init_kwargs: Any) -> None:
        self.options = init_kwargs

    def attribute(
        self, model: nn.Module, inputs: dict[str, Any], outputs_or_sequences: Any, **options: Any
    ) -> FastRMResult:
        from ..teacher.gradient import gradient_relevancy

        options = {**self.options, **options}
        options.setdefault("eos_token_id", call_eos_token_id(dict(inputs)))
        return gradient_relevancy(model, inputs, sequences_of(outputs_or_sequences), **options).result
