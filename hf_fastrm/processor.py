"""`FastRMLogitsProcessor`: relevancy maps and confidence from any `generate()` call."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

from .architectures import get_adapter
from .confidence import map_confidence, sequence_confidence
from .head import FastRMHead
from .outputs import FastRMResult
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
            Token ids left out of the per-sequence confidence; defaults to the generation config's eos, pad and bos.

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
        self.special_token_ids = self._special_ids(model, special_token_ids)
        self._steps: list[torch.Tensor] = []
        self._last_input_ids: torch.Tensor | None = None
        self._tap = HiddenStateTap(model, self.adapter, on_prefill=self._on_prefill, gather_text=head.reads_text)
        self._tap.attach()
        self._finalizer = weakref.finalize(self, self._tap.detach)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Removes the hooks from the model; the last result stays readable."""
        self._tap.detach()

    @property
    def is_attached(self) -> bool:
        return self._tap.attached

    def __enter__(self) -> FastRMLogitsProcessor:
        if not self._tap.attached:
            self._tap.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ per step
    @torch.no_grad()
    def _on_prefill(
        self,
        image_states: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_token_mask: torch.Tensor | None = None,
    ) -> Any:
        self._steps = []
        self._last_input_ids = None
        if not self.head.reads_text:
            return self.head.image_keys(image_states)
        if text_states is None:  # inside generate(): what the tap gathered at this prefill
            text_states, text_token_mask = self._tap.text_states, self._tap.text_token_mask
        return self.head.prefill_keys(image_states, text_states, text_token_mask)

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
        image_mask = tap.image_token_mask.to(per_row.device)
        layouts = tap.layouts
        if beam_indices is not None:
            num_steps = min(beam_indices.shape[1], per_row.shape[1])
            beam_indices = beam_indices[:, :num_steps].to(per_row.device)
            source = beam_indices.clamp(min=0)
            step = torch.arange(num_steps, device=per_row.device).expand_as(source)
            relevancy = per_row[source, step]  # (returned_rows, steps, image_tokens)
            first = source[:, 0]
            image_mask = image_mask[first]
            layouts = [layouts[int(row)] for row in first]
            generated = beam_indices >= 0
        else:
            relevancy = per_row
            generated = torch.ones(relevancy.shape[:2], dtype=torch.bool, device=relevancy.device)
        num_steps = relevancy.shape[1]
        if sequences is not None:
            new_tokens = sequences[:, tap.prompt_length : tap.prompt_length + num_steps].to(relevancy.device)
        else:
            new_tokens = self._last_input_ids[:, tap.prompt_length :].to(relevancy.device)
        token_mask, counted = self._token_masks(new_tokens, generated, self._eos_ids(eos_token_id))
        relevancy = relevancy.masked_fill(~(token_mask.unsqueeze(-1) & image_mask.unsqueeze(1)), float("nan"))
        confidence = map_confidence(relevancy, image_mask.unsqueeze(1))
        return FastRMResult(
            relevancy=relevancy,
            confidence=confidence,
            sequence_confidence=sequence_confidence(confidence, counted),
            token_mask=token_mask,
            image_token_mask=image_mask,
            image_layouts=layouts,
        )

    def _token_masks(
        self, new_tokens: torch.Tensor, generated: torch.Tensor, eos_token_ids: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens generated up to and including the row's EOS, those of them that are not special tokens).

        `new_tokens` may lack the last step's token (a processor never sees it): it then counts as generated and
        non-special.
        """
        known = min(new_tokens.shape[1], generated.shape[1])
        new_tokens = new_tokens[:, :known]
        is_eos = torch.zeros_like(generated)
        special = torch.zeros_like(generated)
        if eos_token_ids:
            is_eos[:, :known] = torch.isin(new_tokens, torch.as_tensor(eos_token_ids, device=new_tokens.device))
        if self.special_token_ids:
            special[:, :known] = torch.isin(
                new_tokens, torch.as_tensor(self.special_token_ids, device=new_tokens.device)
            )
        ended_before = torch.zeros_like(generated)
        ended_before[:, 1:] = is_eos.cumsum(dim=1)[:, :-1] > 0
        token_mask = generated & ~ended_before
        return token_mask, token_mask & ~special

    def _eos_ids(self, eos_token_id: int | list[int] | None = None) -> list[int]:
        if eos_token_id is None:
            eos_token_id = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos_token_id is None:
            return []
        return [int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])]

    @staticmethod
    def _special_ids(model: nn.Module, special_token_ids: list[int] | None) -> list[int]:
        if special_token_ids is not None:
            return [int(i) for i in special_token_ids]
        config = getattr(model, "generation_config", None)
        ids: list[int] = []
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(config, name, None)
            if value is None:
                continue
            ids.extend(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        return sorted(set(ids))
