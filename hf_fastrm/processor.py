"""`FastRMLogitsProcessor`: relevancy maps and confidence from any `generate()` call."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

from .architectures import get_adapter
from .head import FastRMHead
from .outputs import FastRMResult
from .results import assemble_result, eos_token_ids, special_token_ids
from .taps import HiddenStateTap


class FastRMLogitsProcessor(LogitsProcessor):
    r"""Computes a FastRM relevancy map over the image tokens for every generated token, leaving the scores as they
    are (the generated tokens are identical with and without it).

    At construction it hooks the model's final norm (see [`HiddenStateTap`]); each step it runs the head on the
    newest last hidden state against keys computed once at prefill. The hooks live as long as the processor: use it
    as a context manager or call [`FastRMLogitsProcessor.close`] to remove them (they are also removed when it is
    garbage collected). One processor serves any number of `generate()` calls; each prefill starts a new result.

    Args:
        model (`PreTrainedModel`):
            The vision-language model `generate()` will run on (a family registered in `hf_fastrm.architectures`).
        head ([`FastRMHead`]):
            A head trained for this model; it is moved to the device of the model's final norm.
        check_base_model (`bool`, *optional*, defaults to `True`):
            Refuse a head whose base model name differs from the model's (see [`FastRMHead.check_compatible`]).
        special_token_ids (`list[int]`, *optional*):
            Token ids left out of the per-sequence confidence; defaults to the call's end-of-sequence ids and the
            generation config's eos, pad and bos (the rule of `hf_fastrm.results`).

    Example:

    ```python
    >>> from hf_fastrm import FastRMLogitsProcessor
    >>> with FastRMLogitsProcessor(model, head) as fastrm:
    ...     out = model.generate(**inputs, logits_processor=[fastrm], max_new_tokens=16)
    >>> fastrm.result.relevancy.shape  # (batch, new_tokens, image_tokens)
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        head: FastRMHead,
        *,
        check_base_model: bool = True,
        special_token_ids: list[int] | None = None,
    ) -> None:
        if not isinstance(head, FastRMHead):
            raise TypeError(
                f"`head` must be a FastRMHead, got {type(head).__name__}; load one with FastRMHead.from_pretrained."
            )
        self.adapter = get_adapter(model)
        head.check_compatible(model.config, check_base_model=check_base_model)
        norm = self.adapter.final_norm(model)
        norm_param = next(norm.parameters(), None)
        if norm_param is not None and next(head.parameters()).device != norm_param.device:
            head.to(norm_param.device)
        self.model = model
        self.head = head
        self.special_token_ids = None if special_token_ids is None else [int(i) for i in special_token_ids]
        self._steps: list[torch.Tensor] = []
        self._last_input_ids: torch.Tensor | None = None
        self._tap = HiddenStateTap(model, self.adapter, on_prefill=self._on_prefill)
        self._tap.attach()
        self._finalizer = weakref.finalize(self, self._tap.detach)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Removes the hooks from the model; the last result stays readable."""
        self._tap.detach()

    def __enter__(self) -> FastRMLogitsProcessor:
        if not self._tap.attached:
            self._tap.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ per step
    @torch.no_grad()
    def _on_prefill(self, image_states: torch.Tensor) -> torch.Tensor:
        self._steps = []
        self._last_input_ids = None
        return self.head.image_keys(image_states)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Records the map of the token about to be chosen; returns `scores` unchanged.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch * num_beams, sequence_length)`)
            scores (`torch.FloatTensor` of shape `(batch * num_beams, vocab_size)`)
        """
        state = self._tap.take_last_state()
        keys = self._tap.image_features
        if keys is None or keys.shape[0] != state.shape[0]:
            raise RuntimeError(
                "The FastRM tap saw no prefill for this generate() call; was the model called with input_ids?"
            )
        self._steps.append(self.head.relevance_from_keys(state, keys))
        self._last_input_ids = input_ids
        return scores

    # ------------------------------------------------------------------ results
    @property
    def result(self) -> FastRMResult:
        """Relevancy and confidence of the last `generate()` call (greedy or sampling).

        A logits processor never sees the last chosen token, so the per-sequence confidence counts it even when it
        is a special token; [`FastRMLogitsProcessor.result_for`] with the call's output is exact, and required for
        beam search.
        """
        return self._build(sequences=None, beam_indices=None)

    def result_for(self, outputs: Any, eos_token_id: int | list[int] | None = None) -> FastRMResult:
        """The result for `outputs` of the last `generate()` call: its sequences (a tensor or a `GenerateOutput`)
        fix the token masks, and its `beam_indices` make the maps follow the returned beams.

        Args:
            outputs: what that `generate()` call returned.
            eos_token_id (`int` or `list[int]`, *optional*): the call's end-of-sequence ids, when it overrode the
                model's generation config.
        """
        beam_indices = getattr(outputs, "beam_indices", None)
        sequences = getattr(outputs, "sequences", outputs)
        if isinstance(outputs, GenerateBeamDecoderOnlyOutput) and beam_indices is None:
            raise ValueError("Beam-search outputs without `beam_indices`: pass return_dict_in_generate=True.")
        if not isinstance(sequences, torch.Tensor) or not isinstance(
            outputs, (torch.Tensor, GenerateDecoderOnlyOutput, GenerateBeamDecoderOnlyOutput)
        ):
            raise TypeError(f"`outputs` must be generate()'s output, got {type(outputs).__name__}.")
        return self._build(sequences=sequences, beam_indices=beam_indices, eos_token_id=eos_token_id)

    def _build(
        self,
        sequences: torch.Tensor | None,
        beam_indices: torch.Tensor | None,
        eos_token_id: int | list[int] | None = None,
    ) -> FastRMResult:
        tap = self._tap
        if not self._steps or tap.layouts is None or tap.prompt_length is None:
            raise RuntimeError("No FastRM result yet: pass this processor to generate(logits_processor=[...]) first.")
        per_row = torch.stack(self._steps, dim=1)  # (rows, steps, image_tokens)
        if sequences is not None:
            new_tokens = sequences[:, tap.prompt_length :]
        else:  # the processor never saw the last chosen token
            new_tokens = self._last_input_ids[:, tap.prompt_length :]
        return assemble_result(
            per_row,
            image_token_mask=tap.image_token_mask,
            image_layouts=tap.layouts,
            new_tokens=new_tokens,
            eos_ids=eos_token_ids(self.model, eos_token_id),
            special_ids=special_token_ids(self.model, eos_token_id, self.special_token_ids),
            beam_indices=beam_indices,
            method="fastrm",
        )
