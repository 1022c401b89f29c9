"""The cross-attention route (Mllama) beyond the shared suite: the teacher's bi-modal rule against a naive reference,
and refusals of inputs that do not fit.

The shared suite (test_families.py, test_modes.py, test_family_locality.py) runs the Mllama case like every other
family: identical tokens, maps equal to the head on a separate forward's last hidden states against that forward's
cross-attention states, every generation mode, cell locality, the teacher on the same grids.
"""

from __future__ import annotations

import copy

import pytest
import teacher_reference  # registers the plain eager attention it names
import torch
from test_families import BY_NAME, built, generated
from transformers import PretrainedConfig

from hf_fastrm import FastRMWrapper
from hf_fastrm.architectures import get_adapter
from hf_fastrm.methods import get_method
from hf_fastrm.teacher import gradient_relevancy
from hf_fastrm.teacher.gradient import generation_position_ids


def normalised(relevance: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s rules 8 and 9: ``I + rownorm(R - I)`` (rows of ``R - I`` summing to 0 stay the identity's)."""
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype)
    residual = relevance - eye
    sums = residual.sum(dim=-1, keepdim=True)
    return eye + torch.where(sums > 0, residual / sums.where(sums > 0, torch.ones_like(sums)), 0.0)


def naive_bimodal_relevancy(model, inputs: dict, sequences: torch.Tensor, case) -> list[torch.Tensor]:
    """Per row `(new_tokens, image_tokens)`, written out plainly: eager attention of every decoder layer (self and
    cross) kept with `retain_grad`, one backward per token, and the full matrices ``R_tt`` `(n, n)` and ``R_ti``
    `(n, image_states)` updated layer by layer, first layer first: self-attention ``R_tt += A R_tt``, ``R_ti += A
    R_ti``; cross-attention ``R_ti += Rbar_tt A`` (``A`` the head-mean of ``clamp(dy/dA * A, min=0)``)."""
    adapter = get_adapter(model)
    language_model = adapter.language_model(model)
    cross = set(adapter.cross_attention_layers(model))
    layers = adapter.decoder_layers(model)
    modules = [layer.cross_attn if index in cross else layer.self_attn for index, layer in enumerate(layers)]
    prompt_length = inputs["input_ids"].shape[1]
    new = sequences.shape[1] - prompt_length
    ids = sequences[:, : prompt_length + new - 1]
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(ids[:, prompt_length:])], dim=1)
    kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    for key in case.repeat_inputs:  # per-token inputs: generated tokens repeat the prompt's last row
        value = kwargs[key]
        kwargs[key] = torch.cat([value, value[:, -1:].expand(-1, new - 1, *value.shape[2:])], dim=1)
    layouts = adapter.image_layout(model.config, inputs["input_ids"], dict(inputs))

    weights: dict[int, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, i=index: weights.update({i: out[1]}))
        for index, module in enumerate(modules)
    ]
    config: PretrainedConfig = language_model.config
    saved = config.__dict__.get("_attn_implementation_internal")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        config._attn_implementation_internal = teacher_reference.REFERENCE_ATTENTION
        for param, _ in flags:
            param.requires_grad_(True)
        with torch.enable_grad():
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=generation_position_ids(mask),
                use_cache=False,
                **kwargs,
            ).logits
            for value in weights.values():
                value.retain_grad()
            maps = []
            for row, layout in enumerate(layouts):
                rows = []
                for step in range(new):
                    position = prompt_length - 1 + step
                    model.zero_grad()
                    for value in weights.values():
                        value.grad = None
                    logits[row, position, sequences[row, prompt_length + step]].backward(retain_graph=True)
                    text = torch.eye(ids.shape[1], dtype=logits.dtype)
                    image = None
                    for index in range(len(modules)):
                        attention = weights[index]
                        relevance = (attention.grad * attention).clamp(min=0).mean(dim=1)[row]
                        if index in cross:
                            added = normalised(text) @ relevance
                            image = added if image is None else image + added
                        else:
                            image = None if image is None else image + relevance @ image
                            text = text + relevance @ text
                    rows.append(image[position, layout.image_positions])
                maps.append(torch.stack(rows).detach())
    finally:
        config._attn_implementation_internal = saved
        for param, flag in flags:
            param.requires_grad_(flag)
        for handle in handles:
            handle.remove()
    return maps


