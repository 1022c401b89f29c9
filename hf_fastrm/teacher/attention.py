"""Recording the language model's attention for the teacher, through transformers' `AttentionInterface`.

The teacher needs, for every language-model layer ``l`` and every generated token, the head-mean of
``clamp(dy/dA_l * A_l, min=0)`` where ``A_l`` is the layer's attention probabilities and ``dy/dA_l`` the *total*
derivative of the token's logit (through every later layer). Instead of keeping ``A_l`` for an autograd query (one
``(heads, n, n)`` gradient per layer per token), the language model's layers run an attention whose backward computes
that quantity itself and hands it out as the gradient of a small zero "probe" input of shape ``(batch, n, n)``:

* ``A_l`` stays inside the autograd graph (nothing is detached), so the gradients that reach earlier layers include
  every path through later layers' attention, exactly as the naive form computes them;
* the forward keeps only ``q``, ``k``, ``v`` and the mask; the probabilities are recomputed in the backward (cheap
  next to the projections), which saves one ``(heads, n, n)`` tensor per layer;
* the arithmetic is that of transformers' eager attention (scores in the model dtype, softmax in float32, cast back;
  float64 models stay in float64), so the maps match an eager-attention reference;
* everything in the backward is ordinary tensor code, so ``torch.autograd.grad(..., is_grads_batched=True)`` runs it
  for several tokens at once.

The function is registered as ``"fastrm_teacher"`` and set only on the language model's config (the vision tower keeps
its own implementation); calls from any module that is not one of the language model's attention layers go to sdpa.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection, Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..architectures.base import InlineAttentionForward

TEACHER_ATTENTION = "fastrm_teacher"
"""Name under which the teacher's attention (and its mask, eager-style) is registered in transformers."""

_ACTIVE_CAPTURE: AttentionCapture | None = None


