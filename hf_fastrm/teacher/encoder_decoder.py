"""Gradient relevancy for encoder-decoder models with the image in the encoder (Florence-2, T5Gemma 2).

Chefer et al. 2021 ("Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers"), rules for an encoder (tokens ``e``) and a decoder (tokens ``d``) that cross-attends to it. For a
generated token chosen at decoder position ``p`` with logit ``y``, every attention map ``A`` (self or cross) gives
``Abar = mean over heads of clamp(dy/dA * A, min=0)`` (the total derivative, through every later layer). Starting
from ``R_ee = I``, ``R_dd = I``, ``R_de = 0``, the layers are applied in the order the model runs them:

* encoder self-attention (Eq. 6): ``R_ee <- R_ee + Abar_ee R_ee``;
* decoder self-attention (Eqs. 6-7): ``R_dd <- R_dd + Abar_dd R_dd`` and ``R_de <- R_de + Abar_dd R_de``;
* decoder cross-attention (Eq. 10): ``R_de <- R_de + Rbar_dd^T Abar_de Rbar_ee``, where ``Rbar = Rhat + I`` and
  ``Rhat`` is ``R - I`` with each row normalised to sum 1 (Eqs. 8-9; a zero row stays zero). Eq. 11 adds
  ``Abar_de R_ed`` to ``R_dd``; the encoder never attends to the decoder, so ``R_ed = 0`` and it adds nothing.

The map of the token is ``R_de[p, image positions]``: the row of the decoder position that chose it, over the
encoder's image tokens. In a causal decoder, the rows of ``Abar_dd`` after ``p`` are zero (``y`` does not depend on
them), so ``Rbar_dd^T``'s row ``p`` holds only the diagonal term: the cross-attention of later layers adds its
relevance at ``p`` itself, and earlier cross-attention reaches ``p`` through ``Abar_dd R_de``.

A decoder whose self- and cross-attention share one softmax (T5Gemma 2's merged attention, keys ``[decoder;
encoder]``) gives one ``Abar`` of shape ``(d, d + e)``: its first ``d`` columns are ``Abar_dd``, the rest
``Abar_de``; both updates use the ``R`` before that layer.

The attention maps come from the gradient teacher's probed attention (`hf_fastrm.teacher.attention`): every encoder
and decoder attention runs eager-equivalent arithmetic whose backward hands out ``Abar`` directly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from ..architectures import get_adapter
from ..architectures.encoder_decoder import EncoderDecoderAdapter
from ..results import assemble_result, eos_token_ids, image_slots, special_token_ids
from .attention import (
    TEACHER_ATTENTION,
    AttentionCapture,
    _additive_mask,
    _get_implementation,
    _set_implementation,
    frozen,
    relevance_dtype,
)
from .gradient import _NOT_PROMPT_INPUTS as DECODER_ONLY_NOT_PROMPT_INPUTS

# What the teacher sets itself in the forced forward (or must not pass): the decoder-only teacher's list (which
# passes `position_ids` and `num_logits_to_keep` on here) and the decoder's inputs.
_NOT_PROMPT_INPUTS = (DECODER_ONLY_NOT_PROMPT_INPUTS - {"position_ids", "num_logits_to_keep"}) | {
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_inputs_embeds",
    "encoder_outputs",
}


class EncoderDecoderCapture(AttentionCapture):
    """Records ``Abar`` of every attention of the encoder and the decoder (keys ``("encoder", i)``, ``("self", i)``,
    ``("cross", i)``) in `probes`, each `(batch, q_len, k_len)` once differentiated.

    Args:
        model (`nn.Module`): the top-level model.
        modules (`dict`): key -> attention module.
    """

    def __init__(self, model: nn.Module, modules: dict[tuple[str, int], nn.Module]) -> None:
        super().__init__(model, model, nn.ModuleList(), [], block_rows=None)
        self.layer_of_module = {id(module): key for key, module in modules.items()}
        self.probed_layers = set(modules)
        configs = {
            id(m.config): m.config
            for m in modules.values()
            if isinstance(getattr(m, "config", None), PretrainedConfig)
        }
        self.attention_configs = list(configs.values())
        missing = [key for key, m in modules.items() if not isinstance(getattr(m, "config", None), PretrainedConfig)]
        if missing:
            raise ValueError(
                f"The attention modules {missing} of {type(model).__name__} hold no transformers config, so their "
                "attention implementation cannot be switched to the teacher's."
            )

    def __enter__(self) -> EncoderDecoderCapture:
        from . import attention

        if attention._ACTIVE_CAPTURE is not None:
            raise RuntimeError("A teacher attention capture is already active; teacher calls cannot be nested.")
        self._saved_implementations = [(c, _get_implementation(c)) for c in attention._configs(self.model)]
        for config in self.attention_configs:
            if not any(c is config for c, _ in self._saved_implementations):
                self._saved_implementations.append((config, _get_implementation(config)))
        attention._ACTIVE_CAPTURE = self
        try:
            for config in self.attention_configs:
                _set_implementation(config, TEACHER_ATTENTION)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def attend(self, layer, module, query, key, value, attention_mask, dropout, scaling, softcap, kwargs):
        """As [`AttentionCapture.attend`]; a T5-style ``position_bias`` (Pix2Struct) is added to the scores as eager
        attention adds it, together with the mask."""
        position_bias = kwargs.pop("position_bias", None)
        if position_bias is not None:
            mask = _additive_mask(module, attention_mask, query, key)
            position_bias = position_bias.to(query.dtype)
            attention_mask = position_bias if mask is None else mask + position_bias
        return super().attend(layer, module, query, key, value, attention_mask, dropout, scaling, softcap, kwargs)


def normalized_residual(relevance: torch.Tensor) -> torch.Tensor:
    """``Rbar = Rhat + I`` of Chefer et al.'s Eqs. 8-9: ``R - I`` with rows normalised to sum 1 (zero rows stay
    zero), plus the identity. `(..., n, n)` -> same shape."""
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    residual = relevance - eye
    total = residual.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0) + eye


def propagate(
    encoder_maps: list[torch.Tensor], decoder_maps: list[tuple[torch.Tensor, torch.Tensor | None]], merged: bool
) -> torch.Tensor:
    """``R_de`` after every layer (the module docstring's rules), `(..., d, e)`.

    Args:
        encoder_maps: per encoder layer, first to last, ``Abar_ee`` `(..., e, e)`.
        decoder_maps: per decoder layer, ``(Abar_dd (..., d, d), Abar_de (..., d, e))``.
        merged (`bool`): the decoder's self- and cross-attention share one softmax (both updates use the ``R``
            before the layer) instead of running one after the other.
    """
    first = encoder_maps[0] if encoder_maps else decoder_maps[0][1]
    lead = first.shape[:-2]
    e = decoder_maps[0][1].shape[-1]
    d = decoder_maps[0][0].shape[-1]
    r_ee = torch.eye(e, dtype=first.dtype, device=first.device).expand(*lead, e, e)
    for a_ee in encoder_maps:
        r_ee = r_ee + a_ee @ r_ee
    rbar_ee = normalized_residual(r_ee)
    r_dd = torch.eye(d, dtype=first.dtype, device=first.device).expand(*lead, d, d)
    r_de = first.new_zeros(*lead, d, e)
    for a_dd, a_de in decoder_maps:
        before = r_dd
        r_dd = r_dd + a_dd @ r_dd
        r_de = r_de + a_dd @ r_de
        if a_de is not None:
            rbar_dd = normalized_residual(before if merged else r_dd)
            r_de = r_de + rbar_dd.transpose(-1, -2) @ a_de @ rbar_ee
    return r_de


def encoder_decoder_relevancy(
    model: nn.Module,
    inputs: dict[str, Any],
    sequences: torch.LongTensor,
    *,
    target: str = "logit",
    return_hidden_states: bool = False,
    token_chunk_size: int | None = None,
    show_progress: bool = False,
    eos_token_id: int | list[int] | None = None,
    special_token_ids_: list[int] | None = None,
) -> Any:
    """The gradient teacher's maps for an encoder-decoder model (see the module docstring for the rules).

    Args:
        model: a model whose adapter is an [`EncoderDecoderAdapter`] (weights unchanged; flags restored on return).
        inputs (`dict`): what the processor gave `generate()` (`input_ids` of the encoder's prompt,
            `attention_mask`, `pixel_values`, ...).
        sequences (`torch.LongTensor` of shape `(rows, decoder_len)`): `generate()`'s sequences (the decoder's start
            token(s), then the new tokens); `rows` is the batch or a multiple of it (``num_return_sequences``).
        target, return_hidden_states, token_chunk_size, show_progress, eos_token_id: as in
            [`gradient_relevancy`]. `special_token_ids_`: its `special_token_ids`.

    Returns:
        [`TeacherOutput`]; `image_hidden_states` are the encoder's last hidden states at the image positions and
        `token_hidden_states` the decoder's at the positions that chose each token.
    """
    from ..methods.base import sequences_of
    from .gradient import TARGETS, TeacherOutput, _chunk_relevance

    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
    adapter = get_adapter(model)
    if not isinstance(adapter, EncoderDecoderAdapter):
        raise ValueError(f"{type(model).__name__} is not an encoder-decoder family of hf_fastrm.")
    if adapter.teacher_refusal:
        raise NotImplementedError(
            f"The gradient teacher does not support {adapter.family} ({adapter.teacher_refusal.removeprefix('no: ')}). "
            "FastRM heads still work."
        )
    sequences = sequences_of(sequences)
    if token_chunk_size is None:
        token_chunk_size = 2 if next(model.parameters()).device.type == "cpu" else 8
    prompt, layouts = _expanded_prompt(model, adapter, inputs, sequences.shape[0])
    decoder_prompt = inputs.get("decoder_input_ids")
    prompt_length = 1 if decoder_prompt is None else int(decoder_prompt.shape[-1])
    if sequences.shape[1] <= prompt_length:
        raise ValueError(
            f"`sequences` has {sequences.shape[1]} positions and the decoder's prompt {prompt_length}: there is no "
            "generated token to explain. Pass generate()'s output sequences."
        )
    device = next(model.parameters()).device
    sequences = sequences.to(device)
    new_tokens = sequences[:, prompt_length:]
    steps = new_tokens.shape[1]
    decoder_ids = sequences[:, :-1]
    modules = adapter.attention_modules(model)
    capture = EncoderDecoderCapture(model, modules)
    recorded: dict[str, torch.Tensor] = {}

    def keep_decoder_states(module: nn.Module, args: tuple, output: Any) -> None:
        recorded["decoder"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = adapter.final_norm(model).register_forward_hook(keep_decoder_states) if return_hidden_states else None
    rows: torch.Tensor | None = None
    try:
        with frozen(model), capture, torch.enable_grad():
            outputs = model(**prompt, decoder_input_ids=decoder_ids, use_cache=False, return_dict=True)
            never_called = sorted(set(modules) - set(capture.called_layers), key=str)
            if never_called:
                raise RuntimeError(
                    f"The attention of {never_called} of {type(model).__name__} did not go through transformers' "
                    "AttentionInterface, so the gradient teacher cannot record it."
                )
            encoder_states = outputs.encoder_last_hidden_state
            logits = outputs.logits[:, prompt_length - 1 :]  # (rows, steps, vocab): positions that chose the tokens
            del outputs
            scores = logits.to(relevance_dtype(logits.dtype))
            if target == "log_prob":
                scores = torch.log_softmax(scores, dim=-1)
            targets = scores.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            del logits, scores
            order = sorted(modules, key=_run_order)
            probes = [capture.probes[key] for key in order]
            batch, e = encoder_states.shape[:2]
            d = decoder_ids.shape[1]
            image_index, image_mask = image_slots(layouts, device)
            rows = torch.zeros(batch, steps, image_index.shape[1], dtype=targets.dtype, device=device)
            merged = not any(kind == "cross" for kind, _ in modules)
            chunk = min(token_chunk_size, steps)
            with tqdm(total=steps, desc="Gradient relevancy", unit="token", disable=not show_progress) as progress:
                for start in range(0, steps, chunk):
                    stop = min(start + chunk, steps)
                    maps = dict(zip(order, _chunk_relevance(targets, probes, start, stop), strict=True))
                    encoder_maps = [maps[key] for key in order if key[0] == "encoder"]
                    decoder_maps = []
                    for kind, index in order:
                        if kind != "self":
                            continue
                        self_map = maps[(kind, index)]
                        if merged:
                            decoder_maps.append((self_map[..., :d], self_map[..., d:]))
                        else:
                            decoder_maps.append((self_map, maps[("cross", index)]))
                    if decoder_maps[0][1].shape[-1] != e:
                        raise RuntimeError(
                            f"The decoder's attention of {type(model).__name__} spans {decoder_maps[0][1].shape[-1]} "
                            f"encoder positions, not the encoder's {e}: its layers are not built as the rules assume."
                        )
                    r_de = propagate(encoder_maps, decoder_maps, merged)  # (tokens, batch, d, e)
                    positions = torch.arange(start, stop, device=device) + prompt_length - 1
                    picked = r_de[torch.arange(stop - start, device=device), :, positions]  # (tokens, batch, e)
                    rows[:, start:stop] = picked.transpose(0, 1).gather(
                        2, image_index.unsqueeze(1).expand(-1, stop - start, -1)
                    )
                    progress.update(stop - start)
    finally:
        if handle is not None:
            handle.remove()
        capture.release()
    result = assemble_result(
        rows,
        image_token_mask=image_mask,
        image_layouts=layouts,
        new_tokens=new_tokens,
        eos_ids=eos_token_ids(model, eos_token_id),
        special_ids=special_token_ids(model, eos_token_id, special_token_ids_),
        method="gradient",
    )
    output = TeacherOutput(result=result, layers=list(range(len(adapter.decoder_layers(model)))), target=target)
    if return_hidden_states:
        from transformers.modeling_outputs import BaseModelOutput

        with torch.no_grad():
            key_states = adapter.image_key_states(
                model, recorded["decoder"], {"encoder_outputs": BaseModelOutput(last_hidden_state=encoder_states)}
            ).detach()
        width = key_states.shape[-1]
        states = key_states.gather(1, image_index.unsqueeze(-1).expand(-1, -1, width))
        output.image_hidden_states = states * image_mask.unsqueeze(-1)
        chosen = torch.arange(steps, device=device) + prompt_length - 1
        output.token_hidden_states = recorded["decoder"][:, chosen]
    return output


def _run_order(key: tuple[str, int]) -> tuple[int, int, int]:
    kind, index = key
    return (0 if kind == "encoder" else 1, index, 1 if kind == "cross" else 0)


def _expanded_prompt(
    model: nn.Module, adapter: EncoderDecoderAdapter, inputs: dict[str, Any], rows: int
) -> tuple[dict[str, Any], list]:
    """The encoder's prompt (forward inputs: ``input_ids`` or ``flattened_patches``, ``attention_mask``, pixel values,
    ...) repeated for each of the `rows` returned sequences (each prompt's rows together, as generate() orders them),
    and the rows' image layouts.

    Pixel values are repeated per image: each layout grid is one image of its row, in prompt order."""
    import inspect

    if not isinstance(inputs, dict) and hasattr(inputs, "keys"):
        inputs = dict(inputs)
    parameters = inspect.signature(model.forward).parameters
    prompt = {
        key: value
        for key, value in inputs.items()
        if key in parameters and key not in _NOT_PROMPT_INPUTS and value is not None
    }
    for key in ("input_ids", "attention_mask"):
        if inputs.get(key) is not None:
            prompt[key] = inputs[key] if inputs[key].ndim > 1 else inputs[key].unsqueeze(0)
    layouts = adapter.encoder_layout(model.config, prompt)
    prompts = len(layouts)
    if rows % prompts:
        raise ValueError(
            f"`sequences` has {rows} rows for {prompts} prompts; expected a multiple (num_return_sequences)."
        )
    repeat = rows // prompts
    if repeat > 1:
        images_per_row = [len(layout.image_grids) for layout in layouts]
        starts = [sum(images_per_row[:row]) for row in range(prompts)]
        image_index = torch.tensor(
            [starts[row] + i for row in range(prompts) for _ in range(repeat) for i in range(images_per_row[row])],
            dtype=torch.long,
        )
        num_images = sum(images_per_row)
        expanded = {}
        for key, value in prompt.items():
            if not isinstance(value, torch.Tensor) or not value.dim():
                expanded[key] = value
            elif key.startswith("pixel_values") and value.shape[0] == num_images:
                expanded[key] = value[image_index.to(value.device)]
            elif value.shape[0] == prompts:
                expanded[key] = value.repeat_interleave(repeat, dim=0)
            else:
                raise ValueError(
                    f"Cannot repeat `{key}` (first dimension {value.shape[0]}) for the {repeat} sequences of each of "
                    f"the {prompts} prompts. Pass one sequence per prompt, or report this model's inputs."
                )
        prompt = expanded
        layouts = [layout for layout in layouts for _ in range(repeat)]
    return prompt, layouts
