"""The naive gradient relevancy (the LVLM-Interpret way), as a reference for the lean teacher and its benchmark.

Deliberately plain and independent of `hf_fastrm.teacher`:

* all weights require grad, and the autograd graph is kept through generation (prefill and every decoding step with a
  KV cache, under ``torch.enable_grad()``);
* the language model's attention is eager (a plain ``softmax(q k^T) v``), its probabilities are taken from the
  attention modules' outputs with ``retain_grad()``;
* one ``backward()`` per generated token and batch row, with ``model.zero_grad()`` in between;
* the full ``(heads, n, n)`` probabilities and gradients of every layer are assembled from the prefill and the step
  rows, and ``R <- R + Abar_l R`` is multiplied out as ``n x n`` matrices, first layer first.

Eager attention here takes the softmax in the model's dtype promoted to float32 (transformers' eager forces float32,
which turns fully masked padding rows into NaN in float64 models); the vision tower keeps its own implementation.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from hf_fastrm.architectures import get_adapter

REFERENCE_ATTENTION = "fastrm_reference_eager"


def _reference_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


AttentionInterface.register(REFERENCE_ATTENTION, _reference_eager_attention)
AttentionMaskInterface.register(REFERENCE_ATTENTION, eager_mask)


def _forward_kwargs(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    skip = {"input_ids", "attention_mask", "position_ids", "past_key_values", "cache", "use_cache", "labels"}
    parameters = inspect.signature(model.forward).parameters
    return {k: v for k, v in inputs.items() if k in parameters and k not in skip and v is not None}


def naive_gradient_relevancy(
    model: nn.Module,
    inputs: dict[str, Any],
    sequences: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    layers: list[int] | None = None,
    target: str = "logit",
) -> dict[str, Any]:
    """Gradient relevancy rows by the naive method.

    Args:
        model: a LLaVA-like model.
        inputs: the processor's tensors (`input_ids`, `attention_mask`, `pixel_values`, ...), one row per sequence.
        sequences (`(batch, prompt + new)`, *optional*): tokens to explain (teacher-forced through the cached steps);
            without it, `max_new_tokens` are generated greedily inside the same graph.
        layers: language-model layers entering the product (all by default).
        target: ``"logit"`` or ``"log_prob"``.

    Returns:
        dict with `sequences`, `rows` `(batch, new, prompt + new - 1)` (row ``p`` of ``R``, zero after ``p``),
        `relevancy` `(batch, new, image_tokens)` (NaN in padding slots) and `image_positions` (per row).
    """
    adapter = get_adapter(model)
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask", torch.ones_like(input_ids))
    batch, prompt_length = input_ids.shape
    new = sequences.shape[1] - prompt_length if sequences is not None else max_new_tokens
    decoder_layers = adapter.decoder_layers(model)
    num_layers = len(decoder_layers)
    selected = sorted({layer % num_layers for layer in layers}) if layers is not None else list(range(num_layers))
    attention_modules = [layer.self_attn for layer in decoder_layers]
    text_config = adapter.language_model(model).config

    recorded: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]  # per layer, per forward call

    def hook_for(layer: int):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            weights = output[1]
            weights.retain_grad()
            recorded[layer].append(weights)

        return hook

    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    saved_configs = [(c, c.__dict__.get("_attn_implementation_internal")) for c in _all_configs(model)]
    handles = [module.register_forward_hook(hook_for(index)) for index, module in enumerate(attention_modules)]
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    try:
        for param in model.parameters():
            param.requires_grad_(True)
        text_config._attn_implementation_internal = REFERENCE_ATTENTION
        extra = _forward_kwargs(model, inputs)
        with torch.enable_grad():
            mask = attention_mask
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            targets, tokens = [], []
            for step in range(new):
                scores = out.logits[:, -1]
                if target == "log_prob":
                    scores = torch.log_softmax(scores, dim=-1)
                token = sequences[:, prompt_length + step] if sequences is not None else scores.argmax(-1)
                targets.append(scores.gather(-1, token[:, None]).squeeze(-1))
                tokens.append(token)
                if step == new - 1:
                    break
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = model(
                    input_ids=token[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{cache_name: cache},
                )
                cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)

            all_attention = [weights for per_layer in recorded for weights in per_layer]
            device = targets[0].device
            dtype = torch.promote_types(targets[0].dtype, torch.float32)
            rows = torch.zeros(batch, new, prompt_length + new - 1, dtype=dtype, device=device)
            for step in range(new):
                size = prompt_length + step  # R is (size x size); the token was chosen at position size - 1
                for row in range(batch):
                    model.zero_grad(set_to_none=True)
                    for weights in all_attention:
                        weights.grad = None
                    targets[step][row].backward(retain_graph=True)
                    product = torch.eye(size, dtype=dtype, device=device)
                    for layer in selected:
                        probs, grads = _full_matrices(recorded[layer], row, prompt_length, step, size, dtype)
                        relevance = (grads * probs).clamp(min=0).mean(dim=0)
                        product = product + relevance @ product
                    rows[row, step, :size] = product[size - 1]
    finally:
        for handle in handles:
            handle.remove()
        for param, flag in saved_flags:
            param.requires_grad_(flag)
            param.grad = None
        for config, value in saved_configs:
            config._attn_implementation_internal = value

    layouts = adapter.image_layout(model.config, input_ids, inputs)
    width = max(layout.num_image_tokens for layout in layouts)
    relevancy = torch.full((batch, new, width), float("nan"), dtype=rows.dtype, device=rows.device)
    for row, layout in enumerate(layouts):
        relevancy[row, :, : layout.num_image_tokens] = rows[row][:, layout.image_positions.to(rows.device)]
    generated = torch.stack(tokens, dim=1)
    return {
        "sequences": torch.cat([input_ids, generated.to(input_ids.device)], dim=1),
        "rows": rows,
        "relevancy": relevancy,
        "image_positions": [layout.image_positions for layout in layouts],
    }


def _full_matrices(
    calls: list[torch.Tensor], row: int, prompt_length: int, step: int, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads, size, size) probabilities and their gradients from the prefill call and the first `step` steps."""
    prefill = calls[0]
    heads = prefill.shape[1]
    probs = torch.zeros(heads, size, size, dtype=dtype, device=prefill.device)
    grads = torch.zeros(heads, size, size, dtype=dtype, device=prefill.device)
    pieces = [(prefill, slice(0, prompt_length))] + [
        (calls[1 + s], slice(prompt_length + s, prompt_length + s + 1)) for s in range(step)
    ]
    for weights, rows in pieces:
        width = weights.shape[-1]
        probs[:, rows, :width] = weights[row].detach().to(dtype)
        if weights.grad is not None:
            grads[:, rows, :width] = weights.grad[row].to(dtype)
    return probs, grads