def relevance_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the maps and of ``dy/dA * A``: float32, or float64 for float64 models."""
    return torch.promote_types(dtype, torch.float32)


class _ProbedAttention(torch.autograd.Function):
    """``softmax(q k^T * scaling [+ softcap] + mask) v`` whose backward also returns, as the gradient of `probe`,
    ``mean over heads of clamp(dL/dA * A, min=0)`` of shape `(batch, q_len, k_len)`.

    Shapes: query `(batch, heads, q_len, head_dim)`, key `(batch, kv_heads, k_len, head_dim)`, value `(batch,
    kv_heads, k_len, v_dim)` (MLA's value heads may be narrower than its query/key heads), output `(batch, heads,
    q_len, v_dim)`, mask
    broadcastable to `(batch, 1, q_len, k_len)` (additive), sinks `(heads,)` or None. Grouped-query attention is
    computed without repeating keys: the query heads sharing a key head are stacked along the query axis, `(batch,
    kv_heads, groups * q_len, head_dim)`, so every product is a plain batched matrix product.

    Attention sinks (gpt-oss, HY-V4: one learned logit per head, a softmax column dropped afterwards) only change the
    probabilities (rows sum to less than one); the softmax backward ``A * (g - sum(g * A))`` keeps its form, the sink
    column's gradient being zero. No gradient flows to the sinks (the teacher freezes the model).
    """

    @staticmethod
    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        probe: torch.Tensor | None,
        scaling: float,
        softcap: float | None,
        blocks: list[int] | None = None,
        sinks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probs, _ = _probabilities(query, key, mask, scaling, softcap, sinks)
        return (probs @ value).view(*query.shape[:-1], value.shape[-1])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        query, key, value, mask, _probe, scaling, softcap, *rest = inputs
        blocks = rest[0] if rest else None
        sinks = rest[1] if len(rest) > 1 else None
        ctx.save_for_backward(query, key, value, mask, sinks)
        ctx.scaling = scaling
        ctx.softcap = softcap
        ctx.blocks = list(blocks) if blocks is not None else [0, query.shape[2], 0, key.shape[2]]

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        query, key, value, mask, sinks = ctx.saved_tensors
        need_query, need_key, need_value, _, need_probe = ctx.needs_input_grad[:5]
        needs = (need_query, need_key, need_value, need_probe)
        grads = _backward_op(grad_output, query, key, value, mask, ctx.scaling, ctx.softcap, *needs, ctx.blocks, sinks)
        grad_query, grad_key, grad_value, grad_probe = (
            g if need else None for g, need in zip(grads, needs, strict=True)
        )
        return grad_query, grad_key, grad_value, None, grad_probe, None, None, None, None


def attention_backward(
    grad_output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    needs: tuple[bool, bool, bool, bool],
    blocks: list[int] | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """The backward of [`_ProbedAttention`] for several gradients at once (one per token), explicitly batched.

    Args:
        grad_output (`torch.Tensor` of shape `(tokens, batch, heads, q_len, v_dim)`): gradients of the output.
        query, key, value, mask, scaling, softcap, sinks: as saved by the forward (no token dimension).
        needs: which of (query, key, value, probe) gradients to compute.
        blocks (`list[int]`, *optional*): query-row blocks as flat groups of four ``[row_start, row_stop, key_start,
            key_stop, ...]`` (see [`row_blocks`]): each block of rows is computed against the keys it can see only
            (half of the ``(q, k)`` work of a causal mask is skipped); one block over everything when None.

    Returns:
        `(grad_query, grad_key, grad_value, grad_probe)`, each with a leading `tokens` dimension (an empty tensor
        where not needed); grad_probe is ``mean_heads clamp(dL/dA * A, min=0)``, `(tokens, batch, q_len, k_len)`.

    The tokens are folded into the rows of each product (``(batch, kv_heads, tokens * groups * rows, ...)``) or
    kept as a batch dimension of the large `(q, k)` operand, so the `(q, k)` probabilities, shared by all tokens,
    are never copied per token.
    """
    tokens = grad_output.shape[0]
    batch, _, q_len, _ = query.shape
    k_len = key.shape[2]
    if blocks is None or tuple(blocks) == (0, q_len, 0, k_len):
        return _block_backward(grad_output, query, key, value, mask, scaling, softcap, needs, sinks)
    need_query, need_key, need_value, need_probe = needs
    accumulate = relevance_dtype(query.dtype)  # key/value gradients are sums over blocks: kept in float32
    grad_query = query.new_empty(tokens, *query.shape) if need_query else query.new_empty(0)  # every row written
    grad_key = key.new_zeros(tokens, *key.shape, dtype=accumulate) if need_key else key.new_empty(0)
    grad_value = value.new_zeros(tokens, *value.shape, dtype=accumulate) if need_value else value.new_empty(0)
    grad_probe = (
        query.new_zeros(tokens, batch, q_len, k_len, dtype=relevance_dtype(query.dtype))
        if need_probe
        else query.new_empty(0)
    )
    for index in range(0, len(blocks), 4):
        rows, keys = slice(blocks[index], blocks[index + 1]), slice(blocks[index + 2], blocks[index + 3])
        block_mask = None if mask is None else mask[..., rows, keys]
        grads = _block_backward(
            grad_output[..., rows, :],
            query[..., rows, :],
            key[..., keys, :],
            value[..., keys, :],
            block_mask,
            scaling,
            softcap,
            needs,
            sinks,
        )
        if need_query:
            grad_query[..., rows, :] = grads[0]
        if need_key:
            grad_key[..., keys, :] += grads[1]
        if need_value:
            grad_value[..., keys, :] += grads[2]
        if need_probe:
            grad_probe[..., rows, keys] = grads[3]
    if need_key:
        grad_key = grad_key.to(key.dtype)
    if need_value:
        grad_value = grad_value.to(value.dtype)
    return grad_query, grad_key, grad_value, grad_probe


def _block_backward(
    grad_output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    needs: tuple[bool, bool, bool, bool],
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """[`attention_backward`] for one block of query rows against one range of keys (shapes as there, with
    `q_len` the block's rows and `k_len` its keys); exact when every key outside the range is masked for these rows
    (a sink is per row, so it stays exact with sinks too).
    """
    need_query, need_key, need_value, need_probe = needs
    tokens = grad_output.shape[0]
    batch, heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    rows = heads // kv_heads * q_len
    # Recomputed rather than saved: one (q, k) tensor per layer less in memory, once per chunk of tokens.
    probs, (probs_full, capped) = _probabilities(query, key, mask, scaling, softcap, sinks)
    # (tokens, batch, heads, q, d) -> (batch, kv_heads, tokens * groups * q, d)
    v_dim = value.shape[-1]
    grad_out = grad_output.reshape(tokens, batch, kv_heads, rows, v_dim).permute(1, 2, 0, 3, 4)
    grad_rows = grad_out.reshape(batch, kv_heads, tokens * rows, v_dim)
    grad_probs = grad_rows @ value.transpose(-1, -2)  # dL/dA: (batch, kv_heads, tokens * groups * q, k)
    # dL/dA * A, in float32 (float64 for float64 models) as eager attention's softmax backward computes it.
    weighted = grad_probs.view(batch, kv_heads, tokens, rows, k_len) * probs_full.unsqueeze(2)
    del grad_probs
    # Distinct empty placeholders: a custom op may not return one tensor twice.
    grad_query, grad_key, grad_value, grad_probe = (query.new_empty(0) for _ in range(4))
    if need_probe:
        heads_view = weighted.clamp(min=0).view(batch, kv_heads, tokens, heads // kv_heads, q_len, k_len)
        grad_probe = heads_view.sum(dim=(1, 3)).div_(heads).transpose(0, 1)
        del heads_view
    if need_value:
        # (batch, kv_heads, k, q) @ (batch, kv_heads, q, tokens * d): tokens folded into the columns.
        columns = grad_out.permute(0, 1, 3, 2, 4).reshape(batch, kv_heads, rows, tokens * v_dim)
        grad_value = (probs.transpose(-1, -2) @ columns).view(batch, kv_heads, k_len, tokens, v_dim)
        grad_value = grad_value.permute(3, 0, 1, 2, 4)
    if need_query or need_key:
        # Softmax backward, in place: A * (g - sum(g * A)) = weighted - A * sum(weighted).
        grad_scores = weighted.addcmul_(probs_full.unsqueeze(2), weighted.sum(dim=-1, keepdim=True), value=-1)
        if softcap is not None:
            grad_scores = grad_scores.mul_(1.0 - capped.unsqueeze(2).pow(2))
        grad_scores = grad_scores.to(query.dtype)  # (batch, kv_heads, tokens, groups * q, k)
        del weighted
        if need_query:
            grad_query = grad_scores.view(batch, kv_heads, tokens * rows, k_len) @ key
            grad_query = grad_query.view(batch, kv_heads, tokens, rows, head_dim).permute(2, 0, 1, 3, 4)
            grad_query = grad_query.reshape(tokens, batch, heads, q_len, head_dim).mul_(scaling)
        if need_key:
            grouped_query = query.reshape(batch, kv_heads, 1, rows, head_dim)
            grad_key = (grad_scores.transpose(-1, -2) @ grouped_query).permute(2, 0, 1, 3, 4).mul_(scaling)
    return grad_query, grad_key, grad_value, grad_probe


def row_blocks(mask: torch.Tensor | None, q_len: int, k_len: int, block_rows: int) -> list[int]:
    """Query-row blocks of `block_rows` rows and the keys each block can see, as flat ``[row_start, row_stop,
    key_start, key_stop, ...]`` for [`attention_backward`].

    A key is outside a block's range only if the additive `mask` (`(batch or 1, 1, q_len, k_len)`) blocks it
    (``finfo.min`` or ``-inf``) for every row of the block in every batch row, so its probability is exactly zero there;
    a block holding a row that sees no key at all (a padding row, whose softmax is uniform over every key) keeps all
    keys. Without a mask (or with blocks as tall as the query) the answer is one block over everything.
    """
    if mask is None or block_rows >= q_len:
        return [0, q_len, 0, k_len]
    per_row = (mask[..., :k_len] > torch.finfo(mask.dtype).min).any(dim=1)  # (batch, q_len, k_len)
    empty = ~per_row.any(dim=-1).all(dim=0)  # (q_len,): a row that sees no key in some batch row
    allowed = per_row.any(dim=0)  # (q_len, k_len)
    columns = torch.arange(k_len, device=allowed.device)
    first = torch.where(allowed, columns, k_len).amin(dim=-1)
    last = torch.where(allowed, columns, -1).amax(dim=-1)
    spans = torch.stack([first, last + 1, empty.long()], dim=-1).tolist()  # one transfer
    blocks = []
    for start in range(0, q_len, block_rows):
        stop = min(start + block_rows, q_len)
        span = spans[start:stop]
        if any(row[2] for row in span):
            key_start, key_stop = 0, k_len
        else:
            key_start, key_stop = min(row[0] for row in span), max(row[1] for row in span)
        blocks.extend([start, stop, key_start, key_stop])
    return blocks


def _backward_plain(
    grad_output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    need_query: bool,
    need_key: bool,
    need_value: bool,
    need_probe: bool,
    blocks: list[int],
    sinks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    needs = (need_query, need_key, need_value, need_probe)
    grads = attention_backward(
        grad_output.unsqueeze(0), query, key, value, mask, scaling, softcap, needs, blocks, sinks
    )
    return tuple(g[0].contiguous() if need else g for g, need in zip(grads, needs, strict=True))


def _backward_batched(info, in_dims, grad_output, query, key, value, mask, scaling, softcap, *needs_and_blocks):
    # Under torch.func.vmap (several tokens' gradients at once), only grad_output carries the tokens dimension.
    if any(dim is not None for dim in (*in_dims[1:5], in_dims[-1])):
        raise NotImplementedError("The teacher's attention backward batches over output gradients only.")
    *needs, blocks, sinks = needs_and_blocks
    grad_output = grad_output.movedim(in_dims[0], 0)
    grads = attention_backward(grad_output, query, key, value, mask, scaling, softcap, tuple(needs), blocks, sinks)
    return tuple(g.contiguous() if need else g for g, need in zip(grads, needs, strict=True)), tuple(
        0 if need else None for need in needs
    )


try:
    _backward_op = torch.library.custom_op("hf_fastrm::teacher_attention_backward", mutates_args=())(_backward_plain)
    _backward_op.register_vmap(_backward_batched)
except (AttributeError, RuntimeError, TypeError, ValueError):  # torch without custom ops / vmap rules
    _backward_op = _backward_plain


def _probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
    """Attention probabilities as eager attention computes them: `(batch, kv_heads, groups * q_len, k_len)`; with
    `sinks` (`(heads,)` logits), each head's sink is one more softmax column, dropped after the softmax.

    Returns the probabilities in the query's dtype, and (the same in float32, or float64 for float64 models, and the
    tanh of the capped scores or None). Eager attention takes the softmax in float32 even for float64 models, where
    fully masked (padding) rows then turn into NaN; here a float64 model stays in float64.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    scores = (query.reshape(batch, kv_heads, -1, head_dim) @ key.transpose(-1, -2)) * scaling
    capped = None
    if softcap is not None:
        capped = torch.tanh(scores / softcap)
        scores = capped * softcap
    if mask is not None:
        grouped = scores.view(batch, kv_heads, heads // kv_heads, q_len, k_len) + mask.unsqueeze(2)
        scores = grouped.view(batch, kv_heads, -1, k_len)
    if sinks is not None:  # head h = kv_head * groups + group; rows ordered (group, query)
        column = sinks.to(scores.dtype).view(1, kv_heads, heads // kv_heads, 1, 1)
        column = column.expand(batch, kv_heads, heads // kv_heads, q_len, 1).reshape(batch, kv_heads, -1, 1)
        probs_full = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1, dtype=relevance_dtype(query.dtype))
        probs_full = probs_full[..., :k_len]
        return probs_full.to(query.dtype), (probs_full, capped)
    probs_full = torch.softmax(scores, dim=-1, dtype=relevance_dtype(query.dtype))
    return probs_full.to(query.dtype), (probs_full, capped)


def _additive_mask(
    module: nn.Module, attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor | None:
    """The mask as eager attention adds it: `(batch or 1, 1, q_len, k_len)` in the query's dtype, or None."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        if not getattr(module, "is_causal", True) or q_len == 1:
            return None
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        attention_mask = allowed[None, None]
    attention_mask = attention_mask[..., :k_len]
    if attention_mask.dtype == torch.bool:
        allowed = torch.zeros((), dtype=query.dtype, device=query.device)
        blocked = torch.full((), torch.finfo(query.dtype).min, dtype=query.dtype, device=query.device)
        return torch.where(attention_mask, allowed, blocked)
    return attention_mask.to(query.dtype)


def sdpa_fallback(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    softcap: float | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, Any]:
    """transformers' sdpa attention, for the calls a registered attention function does not handle itself (the
    vision tower, layers not recorded)."""
    if softcap is not None:
        kwargs["softcap"] = softcap
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def refuse_attention_sinks(module: nn.Module, kwargs: dict[str, Any], unmodelled_by: str) -> None:
    """Refuses an attention call with sinks (``s_aux`` or ``sinks`` in `kwargs`), which `unmodelled_by` does not
    model, naming the module."""
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise NotImplementedError(f"{type(module).__name__} uses attention sinks, which {unmodelled_by}.")


def teacher_attention_forward(
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
    """The attention function registered as ``"fastrm_teacher"`` (the `AttentionInterface` signature).

    Inside an [`AttentionCapture`] and for one of its language-model layers, eager-equivalent attention with a probe;
    otherwise transformers' sdpa attention.

    Returns:
        `(attn_output, None)`, attn_output of shape `(batch, q_len, heads, v_dim)`.
    """
    capture = _ACTIVE_CAPTURE
    layer = capture.layer_of_module.get(id(module)) if capture is not None else None
    if layer is None:
        return sdpa_fallback(module, query, key, value, attention_mask, dropout, scaling, softcap, kwargs)
    return capture.attend(layer, module, query, key, value, attention_mask, dropout, scaling, softcap, kwargs)


AttentionInterface.register(TEACHER_ATTENTION, teacher_attention_forward)
AttentionMaskInterface.register(TEACHER_ATTENTION, eager_mask)


def attention_modules(layers: nn.ModuleList, preferred: Collection[nn.Module] = ()) -> list[nn.Module]:
    """The self-attention module of each decoder layer: the one of `preferred` (the adapter's
    [`~ArchitectureAdapter.inline_attention`] modules) the layer holds, else ``layer.self_attn``, else its first
    ``*Attention`` child."""
    preferred_ids = {id(module) for module in preferred}
    modules = []
    for index, layer in enumerate(layers):
        found = next((module for module in layer.modules() if id(module) in preferred_ids), None)
        if found is None:
            found = getattr(layer, "self_attn", None)
        if found is None:
            found = next((m for m in layer.modules() if type(m).__name__.endswith("Attention")), None)
        if found is None:
            raise ValueError(
                f"Decoder layer {index} ({type(layer).__name__}) has no self-attention module (`self_attn`), so the "
                "teacher cannot record its attention."
            )
        modules.append(found)
    return modules


@contextlib.contextmanager
def inline_attention_routed(
    routes: dict[nn.Module, InlineAttentionForward], attention_function: Callable[..., Any]
) -> Iterator[None]:
    """Inside, each module of `routes` (an adapter's [`~ArchitectureAdapter.inline_attention`]) computes its attention
    through `attention_function` (its replacement forward, set as an instance attribute); its own forward is back on
    exit, also on error."""
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for module, replacement in routes.items():
            patched.append((module, module.__dict__.get("forward")))
            module.forward = functools.partial(replacement, module, attention_function)
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """Every config object of `model`: its own, its sub-configs (at any depth), and those of its sub-models."""
    found: dict[int, PretrainedConfig] = {}
    pending = [getattr(module, "config", None) for module in model.modules()]
    while pending:
        config = pending.pop()
        if not isinstance(config, PretrainedConfig) or id(config) in found:
            continue
        found[id(config)] = config
        pending.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {})
    return list(found.values())


def _get_implementation(config: PretrainedConfig) -> Any:
    return config.__dict__.get("_attn_implementation_internal", getattr(config, "_attn_implementation", None))


def _set_implementation(config: PretrainedConfig, value: Any) -> None:
    # The internal attribute: the public setter would also rewrite the config's sub-configs.
    config._attn_implementation_internal = value


class AttentionCapture:
    """Context manager: the language model's layers run the teacher's attention; everything is restored on exit.

    Args:
        model (`nn.Module`): the top-level vision-language model.
        language_model (`nn.Module`): its text decoder (its config selects the attention implementation).
        layers (`nn.ModuleList`): the text decoder's layers, first to last.
        probed_layers (`list[int]`): indices of the layers whose relevance is recorded (others run the same attention
            without a probe, so gradients still flow through them exactly).
        block_rows (`int`, *optional*): query rows per block of the attention's backward (see [`row_blocks`]); one
            block over all rows when None.
        cross_layers (`set[int]`, *optional*): layers whose attention is cross-attention to image states (their
            probe is `(batch, seq, image_states)`; without a mask every state is visible, never a causal mask).
        inline (`dict`, *optional*): the adapter's [`~ArchitectureAdapter.inline_attention`] routes: attention modules
            that compute their softmax inline run through the teacher's attention inside the context.

    After a forward pass inside the context, `probes` maps each probed layer to its probe, shape
    `(batch, seq, seq)`; the gradient of a target with respect to a probe is that layer's
    ``mean_heads clamp(dy/dA * A, min=0)``. `called_layers` lists the layers whose attention went through here.
    """

    def __init__(
        self,
        model: nn.Module,
        language_model: nn.Module,
        layers: nn.ModuleList,
        probed_layers: list[int],
        block_rows: int | None = None,
        cross_layers: set[int] | None = None,
        inline: dict[nn.Module, InlineAttentionForward] | None = None,
    ) -> None:
        self.model = model
        self.cross_layers = set(cross_layers or ())
        self.language_model = language_model
        self.num_layers = len(layers)
        self.inline = dict(inline or {})
        modules = attention_modules(layers, preferred=self.inline)
        self.layer_of_module = {id(module): index for index, module in enumerate(modules)}
        self._routed: contextlib.ExitStack | None = None
        self.probed_layers = set(probed_layers)
        self.probes: dict[int, torch.Tensor] = {}
        self.called_layers: list[int] = []
        self.block_rows = block_rows
        self._blocks: tuple[tuple[Any, int, int], list[int]] | None = None  # ((mask, q_len, k_len), blocks)
        self._saved_implementations: list[tuple[PretrainedConfig, Any]] = []

    def __enter__(self) -> AttentionCapture:
        global _ACTIVE_CAPTURE
        if _ACTIVE_CAPTURE is not None:
            raise RuntimeError("A teacher attention capture is already active; teacher calls cannot be nested.")
        config = getattr(self.language_model, "config", None)
        if not isinstance(config, PretrainedConfig):
            raise ValueError(
                f"{type(self.language_model).__name__} has no transformers config, so its attention implementation "
                "cannot be switched to the teacher's."
            )
        self._saved_implementations = [(c, _get_implementation(c)) for c in _configs(self.model)]
        if not any(c is config for c, _ in self._saved_implementations):
            self._saved_implementations.append((config, _get_implementation(config)))
        _ACTIVE_CAPTURE = self
        try:
            _set_implementation(config, TEACHER_ATTENTION)
            self._routed = contextlib.ExitStack()
            self._routed.enter_context(inline_attention_routed(self.inline, teacher_attention_forward))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _ACTIVE_CAPTURE
        if self._routed is not None:
            self._routed.close()
            self._routed = None
        for config, value in self._saved_implementations:
            _set_implementation(config, value)
        self._saved_implementations = []
        if _ACTIVE_CAPTURE is self:
            _ACTIVE_CAPTURE = None

    def release(self) -> None:
        """Drops the probes (and with them the last references to the graph kept for the teacher)."""
        self.probes = {}
        self._blocks = None

    def blocks_for(self, source: Any, mask: torch.Tensor | None, q_len: int, k_len: int) -> list[int]:
        """[`row_blocks`] of `mask`, computed once for all layers given the same attention mask `source`."""
        if self.block_rows is None:
            return [0, q_len, 0, k_len]
        if source is None:  # a mask built here (causal or none): nothing to share it with
            return row_blocks(mask, q_len, k_len, self.block_rows)
        cache_key = (source, q_len, k_len)
        cached = self._blocks
        if cached is None or cached[0][0] is not source or cached[0][1:] != cache_key[1:]:
            cached = self._blocks = (cache_key, row_blocks(mask, q_len, k_len, self.block_rows))
        return cached[1]

    def attend(
        self,
        layer: int,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
        scaling: float | None,
        softcap: float | None,
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, None]:
        sinks = kwargs.get("s_aux") if kwargs.get("s_aux") is not None else kwargs.get("sinks")
        if sinks is not None and sinks.numel() != query.shape[1]:
            raise NotImplementedError(
                f"{type(module).__name__} has {sinks.numel()} attention sinks for {query.shape[1]} query heads; the "
                "gradient teacher models one sink logit per head."
            )
        if dropout:
            raise ValueError("Attention dropout is active: put the model in eval mode (model.eval()) for the teacher.")
        if query.shape[1] % key.shape[1]:
            raise ValueError(f"{query.shape[1]} query heads cannot share {key.shape[1]} key/value heads evenly.")
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        if layer in self.cross_layers and attention_mask is None:
            mask = None  # every image state is visible (no causal mask across modalities)
        else:
            mask = _additive_mask(module, attention_mask, query, key)
        probe = None
        if layer in self.probed_layers:
            batch, q_len, k_len = query.shape[0], query.shape[-2], key.shape[-2]
            probe = torch.zeros(
                batch, q_len, k_len, dtype=relevance_dtype(query.dtype), device=query.device, requires_grad=True
            )
            self.probes[layer] = probe
        self.called_layers.append(layer)
        blocks = self.blocks_for(attention_mask, mask, query.shape[-2], key.shape[-2])
        if sinks is not None:
            sinks = sinks.detach().reshape(-1)
        output = _ProbedAttention.apply(query, key, value, mask, probe, float(scaling), softcap, blocks, sinks)
        return output.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad and the model is in eval mode inside; both restored on exit, also on error."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    training = [(module, module.training) for module in model.modules()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        model.eval()
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in training:
            module.training = mode
