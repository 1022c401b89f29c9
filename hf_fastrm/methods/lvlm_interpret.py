"""``"lvlm-interpret"``: the relevancy rule of Intel's LVLM-Interpret app, for users who need to reproduce its maps."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessorList
from transformers.utils import logging

from ..outputs import FastRMResult
from .base import RelevancyMethod, register_method, sequences_of
from .forward import ForcedSequence, forced_sequence, unwrap_model

logger = logging.get_logger(__name__)


@register_method
class LVLMInterpretRelevancy(RelevancyMethod):
    r"""Gradient relevancy as IntelLabs/lvlm-interpret's `construct_relevancy_map` computes it (Chefer et al. 2021
    rules 5 and 6 on the language model), batched and without keeping the generation graph.

    What differs from the ``"gradient"`` teacher (which gives every token its own exact gradient):

    * **reused rows**: token ``t``'s matrix ``Abar_l`` takes the prompt rows from the backward of the first token and
      the row of each later position from the backward of the token chosen there (as the app appends each decoding
      step's row to the matrices of earlier steps), instead of recomputing every row from token ``t``'s gradient;
    * **processed score**: the differentiated score is the chosen token's score after the call's logits processors
      (temperature, top-k, top-p, repetition penalty, ... rebuilt from the generation config and the call's
      settings), as the app differentiates `generate()`'s `scores`; for greedy decoding without processors it is the
      raw logit;
    * **residual normalisation** (the app's ``handle_residual``, its default): with ``R`` the product of
      ``(I + Abar_l)``, the map is ``(R[p] - e_p) / sum(R[p] - e_p)`` at the image positions (a zero sum divides by 1).

    For the first generated token the rows are the teacher's rows, so the map is the teacher's map divided by the
    row's sum. The app's word-level aggregation and its vision-tower maps are not reproduced.

    Args:
        apply_normalization (`bool`, *optional*, defaults to `True`): the residual normalisation (the app's default);
            without it the map is ``R[p] - e_p`` at the image positions.
        token_chunk_size (`int`, *optional*, defaults to 2): tokens per batched backward.
        logits_processor (`LogitsProcessorList`, *optional*): the processors whose output is differentiated; by
            default rebuilt from the generation config and the `generate()` settings in `inputs`.
    """

    name = "lvlm-interpret"
    streams = False

    def __init__(
        self,
        apply_normalization: bool = True,
        token_chunk_size: int = 2,
        logits_processor: LogitsProcessorList | None = None,
    ) -> None:
        if not isinstance(token_chunk_size, int) or token_chunk_size < 1:
            raise ValueError(f"`token_chunk_size` must be a positive integer, got {token_chunk_size!r}.")
        self.apply_normalization = apply_normalization
        self.token_chunk_size = token_chunk_size
        self.logits_processor = logits_processor

    def attribute(
        self, model: nn.Module, inputs: dict[str, Any], outputs_or_sequences: Any, **options: Any
    ) -> FastRMResult:
        from ..teacher.attention import AttentionCapture, frozen, relevance_dtype
        from ..teacher.gradient import _chunk_relevance

        inputs = dict(inputs)
        model = unwrap_model(model)
        forced = forced_sequence(model, inputs, sequences_of(outputs_or_sequences), **options)
        processors = self.logits_processor
        if processors is None:
            processors = _call_processors(model, inputs, forced)
        adapter = forced.adapter
        decoder_layers = adapter.decoder_layers(model)
        layers = list(range(len(decoder_layers)))
        block_rows = 128 if forced.input_ids.device.type == "cpu" else None
        capture = AttentionCapture(
            model,
            adapter.language_model(model),
            decoder_layers,
            layers,
            block_rows=block_rows,
            inline=adapter.inline_attention(model),
        )
        prompt_length, steps = forced.prompt_length, forced.steps
        prompt_end = forced.prefix + prompt_length  # in the decoder's sequence
        try:
            with frozen(model), capture, torch.enable_grad():
                logits = forced.forward().logits[:, -steps:]
                dtype = relevance_dtype(logits.dtype)
                chosen = forced.new_tokens[:, :steps].to(logits.device)
                targets = []
                for step in range(steps):
                    scores = logits[:, step].to(dtype)
                    if processors:
                        scores = processors(forced.input_ids[:, : prompt_length + step], scores.clone())
                    targets.append(scores.gather(-1, chosen[:, step : step + 1]).squeeze(-1))
                targets = torch.stack(targets, dim=1)  # (batch, steps)
                del logits
                probes = [capture.probes[layer] for layer in layers]
                reused = [torch.zeros_like(probe, dtype=dtype) for probe in probes]  # (batch, n, n) per layer
                for start in range(0, steps, self.token_chunk_size):
                    stop = min(start + self.token_chunk_size, steps)
                    relevance = _chunk_relevance(targets, probes, start, stop)
                    for offset, step in enumerate(range(start, stop)):
                        rows = slice(0, prompt_end) if step == 0 else slice(prompt_end - 1 + step, prompt_end + step)
                        for layer, per_token in enumerate(relevance):
                            reused[layer][:, rows] = per_token[offset][:, rows].to(dtype)
                    del relevance
        finally:
            capture.release()
        return forced.result(_normalised_rows(reused, forced, self.apply_normalization), self.name)


def _normalised_rows(reused: list[torch.Tensor], forced: ForcedSequence, apply_normalization: bool) -> torch.Tensor:
    """Row ``p`` of ``(I + Abar_L) ... (I + Abar_1)`` per token, minus the identity, normalised: `(batch, steps, n)`."""
    length = reused[0].shape[-1]
    positions = forced.chosen_positions.to(reused[0].device)
    start = torch.nn.functional.one_hot(positions, length).to(reused[0].dtype)
    row = start.unsqueeze(0).expand(reused[0].shape[0], -1, -1)
    for matrix in reversed(reused):
        row = row + row @ matrix
    row = row - start  # R - I
    if apply_normalization:
        total = row.sum(dim=-1, keepdim=True)
        row = row / torch.where(total == 0, torch.ones_like(total), total)
    return row


def _call_processors(model: nn.Module, inputs: dict[str, Any], forced: ForcedSequence) -> LogitsProcessorList:
    """The logits processors `generate()` applied in the call whose keyword arguments are `inputs`."""
    config = copy.deepcopy(inputs.get("generation_config") or model.generation_config)
    settings = {key: value for key, value in inputs.items() if key != "generation_config" and hasattr(config, key)}
    config.update(**settings)
    try:
        return model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=forced.prompt_length,
            encoder_input_ids=forced.input_ids[:, : forced.prompt_length],
            logits_processor=LogitsProcessorList(list(inputs.get("logits_processor") or [])),
            device=forced.input_ids.device,
            model_kwargs={},
        )
    except (AttributeError, TypeError, ValueError) as error:
        logger.warning(f"Could not rebuild the call's logits processors ({error}); differentiating the raw logits.")
        return LogitsProcessorList()
