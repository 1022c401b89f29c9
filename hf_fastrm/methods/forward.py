"""What the after-generation methods share: one teacher-forced forward of the returned sequences, optionally
recording the language model's attention probabilities, and the assembly of per-position rows into a result."""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..architectures import ArchitectureAdapter, RowImageLayout, get_adapter
from ..architectures.base import check_image_tokens
from ..outputs import FastRMResult
from ..results import (
    assemble_result,
    call_eos_token_id,
    eos_token_ids,
    gather_image_slots,
    image_slots,
    special_token_ids,
    token_masks,
)
from ..teacher.attention import (
    _additive_mask,
    _configs,
    _get_implementation,
    _set_implementation,
    attention_modules,
    frozen,
    inline_attention_routed,
    refuse_attention_sinks,
    relevance_dtype,
    sdpa_fallback,
)
from ..teacher.attention import _probabilities as eager_probabilities
from ..teacher.gradient import (
    extend_per_token_inputs,
    generation_position_ids,
    prompt_inputs,
)

RECORD_ATTENTION = "fastrm_record"
"""Name under which the attention that records head-mean probabilities is registered in transformers."""

_ACTIVE_RECORDER: AttentionRecorder | None = None


@dataclass
class ForcedSequence:
    """The returned sequences prepared for one teacher-forced forward.

    Attributes:
        input_ids (`torch.LongTensor` of shape `(batch, length)`): prompt + new tokens but the last explained one.
        attention_mask (`torch.LongTensor` of shape `(batch, length)`).
        forward_kwargs (`dict`): the other forward inputs (pixel values, positions, ...).
        new_tokens (`torch.LongTensor` of shape `(batch, new_tokens)`): all generated tokens.
        steps (`int`): tokens explained (up to the last step any row still generates).
        chosen_positions (`torch.LongTensor` of shape `(steps,)`): the positions whose logits chose them, in the
            decoder's sequence (``prefix`` later than in `input_ids`).
        layouts (`list[RowImageLayout]`), eos_ids, special_ids: for [`ForcedSequence.result`].
    """

    model: nn.Module
    adapter: ArchitectureAdapter
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    forward_kwargs: dict[str, Any]
    prompt_length: int
    new_tokens: torch.Tensor
    steps: int
    chosen_positions: torch.Tensor
    layouts: list[RowImageLayout]
    eos_ids: list[int] = field(default_factory=list)
    special_ids: list[int] = field(default_factory=list)
    prefix: int = 0
    """Positions the model puts before `input_ids` in the decoder's sequence (GIT's image features)."""

    @property
    def sequence_length(self) -> int:
        """Length of the decoder's sequence in the forward: `prefix` + `input_ids`' length."""
        return self.prefix + int(self.input_ids.shape[1])

    def forward(self) -> Any:
        """One forward over `input_ids` (no cache, logits of the explained positions only where supported)."""
        return self.model(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            use_cache=False,
            return_dict=True,
            **self.forward_kwargs,
        )

    def result(self, rows: torch.Tensor, method: str, over_positions: bool = True) -> FastRMResult:
        """The result of per-token rows: `(batch, steps, length)` over every position (`over_positions`), or
        `(batch, steps, image_tokens)` already on the image slots."""
        if over_positions:
            picked, image_mask = gather_image_slots(rows, self.layouts)
        else:
            picked = rows
            _, image_mask = image_slots(self.layouts, rows.device)
        relevancy = picked.new_full((picked.shape[0], self.new_tokens.shape[1], picked.shape[2]), math.nan)
        relevancy[:, : self.steps] = picked
        return assemble_result(
            relevancy,
            image_token_mask=image_mask,
            image_layouts=self.layouts,
            new_tokens=self.new_tokens,
            eos_ids=self.eos_ids,
            special_ids=self.special_ids,
            method=method,
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The base model of a [`FastRMWrapper`] (methods explain through it); any other model as it is."""
    from ..wrapper import FastRMWrapper

    return model.model if isinstance(model, FastRMWrapper) else model


def forced_sequence(
    model: nn.Module,
    inputs: dict[str, Any],
    sequences: torch.Tensor,
    *,
    eos_token_id: int | list[int] | None = None,
    special_ids: list[int] | None = None,
    cross_attention: bool = False,
) -> ForcedSequence:
    """Prepares `sequences` (checked against the prompt in `inputs`) for one teacher-forced forward, as the gradient
    teacher does (same positions, same per-token inputs).

    A method that reads relevance at image positions of the sequence cannot explain a family whose images enter
    through cross-attention (layouts with ``source="cross_attention"``): it is refused unless the caller handles
    such layouts (`cross_attention=True`: the FastRM head and the gradient teacher)."""
    if not isinstance(inputs, dict) and hasattr(inputs, "keys"):
        inputs = dict(inputs)
    model = unwrap_model(model)
    adapter = get_adapter(model)
    if adapter.is_encoder_decoder:
        raise NotImplementedError(
            f"{type(model).__name__} is an encoder-decoder model (its image tokens sit in the encoder's input), and "
            "this method forces a decoder-only sequence. For encoder-decoder models use the maps "
            "`FastRMWrapper.generate(..., return_relevancy=True)` returns, or the 'gradient' method (Chefer et al.'s "
            "encoder-decoder rules); 'attention', 'rollout', 'lvlm-interpret' and the after-the-fact 'fastrm' method "
            "do not support them yet."
        )
    inputs = adapter.generation_prompt(model, inputs)
    if eos_token_id is None:
        eos_token_id = call_eos_token_id(inputs)
    input_ids, prompt_mask, extra = prompt_inputs(model, inputs, sequences)
    batch, prompt_length = input_ids.shape
    new_tokens = sequences[:, prompt_length:].to(input_ids.device)
    layouts = adapter.image_layout(model.config, input_ids, extra)
    check_image_tokens(layouts)
    if not cross_attention and any(layout.cross_attention for layout in layouts):
        raise NotImplementedError(
            "This method reads relevance at the image tokens' positions of the sequence, but "
            f"{type(model).__name__} takes its images through cross-attention (the sequence holds no image "
            "tokens). Use the 'fastrm' head or the 'gradient' teacher, which read the cross-attention image states."
        )
    eos_ids = eos_token_ids(model, eos_token_id)
    specials = special_token_ids(model, eos_token_id, special_ids)
    token_mask, _ = token_masks(new_tokens, eos_ids, specials)
    steps = int(token_mask.any(dim=0).nonzero().max()) + 1
    ids = sequences[:, : prompt_length + steps - 1].to(input_ids.device)
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, steps - 1)], dim=1)
    forward_kwargs = dict(extend_per_token_inputs(model, extra, prompt_length, steps - 1))
    parameters = inspect.signature(model.forward).parameters
    decoding_positions = adapter.decoding_position_ids(model, ids, prompt_length)
    if "position_ids" in parameters and decoding_positions is not None:
        forward_kwargs["position_ids"] = decoding_positions
    elif "position_ids" in parameters and not adapter.computes_own_positions(model):
        forward_kwargs["position_ids"] = generation_position_ids(mask)
    if "logits_to_keep" in parameters:
        forward_kwargs["logits_to_keep"] = steps
    prefix = adapter.sequence_prefix(model.config, extra)
    chosen = torch.arange(prefix + prompt_length - 1, prefix + prompt_length - 1 + steps, device=input_ids.device)
    return ForcedSequence(
        model=model,
        adapter=adapter,
        input_ids=ids,
        attention_mask=mask,
        forward_kwargs=forward_kwargs,
        prompt_length=prompt_length,
        new_tokens=new_tokens,
        steps=steps,
        chosen_positions=chosen,
        layouts=layouts,
        eos_ids=eos_ids,
        special_ids=specials,
        prefix=prefix,
    )


class AttentionRecorder:
    """Context manager: the language model's layers run eager attention and keep, for the layers asked for, the
    mean over heads of the attention probabilities, `(batch, length, length)` in float32 (float64 for float64
    models). Only the language model's config switches; every config's attention implementation is restored on
    exit, also on error. Calls from other modules (the vision tower) go to sdpa."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, layers: list[int]) -> None:
        self.model = model
        self.language_model = adapter.language_model(model)
        decoder_layers = adapter.decoder_layers(model)
        self.num_layers = len(decoder_layers)
        self.inline = adapter.inline_attention(model)
        modules = attention_modules(decoder_layers, preferred=self.inline)
        self.layer_of_module = {id(module): index for index, module in enumerate(modules)}
        self.layers = {layer % self.num_layers for layer in layers}
        self.probabilities: dict[int, torch.Tensor] = {}
        self._saved: list[tuple[PretrainedConfig, Any]] = []
        self._routed: contextlib.ExitStack | None = None

    def __enter__(self) -> AttentionRecorder:
        global _ACTIVE_RECORDER
        if _ACTIVE_RECORDER is not None:
            raise RuntimeError("An attention recorder is already active; relevancy methods cannot be nested.")
        config = self.language_model.config
        self._saved = [(c, _get_implementation(c)) for c in _configs(self.model)]
        if not any(c is config for c, _ in self._saved):
            self._saved.append((config, _get_implementation(config)))
        _ACTIVE_RECORDER = self
        try:
            _set_implementation(config, RECORD_ATTENTION)
            self._routed = contextlib.ExitStack()
            self._routed.enter_context(inline_attention_routed(self.inline, _record_attention_forward))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _ACTIVE_RECORDER
        if self._routed is not None:
            self._routed.close()
            self._routed = None
        for config, value in self._saved:
            _set_implementation(config, value)
        self._saved = []
        if _ACTIVE_RECORDER is self:
            _ACTIVE_RECORDER = None

    def missing_layers(self) -> list[int]:
        return sorted(self.layers - set(self.probabilities))


def _record_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Eager attention (the `AttentionInterface` signature) that hands head-mean probabilities to the recorder."""
    recorder = _ACTIVE_RECORDER
    layer = recorder.layer_of_module.get(id(module)) if recorder is not None else None
    if layer is None:
        return sdpa_fallback(module, query, key, value, attention_mask, dropout, scaling, softcap, kwargs)
    refuse_attention_sinks(module, kwargs, "the attention methods do not model")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = _additive_mask(module, attention_mask, query, key)
    probs, (probs_full, _) = eager_probabilities(query, key, mask, float(scaling), softcap)
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if layer in recorder.layers:
        per_head = probs_full.view(batch, kv_heads, heads // kv_heads, q_len, -1)
        recorder.probabilities[layer] = per_head.mean(dim=(1, 2)).to(relevance_dtype(query.dtype))
    output = (probs @ value).view(batch, heads, q_len, head_dim)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(RECORD_ATTENTION, _record_attention_forward)
AttentionMaskInterface.register(RECORD_ATTENTION, eager_mask)


def recorded_attention(forced: ForcedSequence, layers: list[int]) -> dict[int, torch.Tensor]:
    """Head-mean attention probabilities of the language-model `layers` over the forced sequence, `(batch, length,
    length)` each (row ``i``: what position ``i`` attends to)."""
    recorder = AttentionRecorder(forced.model, forced.adapter, layers)
    with torch.no_grad(), frozen(forced.model), recorder:
        forced.forward()
    missing = recorder.missing_layers()
    if missing:
        raise RuntimeError(
            f"The attention of language-model layers {missing} of {type(forced.model).__name__} did not go through "
            "transformers' AttentionInterface, so it cannot be recorded."
        )
    return recorder.probabilities
