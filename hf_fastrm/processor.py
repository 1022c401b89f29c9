"""`FastRMLogitsProcessor`: relevancy maps and confidence from any `generate()` call."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor

from .architectures import RowImageLayout, get_adapter
from .head import FastRMHead
from .outputs import BEAM_OUTPUTS, GENERATE_OUTPUTS, FastRMResult
from .results import assemble_result, eos_token_ids, special_token_ids
from .taps import HiddenStateTap

_BEAM_SEARCH_LOOPS = frozenset({"_beam_search", "_group_beam_search", "_constrained_beam_search"})


@dataclass(eq=False)
class _CallRecord:
    """What one `generate()` call that invoked the processor left: the prefill's facts and one map per step."""

    image_keys: torch.Tensor  # (rows, image_tokens, k): the prefill this call ran on (compared by identity)
    layouts: list[RowImageLayout]
    image_token_mask: torch.Tensor  # (rows, image_tokens)
    prompt_ids: torch.Tensor  # (rows, prompt_length), as expanded for beams / return sequences
    beam_search: bool
    steps: list[torch.Tensor] = field(default_factory=list)  # each (rows, image_tokens)
    last_input_ids: torch.Tensor | None = None  # (rows, prompt_length + steps - 1)

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_ids.shape[1])


class FastRMLogitsProcessor(LogitsProcessor):
    r"""Computes a FastRM relevancy map over the image tokens for every generated token, leaving the scores as they
    are (the generated tokens are identical with and without it).

    At construction it hooks the model's final norm (see [`HiddenStateTap`]); each step it runs the head on the
    newest last hidden state against keys computed once at prefill. The hooks live as long as the processor: use it
    as a context manager or call [`FastRMLogitsProcessor.close`] to remove them; they are also removed when the
    processor is garbage collected (the hooks hold no reference to it).

    One processor serves any number of `generate()` calls. Each call that is given the processor (in
    ``logits_processor=[...]``) replaces the result; calls on the same model that are not given it leave the result
    as it was, even while the hooks are attached.

    Args:
        model (`PreTrainedModel` or [`FastRMWrapper`]):
            The vision-language model `generate()` will run on (a family registered in `hf_fastrm.architectures`).
        head ([`FastRMHead`], *optional*):
            A head trained for this model; it is moved to the device of the model's final norm. Defaults to the head
            of `model` when that is a [`FastRMWrapper`].
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
        head: FastRMHead | None = None,
        *,
        check_base_model: bool = True,
        special_token_ids: list[int] | None = None,
    ) -> None:
        from .wrapper import FastRMWrapper

        if isinstance(model, FastRMWrapper):
            head = model.head if head is None else head
            model = model.model
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
        self._record: _CallRecord | None = None
        self._step_listeners: list[Callable[[], Callable[..., None] | None]] = []
        # The hooks live on the model, which outlives the processor: they must not keep the processor alive, or the
        # finalizer below would never run. The tap gets a function holding only a weak reference.
        on_prefill = weakref.WeakMethod(self._on_prefill)

        def image_keys(image_states: torch.Tensor) -> Any:
            method = on_prefill()
            return method(image_states) if method is not None else None

        self._tap = HiddenStateTap(model, self.adapter, on_prefill=image_keys, gather_text=head.reads_text)
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
    def _on_prefill(
        self,
        image_states: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_token_mask: torch.Tensor | None = None,
    ) -> Any:
        """The head's keys of the prompt, computed once per prefill (image keys `(rows, image_tokens, k)`; a
        question-aware head's also over the prompt's text tokens)."""
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
        tap = self._tap
        state = tap.take_last_state()
        if tap.prefill_error is not None:
            # the prefill's check failed; raised here so that calls not given the processor are never affected
            raise tap.prefill_error
        keys = tap.image_features
        if keys is None or keys.shape[0] != state.shape[0]:
            raise RuntimeError(
                "The FastRM tap saw no prefill for this generate() call; was the model called with input_ids?"
            )
        record = self._record
        if record is None or record.image_keys is not keys:
            # the first step of a call given this processor: a new result (calls not given it leave this one alone)
            record = _CallRecord(
                image_keys=keys,
                layouts=tap.layouts,
                image_token_mask=tap.image_token_mask,
                prompt_ids=tap.prompt_ids,
                beam_search=_inside_beam_search(),
            )
            self._record = record
        relevance = self.head.relevance_from_keys(state, keys)
        record.steps.append(relevance)
        record.last_input_ids = input_ids
        for reference in list(self._step_listeners):
            listener = reference()
            if listener is not None:
                listener(relevance, input_ids, tap.image_token_mask, tap.layouts)
        return scores

    # ------------------------------------------------------------------ step listeners (streaming)
    def add_step_listener(self, listener: Callable[..., None]) -> None:
        """Calls `listener(relevance, input_ids, image_token_mask, layouts)` at every step, right after the map of
        the token about to be chosen is computed (see `hf_fastrm.streaming.FastRMStreamer`).

        `relevance` has shape `(rows, image_tokens)` (padded; `image_token_mask` `(rows, image_tokens)` marks the
        real image tokens), `input_ids` `(rows, sequence_length)` are the tokens so far and `layouts` the rows'
        [`RowImageLayout`]s. A bound method is held weakly (the processor does not keep its owner alive).
        """
        reference = weakref.WeakMethod(listener) if hasattr(listener, "__self__") else (lambda: listener)
        self._step_listeners.append(reference)

    def remove_step_listener(self, listener: Callable[..., None]) -> None:
        """Stops calling `listener` (no error when it was not added)."""
        self._step_listeners = [ref for ref in self._step_listeners if ref() not in (None, listener)]

    # ------------------------------------------------------------------ results
    @property
    def result(self) -> FastRMResult:
        """Relevancy and confidence of the last `generate()` call given this processor (greedy or sampling).

        A logits processor never sees the last chosen token, so the per-sequence confidence counts it even when it
        is a special token; [`FastRMLogitsProcessor.result_for`] with the call's output is exact.

        Under beam search the processor sees every running beam but not which ones `generate()` returns, so this
        raises: use ``result_for(outputs)`` with ``return_dict_in_generate=True`` (its `beam_indices` pick the
        returned beams), or ``FastRMWrapper.generate(..., return_relevancy=True)``.
        """
        record = self._require_record()
        if record.beam_search:
            raise ValueError(
                "The last generate() call given this FastRM processor ran beam search: the processor saw every "
                "running beam, not the ones generate() returned. Use `fastrm.result_for(outputs)` with the outputs of "
                "generate(..., return_dict_in_generate=True) (their `beam_indices` pick the returned beams), or "
                "FastRMWrapper.generate(..., return_relevancy=True)."
            )
        return self._build(record, sequences=None, beam_indices=None)

    def result_for(self, outputs: Any, eos_token_id: int | list[int] | None = None) -> FastRMResult:
        """The result for `outputs` of the last `generate()` call given this processor: its sequences (a tensor or a
        `GenerateOutput`) fix the token masks, and its `beam_indices` make the maps follow the returned beams.

        Outputs of any other call are refused (their prompts, batch size or tokens differ from what the processor
        recorded): each call given the processor replaces its result, so read a call's result before the next one.

        Args:
            outputs: what that `generate()` call returned.
            eos_token_id (`int` or `list[int]`, *optional*): the call's end-of-sequence ids, when it overrode the
                model's generation config.
        """
        beam_indices = getattr(outputs, "beam_indices", None)
        sequences = getattr(outputs, "sequences", outputs)
        if isinstance(outputs, BEAM_OUTPUTS) and beam_indices is None:
            raise ValueError("Beam-search outputs without `beam_indices`: pass return_dict_in_generate=True.")
        if (
            not isinstance(sequences, torch.Tensor)
            or sequences.ndim != 2
            or not isinstance(outputs, (torch.Tensor, *GENERATE_OUTPUTS))
        ):
            raise TypeError(f"`outputs` must be generate()'s output, got {type(outputs).__name__}.")
        record = self._require_record()
        if record.beam_search and beam_indices is None:
            raise ValueError(
                "The last generate() call given this FastRM processor ran beam search: pass its full output, from "
                "generate(..., return_dict_in_generate=True), whose `beam_indices` pick the returned beams; the "
                "sequences alone do not say which running beam each came from."
            )
        self._check_same_call(record, sequences, beam_indices)
        return self._build(record, sequences=sequences, beam_indices=beam_indices, eos_token_id=eos_token_id)

    def _require_record(self) -> _CallRecord:
        if self._record is None or not self._record.steps:
            raise RuntimeError("No FastRM result yet: pass this processor to generate(logits_processor=[...]) first.")
        return self._record

    @staticmethod
    def _check_same_call(record: _CallRecord, sequences: torch.Tensor, beam_indices: torch.Tensor | None) -> None:
        """Refuses `sequences` that the recorded call did not produce (another call's outputs)."""
        rows, prompt_length = record.prompt_ids.shape
        other_call = (
            "`outputs` do not come from the last generate() call this FastRM processor was given ({why}). Each call "
            "given the processor replaces its result: read `result_for(outputs)` right after the call that made them."
        )
        device = record.prompt_ids.device
        sequences = sequences.to(device)
        if beam_indices is None:
            if sequences.shape[0] != rows:
                raise ValueError(other_call.format(why=f"they hold {sequences.shape[0]} sequences, that call {rows}"))
            expected_prompts = record.prompt_ids
        else:
            source = beam_indices[:, 0].to(device).long()
            if bool(((source < 0) | (source >= rows)).any()):
                raise ValueError(other_call.format(why=f"their beam indices point outside that call's {rows} beams"))
            expected_prompts = record.prompt_ids[source]
        if sequences.shape[1] < prompt_length or not torch.equal(sequences[:, :prompt_length], expected_prompts):
            raise ValueError(other_call.format(why="their prompts differ"))
        if beam_indices is None:
            new_tokens, steps = sequences.shape[1] - prompt_length, len(record.steps)
            seen = record.last_input_ids.to(device)
            if new_tokens != steps or not torch.equal(sequences[:, : seen.shape[1]], seen):
                raise ValueError(
                    other_call.format(why=f"their {new_tokens} new tokens differ from the {steps} that call generated")
                )

    def _build(
        self,
        record: _CallRecord,
        sequences: torch.Tensor | None,
        beam_indices: torch.Tensor | None,
        eos_token_id: int | list[int] | None = None,
    ) -> FastRMResult:
        per_row = torch.stack(record.steps, dim=1)  # (rows, steps, image_tokens)
        prompt_length = record.prompt_length
        if sequences is not None:
            new_tokens = sequences[:, prompt_length:]
        else:  # the processor never saw the last chosen token
            new_tokens = record.last_input_ids[:, prompt_length:]
        return assemble_result(
            per_row,
            image_token_mask=record.image_token_mask,
            image_layouts=record.layouts,
            new_tokens=new_tokens,
            eos_ids=eos_token_ids(self.model, eos_token_id),
            special_ids=special_token_ids(self.model, eos_token_id, self.special_token_ids),
            beam_indices=beam_indices,
            method="fastrm",
        )


def _inside_beam_search(max_depth: int = 16) -> bool:
    """Whether the caller runs inside generate()'s beam-search loop (a logits processor is not told which loop)."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if frame.f_code.co_name in _BEAM_SEARCH_LOOPS:
            return True
        frame = frame.f_back
    return False
