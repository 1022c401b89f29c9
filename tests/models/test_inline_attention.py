"""Families whose attention computes its softmax inline (`ArchitectureAdapter.inline_attention`): GIT.

The teacher and the attention methods swap those modules' forward for one that calls the teacher's (or the
recorder's) attention function while they run. Checked here beyond the shared suite: the teacher equals a naive
reference that reads GIT's own attention probabilities (its inline softmax, untouched) and multiplies the full
matrices out; the attention methods run; the modules' own forward is back afterwards, also when the teacher raises.
"""

from __future__ import annotations

import copy

import pytest
import torch
from teacher_reference import OwnAttention
from test_families import built, generated

from hf_fastrm.architectures import get_adapter
from hf_fastrm.methods import get_method
from hf_fastrm.teacher import gradient_relevancy
from hf_fastrm.teacher.gradient import generation_position_ids


def naive_git_relevancy(model, inputs: dict, sequences: torch.Tensor) -> torch.Tensor:
    """`(rows, new_tokens, prefix + seq)`, row ``p`` of ``R`` for each token, written out plainly: ONE forward of GIT over prompt and generated tokens with
    every weight requiring grad, each ``GitSelfAttention``'s own probabilities `(batch, heads, n, n)` kept with
    `retain_grad`, one backward per token and row, and ``R <- R + Abar_l R`` as full `(n, n)` matrices, first layer
    first (``Abar`` the head-mean of ``clamp(dy/dA * A, min=0)``). The image tokens are the sequence's first positions
    (GIT prepends them): `[..., :prefix]`; the text follows."""
    layers = model.git.encoder.layer
    prompt_length = inputs["input_ids"].shape[1]
    new = sequences.shape[1] - prompt_length
    ids = sequences[:, :-1]
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(ids[:, prompt_length:])], dim=1)
    with OwnAttention(model, [layer.attention.self for layer in layers]) as own, torch.enable_grad():
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=generation_position_ids(mask),  # as generate() gives them: left padding starts at 0
            pixel_values=inputs["pixel_values"],
            use_cache=False,
        ).logits  # (rows, prefix + seq, vocab)
        prefix = logits.shape[1] - ids.shape[1]
        maps = torch.zeros(ids.shape[0], new, logits.shape[1], dtype=logits.dtype)
        for row in range(ids.shape[0]):
            for step in range(new):
                position = prefix + prompt_length - 1 + step
                target = logits[row, position, sequences[row, prompt_length + step]]
                product = torch.eye(logits.shape[1], dtype=logits.dtype)
                for relevance in own.relevance(target, row):
                    product = product + relevance @ product
                maps[row, step] = product[position]
    return maps


def inline_modules(model) -> list[torch.nn.Module]:
    return list(get_adapter(model).inline_attention(model))


@pytest.mark.parametrize("name", ["git", pytest.param("git-video", marks=pytest.mark.slow)])
def test_teacher_equals_a_naive_reference_on_the_models_own_attention(name):
    """In float64: the lean teacher (probes, batched backward, vector products) through the swapped-in attention
    equals full matrices built from GIT's own inline softmax."""
    model, inputs, _ = built(name)
    _, out, _, _ = generated(name)
    model = copy.deepcopy(model).double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    output = gradient_relevancy(model, inputs, out.sequences, return_text_relevancy=True)
    result = output.result
    expected = naive_git_relevancy(model, inputs, out.sequences)
    prefix = expected.shape[-1] - (out.sequences.shape[1] - 1)
    for row, layout in enumerate(result.image_layouts):
        tokens = result.token_mask[row]
        want = expected[row, tokens][:, layout.image_positions]
        assert float(want.abs().max()) > 0, "the reference is all zero: the image does not reach the text"
        torch.testing.assert_close(
            result.relevancy[row, tokens, : layout.num_image_tokens], want, rtol=1e-9, atol=1e-15
        )
    # The text relevancy is over positions of `sequences` (the prefix is no position of it): GIT's text starts at
    # position `prefix` of the decoder's sequence. NaN where not defined (padding, later positions).
    text = output.text_relevancy[..., : out.sequences.shape[1] - 1]
    defined = ~text.isnan()
    assert int(defined.sum()) > 0
    torch.testing.assert_close(text[defined], expected[..., prefix:][defined], rtol=1e-9, atol=1e-15)
    padding = inputs["attention_mask"] == 0
    assert bool(text.isnan()[padding.unsqueeze(1).expand(-1, text.shape[1], -1).nonzero(as_tuple=True)].all())
    assert all("forward" not in vars(module) for module in inline_modules(model))


@pytest.mark.parametrize("method", ["attention", "rollout", "lvlm-interpret"])
def test_attention_methods_record_the_inline_attention(method):
    """The attention-based methods read GIT's layers through the swapped-in forward: finite, non-negative maps with
    the FastRM layouts' shapes, some of them non-zero; the modules' own forward is back afterwards."""
    model, inputs, _ = built("git")
    _, out, _, _ = generated("git")
    result = get_method(method).attribute(model, dict(inputs), out.sequences)
    valid = result.token_mask.unsqueeze(-1) & result.image_token_mask.unsqueeze(1)
    values = result.relevancy[valid]
    assert bool(values.isfinite().all()) and bool((values >= 0).all()) and float(values.sum()) > 0
    assert [lay.num_image_tokens for lay in result.image_layouts] == [
        lay.num_image_tokens for lay in out.image_layouts
    ]
    assert all("forward" not in vars(module) for module in inline_modules(model))


def test_own_forward_restored_when_the_teacher_raises(monkeypatch):
    """An error inside the teacher's forward leaves every GitSelfAttention with its own forward (and generation
    still gives the same tokens)."""
    import hf_fastrm.teacher.attention as attention

    model, inputs, _ = built("git")
    _, out, _, _ = generated("git")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(attention.AttentionCapture, "attend", broken)
    with pytest.raises(RuntimeError, match="boom"):
        gradient_relevancy(model, dict(inputs), out.sequences)
    assert all("forward" not in vars(module) for module in inline_modules(model))
    generation = {k: v for k, v in inputs.items()}
    again = model.generate(
        **generation, do_sample=False, max_new_tokens=out.sequences.shape[1] - inputs["input_ids"].shape[1]
    )
    torch.testing.assert_close(again[:, : out.sequences.shape[1]], out.sequences, rtol=0, atol=0)