def _all_configs(model: nn.Module) -> list[PretrainedConfig]:
    found: dict[int, PretrainedConfig] = {}
    pending = [getattr(module, "config", None) for module in model.modules()]
    while pending:
        config = pending.pop()
        if isinstance(config, PretrainedConfig) and id(config) not in found:
            found[id(config)] = config
            pending.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {})
    return list(found.values())


class OwnAttention:
    """Context manager for naive references on models whose attention modules return their own probabilities (their
    forward's second output, `(batch, heads, q_len, k_len)`; GIT, BLIP): inside, every weight requires grad and
    each of `modules` keeps the probabilities of its last call with ``retain_grad``; weights' flags and hooks are
    restored on exit.

    After the forward, [`OwnAttention.relevance`] backpropagates one target and returns every module's
    ``Abar = mean_heads clamp(dy/dA * A, min=0)`` for one batch row.
    """

    def __init__(self, model: nn.Module, modules: list[nn.Module]) -> None:
        self.model = model
        self.modules = modules
        self.weights: dict[int, torch.Tensor] = {}

    def __enter__(self) -> OwnAttention:
        self._flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self._handles = []
        try:
            for param, _ in self._flags:
                param.requires_grad_(True)
            for index, module in enumerate(self.modules):
                self._handles.append(module.register_forward_hook(self._keep(index)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _keep(self, index: int):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            if torch.is_grad_enabled():
                output[1].retain_grad()
            self.weights[index] = output[1]

        return hook

    def __exit__(self, *exc_info: object) -> None:
        for param, flag in self._flags:
            param.requires_grad_(flag)
            param.grad = None
        for handle in self._handles:
            handle.remove()

    def relevance(self, target: torch.Tensor, row: int) -> list[torch.Tensor]:
        """`Abar` of each module (in order) for batch row `row`, from one backward of the scalar `target`:
        `(q_len, k_len)` each, in the probabilities' dtype."""
        self.model.zero_grad(set_to_none=True)
        for value in self.weights.values():
            value.grad = None
        target.backward(retain_graph=True)
        return [
            (self.weights[i].grad * self.weights[i]).clamp(min=0).mean(dim=1)[row].detach()
            for i in range(len(self.modules))
        ]
