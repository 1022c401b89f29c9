"""Exact gradient relevancy maps (the teacher FastRM heads are distilled from), computed the lean way.

The rule (Chefer et al. 2021, rules 5 and 6; exact for this rule, which equals LVLM-Interpret's maps for the first
generated token only, see docs/teacher.md): for generated token ``t``,
chosen at position ``p``, let ``y`` be its logit (or log-probability) there. For each language-model layer ``l`` with
attention probabilities ``A_l`` of shape `(heads, n, n)`,

    Abar_l = mean over heads of clamp(dy/dA_l * A_l, min=0)
    R      = (I + Abar_L) ... (I + Abar_1)             (first layer rightmost)
    map_t  = R[p, image positions]

where ``dy/dA_l`` is the total derivative (through every later layer). Only row ``p`` of ``R`` is needed, so the row
is propagated as a vector: ``v = e_p; for l = L..1: v <- v + v Abar_l``.

Cross-attention families (Mllama: the image states are keys of cross-attention layers, not positions of the
sequence; layouts with ``source="cross_attention"``) follow Chefer et al.'s rules for bi-modal attention with the
image states as a second modality that does not attend to the text (``R_ii = I``, ``R_it = 0``): self-attention
layers update ``R_tt <- R_tt + Abar R_tt`` and ``R_ti <- R_ti + Abar R_ti`` (rules 6 and 7), and a cross-attention
layer ``c``, whose ``Abar_c`` `(n, image_states)` is formed like the others from its probabilities and gradients,
adds ``R_ti <- R_ti + Rbar_tt Abar_c`` (rule 10 with ``Rbar_ii = I``), where ``Rbar_tt = I + rownorm(R_tt - I)`` over the
self-attention layers below ``c`` (rules 8 and 9). Rule 10 as printed multiplies by the transpose of ``Rbar_tt``;
in a causal decoder that reads the rows of later positions, whose gradients are zero, so it would drop what the
token draws from earlier tokens' cross-attention; the rows of ``Rbar_tt`` (the token's own mixing, as rule 7 applies
it) are used instead. The token's map is row ``p`` of ``R_ti`` at the layout's image states:
``sum over c of (e_p (I + Abar_L) ... (I + Abar_{c+1})) Rbar_tt(<c) Abar_c`` (self-attention layers only in the
products), propagated as vectors like the rest.

The lean form: weights frozen (no weight gradients), generation done beforehand without a graph, then one
teacher-forced forward of the whole sequence in which the language model's attention records what the backward needs
(see [`hf_fastrm.teacher.attention`]), and one backward per generated token, several tokens at a time through
``torch.func.vmap`` over ``torch.autograd.grad``; each backward yields the ``(batch, n, n)`` matrices ``Abar_l``
directly, never ``(heads, n, n)`` gradients, and no ``n x n`` product is formed.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import ModelOutput, logging

from ..architectures import get_adapter
from ..outputs import GENERATE_OUTPUTS, FastRMResult
from ..results import (
    call_eos_token_id,
    gather_image_slots,
    image_slots,
)
from .attention import AttentionCapture, frozen, relevance_dtype

logger = logging.get_logger(__name__)

TARGETS = ("logit", "log_prob")

# Keys of a model's forward() that are not prompt inputs: the teacher sets them itself (or must not pass them).
_NOT_PROMPT_INPUTS = frozenset(
    {
        "input_ids",
        "attention_mask",
        "position_ids",
        "past_key_values",
        "cache",
        "cache_position",
        "inputs_embeds",
        "labels",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "logits_to_keep",
        "num_logits_to_keep",
        "kwargs",
    }
)


@dataclass
class TeacherOutput:
    """What [`gradient_relevancy`] returns.

    Attributes:
        result ([`FastRMResult`]): the maps in the head's structure, ``method="gradient"``. `relevancy` has shape
            `(batch, new_tokens, image_tokens)`: non-negative, *not* normalised (row ``p`` of ``R`` at the image
            positions; see [`relevancy_labels`] for per-token min-max labels), NaN after a row's end of sequence and
            in padding image slots.
        text_relevancy (`torch.FloatTensor` of shape `(batch, new_tokens, seq_len)`, *optional*): the rest of row
            ``p``, over every position of `sequences` (seq_len = `sequences.shape[1]`): NaN at image positions, padding,
            positions after ``p`` and tokens after the row's end. Position ``p`` itself holds the identity term (>= 1).
        image_hidden_states (`torch.FloatTensor` of shape `(batch, image_tokens, hidden)`, *optional*): the language
            model's last hidden states (final norm output, what ``lm_head`` reads) at the image positions, zero in
            padding slots; for cross-attention layouts the image states the cross-attention layers attend to (what
            the FastRM head reads as keys there).
        token_hidden_states (`torch.FloatTensor` of shape `(batch, new_tokens, hidden)`, *optional*): the same at the
            position that chose each token (zero for steps after every row has ended).
        text_hidden_states (`torch.FloatTensor` of shape `(batch, text_tokens, hidden)`, *optional*): the same at the
            prompt's text tokens (attended, not image; `hf_fastrm.text_tokens.text_token_index`), zero in padding
            slots; what a question-aware head reads.
        text_token_mask (`torch.BoolTensor` of shape `(batch, text_tokens)`, *optional*): its real entries.
        layers (`list[int]`): the language-model layers whose attention entered the product.
        target (`str`): ``"logit"`` or ``"log_prob"``.
    """

    result: FastRMResult
    text_relevancy: torch.Tensor | None = None
    image_hidden_states: torch.Tensor | None = None
    token_hidden_states: torch.Tensor | None = None
    text_hidden_states: torch.Tensor | None = None
    text_token_mask: torch.Tensor | None = None
    layers: list[int] | None = None
    target: str = "logit"

    @property
    def relevancy(self) -> torch.Tensor:
        return self.result.relevancy


def gradient_relevancy(
    model: nn.Module,
    inputs: dict[str, Any],
    sequences: torch.LongTensor,
    *,
    layers: list[int] | None = None,
    target: str = "logit",
    return_text_relevancy: bool = False,
    return_hidden_states: bool = False,
    token_chunk_size: int | None = None,
    attention_block_rows: int | None = None,
    show_progress: bool = False,
    eos_token_id: int | list[int] | None = None,
    special_token_ids: list[int] | None = None,
) -> TeacherOutput:
    r"""Gradient relevancy of every generated token over the image tokens, exact for the rule of this module (every
    token's rows from its own gradient of the raw logit or log-probability).

    Equal to LVLM-Interpret's maps for the first generated token (float64, 2e-16); for later tokens they differ
    (on 50 scenes: Pearson median 0.9999, min 0.96; argmax agrees on 336 of 350 tokens), as LVLM-Interpret reuses
    rows computed for earlier tokens and differentiates the processed score. For that app's maps use
    ``hf_fastrm.methods.get_method("lvlm-interpret")``.

    Args:
        model (`PreTrainedModel` or [`FastRMWrapper`]): a vision-language model of a registered family (its weights
            are not changed; ``requires_grad``, train/eval mode and the attention implementation are restored on
            return, also on error).
        inputs (`dict`): what the processor gave `generate()`: `input_ids` `(batch, prompt_len)`, `attention_mask`,
            `pixel_values`, `image_sizes`, ... Keys the model's forward does not take (generation settings) are ignored.
        sequences (`torch.LongTensor` of shape `(rows, prompt_len + new_tokens)`): `generate()`'s sequences; `rows` is
            `batch` or a multiple of it (``num_return_sequences``: row ``i`` belongs to prompt ``i // k``).
        layers (`list[int]`, *optional*): language-model layers entering the product (negative indices count from the
            end); all by default. Gradients still flow through the other layers.
        target (`str`, *optional*, defaults to `"logit"`): ``"logit"`` (the chosen token's raw logit) or
            ``"log_prob"`` (its log-probability under the model's softmax).
        return_text_relevancy (`bool`, *optional*, defaults to `False`): also return the row over all positions.
        return_hidden_states (`bool`, *optional*, defaults to `False`): also return the last hidden states at the
            image positions and at the positions that chose each token (from the same forward pass).
        token_chunk_size (`int`, *optional*): tokens whose gradients one batched backward computes (memory grows with
            it; 1 means one plain backward per token). Defaults to 2 on CPU (with the attention in row blocks, 2 to 8
            tokens measure within 5 % of each other on the cpu-mid benchmark model) and 8 on accelerators
            (fastest on an H200 at 7B, 1.26x the memory of plain generate). A chunk that runs out of memory
            (``torch.OutOfMemoryError``, on any device) is retried in halves.
        attention_block_rows (`int`, *optional*): query rows per block in the attention's backward: each block is
            computed against the keys its rows can see, which skips the masked half of a causal ``(n, n)`` product
            (0 means one block over everything). Defaults to 128 on CPU, where the blocks' tensors stay in cache,
            and to one block on accelerators (on an H200 at 7B, blocks of 256 rows took 1.016 s against 0.999 s:
            the skipped work is small next to the projections, and more, smaller kernels cost as much).
        show_progress (`bool`, *optional*, defaults to `False`): a progress bar over the tokens.
        eos_token_id (`int` or `list[int]`, *optional*): end-of-sequence ids (default: the generation config's).
        special_token_ids (`list[int]`, *optional*): tokens left out of the per-sequence confidence (default: the
            generation config's eos, pad and bos).

    Returns:
        [`TeacherOutput`].

    Example:

    ```python
    >>> from hf_fastrm.teacher import gradient_relevancy
    >>> out = model.generate(**inputs, max_new_tokens=16)
    >>> teacher = gradient_relevancy(model, inputs, out)
    >>> teacher.result.relevancy.shape  # (batch, 16, image_tokens)
    >>> teacher.result.relevancy_maps(0)[0].shape  # (16, 24, 24) for LLaVA-1.5
    ```
    """
    model = _unwrap(model)
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
    refusal = getattr(get_adapter(model), "teacher_refusal", None)
    if refusal and not get_adapter(model).is_encoder_decoder:  # encoder-decoder refusals: their teacher's own check
        raise NotImplementedError(
            f"The gradient teacher does not support {get_adapter(model).family} ({refusal.removeprefix('no: ')})."
        )
    if get_adapter(model).is_encoder_decoder:
        if layers is not None or return_text_relevancy:
            raise ValueError(
                "`layers` and `return_text_relevancy` are not supported for encoder-decoder models yet: their teacher "
                "(Chefer et al.'s encoder-decoder rules, `hf_fastrm.teacher.encoder_decoder`) uses every layer and "
                "returns the maps over the encoder's image tokens."
            )
        from .encoder_decoder import encoder_decoder_relevancy

        return encoder_decoder_relevancy(
            model,
            inputs,
            sequences,
            target=target,
            return_hidden_states=return_hidden_states,
            token_chunk_size=token_chunk_size,
            show_progress=show_progress,
            eos_token_id=eos_token_id,
            special_token_ids_=special_token_ids,
        )
    if token_chunk_size is None:
        token_chunk_size = 2 if next(model.parameters()).device.type == "cpu" else 8
    if attention_block_rows is None:
        attention_block_rows = 128 if next(model.parameters()).device.type == "cpu" else 0
    if not isinstance(attention_block_rows, int) or attention_block_rows < 0:
        raise ValueError(
            f"`attention_block_rows` must be a non-negative integer (0: one block), got {attention_block_rows!r}."
        )
    if not isinstance(token_chunk_size, int) or token_chunk_size < 1:
        raise ValueError(f"`token_chunk_size` must be a positive integer, got {token_chunk_size!r}.")
    from ..methods.base import sequences_of
    from ..methods.forward import forced_sequence

    sequences = sequences_of(sequences)
    forced = forced_sequence(
        model, inputs, sequences, eos_token_id=eos_token_id, special_ids=special_token_ids, cross_attention=True
    )
    batch, prompt_length, steps = forced.input_ids.shape[0], forced.prompt_length, forced.steps
    layouts = forced.layouts
    decoder_layers = forced.adapter.decoder_layers(model)
    selected = select_layers(layers, len(decoder_layers))
    cross_layers = set(forced.adapter.cross_attention_layers(model))
    cross = any(layout.cross_attention for layout in layouts)
    if cross != bool(cross_layers):
        raise ValueError(
            f"The {type(forced.adapter).__name__} layouts and cross-attention layers disagree: the layouts "
            f"{'index' if cross else 'do not index'} cross-attention image states, and the adapter names "
            f"{sorted(cross_layers) or 'no'} cross-attention layers."
        )
    rows, hidden, image_rows, image_states = _relevancy_rows(
        forced,
        decoder_layers,
        selected,
        cross_layers=cross_layers,
        target=target,
        token_chunk_size=token_chunk_size,
        block_rows=attention_block_rows or None,
        show_progress=show_progress,
        keep_hidden=return_hidden_states,
    )  # rows: (batch, steps, length); image_rows: (batch, steps, image_states) for cross-attention layouts
    if cross:
        picked, _ = gather_image_slots(image_rows, layouts)
        result = forced.result(picked, "gradient", over_positions=False)
    else:
        result = forced.result(rows, "gradient")
    output = TeacherOutput(result=result, layers=selected, target=target)
    num_new, length, prefix = forced.new_tokens.shape[1], forced.input_ids.shape[1], forced.prefix

    if return_text_relevancy:
        seq_len = sequences.shape[1]
        text = torch.full((batch, num_new, seq_len), math.nan, dtype=rows.dtype, device=rows.device)
        text[:, :steps, :length] = rows[..., prefix:]  # positions of `sequences` (a prefix holds no token of it)
        position = torch.arange(seq_len, device=rows.device)
        visible = position.view(1, 1, -1) <= (prompt_length - 1 + torch.arange(num_new, device=rows.device)).view(
            1, -1, 1
        )
        prompt_mask = forced.attention_mask[:, :prompt_length].bool()
        valid = torch.cat([prompt_mask, prompt_mask.new_ones(batch, seq_len - prompt_length)], dim=1)
        valid = valid.to(rows.device)
        for row, layout in enumerate(layouts):
            if not layout.cross_attention:  # cross-attention image states are no positions of the sequence
                in_sequence = layout.image_positions - prefix
                valid[row, in_sequence[in_sequence >= 0].to(rows.device)] = False
        keep = visible & valid.unsqueeze(1) & result.token_mask.unsqueeze(-1)
        output.text_relevancy = text.masked_fill(~keep, math.nan)

    if return_hidden_states:
        width = hidden.shape[-1]
        image_index, image_mask = image_slots(layouts, hidden.device)
        source = image_states.to(hidden.device) if cross else hidden
        picked_states = source.gather(1, image_index.unsqueeze(-1).expand(-1, -1, width))
        output.image_hidden_states = picked_states * image_mask.unsqueeze(-1)
        token_states = hidden.new_zeros(batch, num_new, width)
        token_states[:, :steps] = hidden[:, forced.chosen_positions.to(hidden.device)]
        output.token_hidden_states = token_states
        from ..text_tokens import gather_positions, text_token_index

        text_index, text_mask = text_token_index(
            prompt_length, layouts, forced.attention_mask[:, :prompt_length], prefix=prefix
        )
        output.text_hidden_states = gather_positions(hidden, text_index, text_mask)
        output.text_token_mask = text_mask.to(hidden.device)
    return output


def gradient_relevancy_for_outputs(model: nn.Module, outputs: Any, inputs: dict[str, Any]) -> FastRMResult:
    """The teacher's maps for a finished `generate()` call (what ``FastRMWrapper.generate(...,
    return_relevancy="gradient")`` returns).

    The returned sequences are teacher-forced, so the maps are exact for whatever produced them: greedy, sampling,
    or beam search (each returned beam is explained as the sequence it is; ``beam_indices`` are not needed).

    Args:
        model (`PreTrainedModel` or [`FastRMWrapper`]): the model that generated.
        outputs: `generate()`'s output (a `GenerateOutput` or the sequences tensor).
        inputs (`dict`): the keyword arguments of that `generate()` call (prompt tensors and generation settings;
            `eos_token_id` or `generation_config` there are honoured).
    """
    model = _unwrap(model)
    sequences = getattr(outputs, "sequences", outputs)
    if not isinstance(outputs, (torch.Tensor, *GENERATE_OUTPUTS)):
        raise TypeError(
            f"`outputs` must be generate()'s output (sequences or a dict output), got {type(outputs).__name__}."
        )
    return gradient_relevancy(model, inputs, sequences, eos_token_id=call_eos_token_id(inputs)).result


# ---------------------------------------------------------------------------------------------------- the core
def _relevancy_rows(
    forced: Any,
    decoder_layers: nn.ModuleList,
    selected: list[int],
    *,
    cross_layers: set[int] | None = None,
    target: str,
    token_chunk_size: int,
    block_rows: int | None,
    show_progress: bool,
    keep_hidden: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Row ``p`` of ``R`` (``R_tt`` with cross-attention layers) for every token of the forced sequence (a
    `hf_fastrm.methods.forward.ForcedSequence`): `(batch, steps, length)`; the final-norm output `(batch, length,
    hidden)` when `keep_hidden`; and with `cross_layers` (decoder layers attending to image states), row ``p`` of
    ``R_ti``, `(batch, steps, image_states)`, and the image states the adapter's source read, `(batch,
    image_states, hidden)` (None and None without)."""
    cross_layers = cross_layers or set()
    model, adapter = forced.model, forced.adapter
    batch, length = forced.input_ids.shape[0], forced.sequence_length
    steps = forced.steps
    chosen_tokens = forced.new_tokens[:, :steps]
    chosen_positions = forced.chosen_positions
    language_model = adapter.language_model(model)
    norm = adapter.final_norm(model)
    recorded: dict[str, torch.Tensor] = {}

    def keep_last_hidden(module: nn.Module, args: tuple, output: Any) -> None:
        recorded["hidden"] = (output[0] if isinstance(output, tuple) else output).detach()

    capture = AttentionCapture(
        model,
        language_model,
        decoder_layers,
        selected,
        block_rows=block_rows,
        cross_layers=cross_layers,
        inline=adapter.inline_attention(model),
    )
    handles = [norm.register_forward_hook(keep_last_hidden)] if keep_hidden else []
    if cross_layers:
        module, read_states = adapter.image_state_source(model)

        def keep_image_states(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            states = read_states(args, kwargs)
            if states is not None:
                recorded["image_states"] = states.detach()

        handles.append(module.register_forward_pre_hook(keep_image_states, with_kwargs=True))
    is_cross = [layer in cross_layers for layer in selected]
    try:
        with frozen(model), capture, torch.enable_grad():
            outputs = forced.forward()
            missing = sorted(set(range(len(decoder_layers))) - set(capture.called_layers))
            if missing:
                raise RuntimeError(
                    f"The attention of language-model layers {missing} of {type(model).__name__} did not go through "
                    "transformers' AttentionInterface, so the gradient teacher cannot record it. This family's "
                    "attention modules must call `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, "
                    "...)` (as Llama, Mistral, Qwen2 and Gemma do)."
                )
            logits = outputs.logits[:, -steps:]  # (batch, steps, vocab): positions that chose the new tokens
            del outputs
            rel_dtype = relevance_dtype(logits.dtype)
            scores = logits.to(rel_dtype)
            if target == "log_prob":
                scores = torch.log_softmax(scores, dim=-1)
            targets = scores.gather(-1, chosen_tokens.to(scores.device).unsqueeze(-1)).squeeze(-1)  # (batch, steps)
            del logits, scores
            probes = [capture.probes[layer] for layer in selected]
            rows = torch.zeros(batch, steps, length, dtype=rel_dtype, device=targets.device)
            image_rows = None
            if any(is_cross):
                width = capture.probes[selected[is_cross.index(True)]].shape[-1]
                image_rows = torch.zeros(batch, steps, width, dtype=rel_dtype, device=targets.device)
            chunk = min(token_chunk_size, steps)
            start = 0
            with tqdm(total=steps, desc="Gradient relevancy", unit="token", disable=not show_progress) as progress:
                while start < steps:
                    stop = min(start + chunk, steps)
                    try:
                        layer_relevance = _chunk_relevance(targets, probes, start, stop)
                    except torch.OutOfMemoryError:  # CUDA, and any accelerator whose allocator raises it
                        if chunk == 1:
                            raise
                        chunk = max(1, chunk // 2)
                        logger.warning(
                            f"Out of memory with {stop - start} tokens per backward; retrying with {chunk}."
                        )
                        _empty_cache(targets.device)
                        continue
                    positions = chosen_positions[start:stop].to(rows.device)
                    if image_rows is None:
                        rows[:, start:stop] = _propagate(layer_relevance, positions, length).transpose(0, 1)
                    else:
                        text_row, image_row = _propagate_bimodal(layer_relevance, is_cross, positions, length)
                        rows[:, start:stop] = text_row.transpose(0, 1)
                        image_rows[:, start:stop] = image_row.transpose(0, 1)
                    del layer_relevance
                    progress.update(stop - start)
                    start = stop
    finally:
        for handle in handles:
            handle.remove()
        capture.release()
    return rows, recorded.get("hidden"), image_rows, recorded.get("image_states")


def _chunk_relevance(targets: torch.Tensor, probes: list[torch.Tensor], start: int, stop: int) -> list[torch.Tensor]:
    """``Abar_l`` for tokens ``start..stop-1`` and each probed layer (first to last): `(tokens, batch, n, n)` each.

    Batch rows are independent, so one backward of the sum over rows serves all of them. The graph is kept (a
    chunk that runs out of memory is retried); it goes when the targets and probes do.
    """
    seeds = targets[:, start:stop].sum(dim=0)  # (tokens,)
    count = stop - start
    if count == 1:
        grads = torch.autograd.grad(seeds[0], probes, retain_graph=True)
        return [grad.unsqueeze(0) for grad in grads]

    # torch.func.vmap rather than `is_grads_batched=True`: the latter's older batching lacks rules for ops of the
    # backward (addcmul, ...) and falls back to a per-token loop with a concatenation.
    def one_token(seed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(seeds, probes, grad_outputs=seed, retain_graph=True)

    eye = torch.eye(count, dtype=seeds.dtype, device=seeds.device)
    return list(torch.func.vmap(one_token)(eye))


def _propagate(layer_relevance: list[torch.Tensor], positions: torch.Tensor, length: int) -> torch.Tensor:
    """Row ``p`` of ``(I + Abar_L) ... (I + Abar_1)`` as a vector: `(tokens, batch, length)`, on `positions`' device
    (layers may sit on several devices)."""
    tokens, batch = layer_relevance[0].shape[:2]
    start = torch.nn.functional.one_hot(positions, length).to(layer_relevance[0].dtype)
    row = start.unsqueeze(1).expand(tokens, batch, length).unsqueeze(2)
    for relevance in reversed(layer_relevance):
        row = row + row @ relevance.to(row.device)
    return row.squeeze(2)


def _propagate_bimodal(
    layer_relevance: list[torch.Tensor], is_cross: list[bool], positions: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``p`` of ``R_tt`` and of ``R_ti`` under Chefer et al.'s bi-modal rules (see the module docstring).

    Args:
        layer_relevance: ``Abar_l`` per probed layer, first to last: `(tokens, batch, n, n)` for self-attention,
            `(tokens, batch, n, image_states)` for cross-attention layers.
        is_cross: which of them are cross-attention layers.
        positions (`torch.LongTensor` of shape `(tokens,)`): each token's position ``p``.

    Returns:
        `(tokens, batch, length)` and `(tokens, batch, image_states)`, on `positions`' device.
    """
    tokens, batch = layer_relevance[0].shape[:2]
    start = torch.nn.functional.one_hot(positions, length).to(layer_relevance[0].dtype)
    row = start.unsqueeze(1).expand(tokens, batch, length).unsqueeze(2)  # (tokens, batch, 1, n)
    image = None
    for index in reversed(range(len(layer_relevance))):
        relevance = layer_relevance[index].to(row.device)
        if is_cross[index]:
            pairs = zip(layer_relevance[:index], is_cross[:index], strict=True)
            below = [rel.to(row.device) for rel, cross in pairs if not cross]
            added = _times_normalised_text_relevance(row, below) @ relevance
            image = added if image is None else image + added
        else:  # R_ti (rule 7) and R_tt (rule 6) both gain Abar_l R on the left: the row takes them in order
            row = row + row @ relevance
    return row.squeeze(2), image.squeeze(2)


def _times_normalised_text_relevance(row: torch.Tensor, below: list[torch.Tensor]) -> torch.Tensor:
    """``row Rbar`` for ``R = (I + Abar_k) ... (I + Abar_1)`` (the self-attention layers `below`, first to last) and
    ``Rbar = I + D^-1 (R - I)``, ``D`` the row sums of ``R - I`` (Chefer et al.'s rules 8 and 9; rows summing to 0
    stay the identity's): ``row + (row D^-1) R - row D^-1``, with ``R 1`` and ``(row D^-1) R`` as vector products.

    Shapes: `row` `(tokens, batch, 1, n)`, each of `below` `(tokens, batch, n, n)`; returns `(tokens, batch, 1, n)`.
    """
    if not below:
        return row
    column = torch.ones_like(row).transpose(-1, -2)  # (tokens, batch, n, 1): R 1, first layer applied first
    for relevance in below:
        column = column + relevance @ column
    sums = (column - 1).transpose(-1, -2)  # (tokens, batch, 1, n): row sums of R - I
    weights = torch.where(sums > 0, row / sums.clamp(min=torch.finfo(sums.dtype).tiny), torch.zeros_like(row))
    mixed = weights
    for relevance in reversed(below):
        mixed = mixed + mixed @ relevance
    return row + mixed - weights


# ---------------------------------------------------------------------------------------------------- helpers
def prompt_inputs(
    model: nn.Module, inputs: dict[str, Any], sequences: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """`(input_ids, attention_mask, other forward inputs)` of the prompt, expanded to the rows of `sequences`, after
    checking that every row of `sequences` starts with its prompt."""
    if not isinstance(inputs, dict) and hasattr(inputs, "keys"):
        inputs = dict(inputs)
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        raise ValueError(
            "The gradient teacher needs the prompt's `input_ids` (to find the image tokens and check `sequences`); "
            "pass the processor's output, not `inputs_embeds`."
        )
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    parameters = inspect.signature(model.forward).parameters
    extra = {
        key: value
        for key, value in inputs.items()
        if key in parameters and key not in _NOT_PROMPT_INPUTS and value is not None
    }
    rows, prompts = sequences.shape[0], input_ids.shape[0]
    if rows != prompts:
        if rows % prompts:
            raise ValueError(
                f"`sequences` has {rows} rows for {prompts} prompts; expected a multiple (num_return_sequences)."
            )
        input_ids, expanded = model._expand_inputs_for_generation(
            expand_size=rows // prompts, input_ids=input_ids, attention_mask=attention_mask, **extra
        )
        attention_mask = expanded.pop("attention_mask")
        extra = expanded
    prompt_length = input_ids.shape[1]
    if sequences.shape[1] <= prompt_length:
        raise ValueError(
            f"`sequences` has {sequences.shape[1]} positions and the prompt {prompt_length}: there is no generated "
            "token to explain. Pass generate()'s output sequences (prompt + new tokens)."
        )
    mismatched = (sequences[:, :prompt_length].to(input_ids.device) != input_ids).any(dim=1).nonzero().flatten()
    if mismatched.numel():
        raise ValueError(
            f"Rows {mismatched.tolist()} of `sequences` do not start with their prompt's `input_ids`. Pass the same "
            "inputs that generate() received and its output sequences, in the same row order."
        )
    return input_ids, attention_mask.to(input_ids.device), extra


def extend_per_token_inputs(
    model: nn.Module, extra: dict[str, Any], prompt_length: int, new_tokens: int
) -> dict[str, Any]:
    """Per-token prompt tensors (``token_type_ids``, ``mm_token_type_ids``, ..., and the adapter's
    `per_token_inputs` such as Mllama's ``cross_attention_mask`` `(batch, prompt_len, ...)`), `(batch, prompt_len)`, extended
    over `new_tokens` generated positions by the model's own generation rule (``_update_model_kwargs_for_generation``,
    one step at a time as `generate()` applies it; PaliGemma, for one, marks generated tokens as its causal suffix).
    """
    adapter = get_adapter(model)
    named = adapter.per_token_inputs
    per_token = {
        key: value
        for key, value in extra.items()
        if (key.endswith("token_type_ids") and isinstance(value, torch.Tensor) and value.shape[-1] == prompt_length)
        or (key in named and isinstance(value, torch.Tensor) and value.dim() > 1 and value.shape[1] == prompt_length)
    }
    marks = {  # the family's own masks of image positions: generated tokens are not images
        key: torch.cat([value, adapter.generated_token_types(key, value, new_tokens)], dim=-1)
        for key, value in extra.items()
        if key in adapter.image_mask_inputs and isinstance(value, torch.Tensor) and value.shape[-1] == prompt_length
    }
    extra = {**extra, **marks}
    if not per_token or new_tokens == 0:
        return extra
    update = getattr(model, "_update_model_kwargs_for_generation", None)
    extended = dict(per_token)
    try:
        for _ in range(new_tokens):
            extended = update(ModelOutput(), extended, is_encoder_decoder=False, num_new_tokens=1)
    except (AttributeError, KeyError, TypeError):  # no (usable) rule: generate()'s generic one
        extended = dict(per_token)
        for key, value in per_token.items():
            if key in named:  # the adapter's per-token inputs: generated tokens repeat the prompt's last row
                last = value[:, -1:]
                extended[key] = torch.cat([value, last.expand(-1, new_tokens, *last.shape[2:])], dim=1)
                continue
            tail = adapter.generated_token_types(key, value, new_tokens)
            extended[key] = torch.cat([value, tail], dim=-1)
    return {**extra, **{key: extended[key] for key in per_token}}


def select_layers(layers: list[int] | None, num_layers: int) -> list[int]:
    """Sorted, de-duplicated, non-negative layer indices (all layers when `layers` is None)."""
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, int):
        layers = [layers]
    chosen = set()
    for layer in layers:
        if not isinstance(layer, int) or not -num_layers <= layer < num_layers:
            raise ValueError(f"Layer {layer!r} does not exist: the language model has {num_layers} layers.")
        chosen.add(layer % num_layers)
    if not chosen:
        raise ValueError("`layers` is empty: name at least one language-model layer (or None for all).")
    return sorted(chosen)


def generation_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as `generate()` gives them: counting only attended tokens (left padding starts at 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def _unwrap(model: nn.Module) -> nn.Module:
    """The base model of a [`FastRMWrapper`]; any other model as it is."""
    from ..wrapper import FastRMWrapper

    return model.model if isinstance(model, FastRMWrapper) else model


def _empty_cache(device: torch.device) -> None:
    """Returns cached blocks of `device`'s allocator (torch.cuda, torch.xpu, torch.mps, ... by device type)."""
    empty_cache = getattr(getattr(torch, device.type, None), "empty_cache", None)
    if device.type != "cpu" and callable(empty_cache):
        empty_cache()