@pytest.mark.parametrize("name", ["mllama", "idefics"])
def test_teacher_follows_the_bimodal_rule_of_a_naive_reference(name):
    """The teacher's vector form (gradients of probes, rows propagated as vectors, ``Rbar_tt`` from ``R 1``) equals
    full matrices updated layer by layer, in float64 (the maps are ~1e-5 in the tiny random model: float32 rounding
    would be a visible share of them). IDEFICS: two cross-attention blocks, each before a decoder layer."""
    model, inputs, _ = built(name)
    _, out, _, _ = generated(name)
    model = copy.deepcopy(model).double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    result = gradient_relevancy(model, inputs, out.sequences).result
    expected = naive_bimodal_relevancy(model, inputs, out.sequences, BY_NAME[name])
    for row, want in enumerate(expected):
        n = result.image_layouts[row].num_image_tokens
        tokens = result.token_mask[row]
        got = result.relevancy[row, tokens, :n]
        assert float(want[tokens].abs().max()) > 0, "the reference is all zero: the image does not reach the text"
        torch.testing.assert_close(got, want[tokens], rtol=1e-9, atol=1e-15)


def test_refuses_image_tokens_without_their_images():
    """`aspect_ratio_ids` describing fewer images than the prompt's image tokens: a clear error, not a wrong map."""
    model, inputs, _ = built("mllama")
    ratio_ids = inputs["aspect_ratio_ids"].clone()
    ratio_ids[1, 1] = 0
    with pytest.raises(ValueError, match="holds 2 image tokens but its `aspect_ratio_ids` describe 1 images"):
        get_adapter(model).image_layout(model.config, inputs["input_ids"], {**inputs, "aspect_ratio_ids": ratio_ids})


def test_refuses_precomputed_cross_attention_states():
    """Precomputed `cross_attention_states` instead of pixel values: the layout cannot be known; refused before any
    map is computed, naming the missing processor outputs."""
    model, inputs, head = built("mllama")
    with torch.no_grad():
        states = model.model.multi_modal_projector(
            model.model.vision_model(
                inputs["pixel_values"], inputs["aspect_ratio_ids"], inputs["aspect_ratio_mask"]
            ).last_hidden_state
        )
    precomputed = {k: v for k, v in inputs.items() if k != "pixel_values"}
    precomputed["cross_attention_states"] = states.reshape(-1, states.shape[-2], states.shape[-1])
    with pytest.raises(ValueError, match="`pixel_values`"):
        FastRMWrapper(model, head).generate(**precomputed, max_new_tokens=2, return_relevancy=True)


def test_fastrm_method_after_generation_reads_the_cross_attention_states():
    """The 'fastrm' method on one teacher-forced forward gives the maps generate() gave (the same head on the same
    states; another forward's batching, hence the float tolerance)."""
    model, inputs, head = built("mllama")
    _, out, _, _ = generated("mllama")
    result = get_method("fastrm", head=head).attribute(model, dict(inputs), out.sequences)
    torch.testing.assert_close(result.relevancy, out.relevancy, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("method", ["attention", "rollout", "lvlm-interpret"])
def test_sequence_position_methods_refuse_cross_attention(method):
    """Methods that read relevance at image positions of the sequence refuse a family with none, naming the two
    that work."""
    model, inputs, _ = built("mllama")
    _, out, _, _ = generated("mllama")
    with pytest.raises(
        NotImplementedError, match="through cross-attention .* 'fastrm' head or the 'gradient' teacher"
    ):
        get_method(method).attribute(model, dict(inputs), out.sequences)


@pytest.mark.parametrize("mode", ["embedding", "pixel"])
def test_faithfulness_refuses_cross_attention(mode):
    """Removing image tokens from the sequence's embeddings or by patch pixels has no meaning for cross-attention
    states and tiled 6-D pixel values: refused, not computed on the wrong tokens."""
    from hf_fastrm.faithfulness import faithfulness_curves

    model, inputs, _ = built("mllama")
    _, out, _, _ = generated("mllama")
    with pytest.raises(NotImplementedError, match="cross-attention|pixel mode needs"):
        faithfulness_curves(model, dict(inputs), out.sequences, out.relevancy, mode=mode)
