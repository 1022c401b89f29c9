"""BLIP (``BlipForConditionalGeneration``): its generate() runs the vision tower and hands generation to the text
decoder's generate() with the image states as ``encoder_hidden_states``; FastRM taps the text decoder.

Checked: tokens identical to plain generate() (greedy; beam search 3 returning 2; seeded sampling returning 2), maps equal to the head on ONE
separate forward (the text decoder's last hidden states against the vision tower's states), maps in [0, 1], a reused
logits processor, captioning without a prompt (a one-token prefill) and with one; refusals of unequal vision/text
widths and of images of another size. The gradient teacher (BLIP's inline attention routed through its probes,
`ArchitectureAdapter.inline_attention`) against a naive reference of Chefer et al.'s bi-modal rules on BLIP's own
attention probabilities.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from teacher_reference import OwnAttention
from test_cross_attention import normalised
from transformers import BlipConfig, BlipForConditionalGeneration

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.architectures import get_adapter
from hf_fastrm.methods import get_method
from hf_fastrm.teacher import gradient_relevancy
from hf_fastrm.testing_utils import tiny_head

GREEDY = {"do_sample": False, "max_new_tokens": 4, "min_new_tokens": 4}
BEAMS = {**GREEDY, "num_beams": 3, "num_return_sequences": 2}
PAD, BOS, SEP = 0, 30, 31
SIDE = 4  # 16 px images, 4 px patches: CLS + a 4 x 4 grid


def blip_model(vision_width: int = 32) -> BlipForConditionalGeneration:
    """Tiny BLIP: a 2-layer ViT on 16 px images (patch 4) and a 2-layer BERT-style text decoder of width 32."""
    config = BlipConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=BOS,
            sep_token_id=SEP,
            eos_token_id=SEP,
            pad_token_id=PAD,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=16,
            patch_size=4,
        ),
    )
    torch.manual_seed(0)
    return BlipForConditionalGeneration(config).eval()


@functools.cache
def built(case: str):
    """`(model, inputs, head)`: two images; "caption": no prompt (generate() starts from BOS alone); "prompt": a
    processor-style ``[CLS] a b c [SEP]`` prompt (generate() writes BOS over the first token, drops the last)."""
    model = blip_model()
    generator = torch.Generator().manual_seed(1)
    inputs = {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator)}
    if case == "prompt":
        inputs["input_ids"] = torch.tensor([[101, 5, 6, 7, SEP], [101, 8, 9, 10, SEP]])
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return model, inputs, tiny_head(model)


def reference_maps(model, head, pixel_values, sequences, prompt_length) -> torch.Tensor:
    """`(rows, new_tokens, 1 + SIDE**2)`: the head on ONE separate forward: the text decoder's last hidden states at
    the positions that chose each token, against the vision tower's states (every one an image token)."""
    with torch.no_grad():
        image_states = model.vision_model(pixel_values=pixel_values).last_hidden_state
        text_states = model.text_decoder.bert(
            input_ids=sequences[:, :-1], encoder_hidden_states=image_states, is_decoder=True
        ).last_hidden_state
        return head(text_states[:, prompt_length - 1 :], image_states)


def check(model, head, inputs, out, rows: int) -> None:
    valid = out.token_mask.unsqueeze(-1) & out.image_token_mask.unsqueeze(1)
    assert bool(valid.all()), "every generated token and every image state has a map value"
    assert bool(((out.relevancy >= 0) & (out.relevancy <= 1)).all())
    prompt_length = out.sequences.shape[1] - out.relevancy.shape[1]
    pixel_values = inputs["pixel_values"].repeat_interleave(rows // inputs["pixel_values"].shape[0], dim=0)
    reference = reference_maps(model, head, pixel_values, out.sequences, prompt_length)
    # the same float32 arithmetic in a cached step-by-step decode and one full forward: rounding only
    torch.testing.assert_close(out.relevancy, reference, rtol=1e-4, atol=1e-5)
    for row in range(rows):
        layout = out.image_layouts[row]
        torch.testing.assert_close(layout.image_positions, torch.arange(1 + SIDE * SIDE), rtol=0, atol=0)
        (grid,) = layout.image_grids  # the CLS (position 0) is in no cell
        torch.testing.assert_close(grid, torch.arange(1, 1 + SIDE * SIDE).view(SIDE, SIDE), rtol=0, atol=0)
        assert [tuple(m.shape) for m in out.relevancy_maps(row)] == [(out.relevancy.shape[1], SIDE, SIDE)]


@pytest.mark.parametrize("case", ["caption", "prompt"])
def test_greedy_tokens_identical_and_maps_equal_head_on_separate_forward(case):
    model, inputs, head = built(case)
    with torch.no_grad():
        plain = model.generate(**inputs, **GREEDY)
    before = {name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}
    out = FastRMWrapper(model, head).generate(**inputs, **GREEDY, return_relevancy=True)
    assert {name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks} == before
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    assert out.relevancy.shape == (2, 4, 1 + SIDE * SIDE)
    check(model, head, inputs, out, rows=2)


@pytest.mark.parametrize("case", ["caption", "prompt"])
def test_beam_search_3_returning_2(case):
    """The text decoder's generate() expands the image states with the rows; the maps follow the returned beams."""
    model, inputs, head = built(case)
    with torch.no_grad():
        plain = model.generate(**inputs, **BEAMS)
    out = FastRMWrapper(model, head).generate(**inputs, **BEAMS, return_relevancy=True)
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    check(model, head, inputs, out, rows=4)


def test_sampling_with_2_return_sequences():
    """Seeded sampling, each image twice: the same tokens as plain generate() with the same seed."""
    model, inputs, head = built("caption")
    sampling = {"do_sample": True, "max_new_tokens": 4, "min_new_tokens": 4, "num_return_sequences": 2, "top_k": 0}
    torch.manual_seed(7)
    with torch.no_grad():
        plain = model.generate(**inputs, **sampling)
    torch.manual_seed(7)
    out = FastRMWrapper(model, head).generate(**inputs, **sampling, return_relevancy=True)
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    check(model, head, inputs, out, rows=4)


def test_logits_processor_reused_across_calls():
    """BLIP's generate() hands `logits_processor` on to the text decoder: one processor, two calls (both images,
    then the second alone); each result is its own call's."""
    model, inputs, head = built("caption")
    with FastRMLogitsProcessor(model, head) as fastrm:
        first = model.generate(**inputs, **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True)
        first_maps = fastrm.result_for(first).relevancy
        second = model.generate(
            pixel_values=inputs["pixel_values"][1:], **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True
        )
        second_maps = fastrm.result_for(second).relevancy
        with pytest.raises(ValueError, match="do not come from the last generate"):
            fastrm.result_for(first)
    torch.testing.assert_close(second.sequences, first.sequences[1:], rtol=0, atol=0)
    torch.testing.assert_close(second_maps, first_maps[1:], rtol=1e-4, atol=1e-5)


def test_refuses_unequal_vision_and_text_widths():
    """BLIP-large's shape (vision wider than the text decoder): the head would read keys of the wrong width."""
    model = blip_model(vision_width=24)
    _, inputs, head = built("caption")
    pixel_values = inputs["pixel_values"]
    with pytest.raises(ValueError, match=r"vision width \(24\) differs from its text decoder's \(32\)"):
        FastRMWrapper(model, head).generate(pixel_values=pixel_values, **GREEDY, return_relevancy=True)


def test_refuses_images_of_another_size():
    """24 px images read with `interpolate_pos_encoding=True`: the decoder's states do not say the image's shape, so
    FastRM refuses rather than guess a grid."""
    model, _, head = built("caption")
    pixel_values = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="does not follow images of another size"):
        FastRMWrapper(model, head).generate(
            pixel_values=pixel_values, interpolate_pos_encoding=True, **GREEDY, return_relevancy=True
        )


def naive_blip_relevancy(model, pixel_values, sequences, prompt_length: int, blocks=None) -> torch.Tensor:
    """`(rows, new_tokens, 1 + SIDE**2)` written out plainly (Chefer et al.'s bi-modal rules, as in
    test_cross_attention.py): ONE forward of BLIP over the decoder's prompt and generated tokens with every weight
    requiring grad; each ``BlipTextSelfAttention``'s own probabilities (its inline softmax, untouched) kept with
    `retain_grad`; one backward per token and row; full matrices ``R_tt`` `(n, n)` and ``R_ti`` `(n, image_states)`
    updated block by block in forward order (self-attention ``R_tt += A R_tt``, ``R_ti += A R_ti``; cross-attention
    ``R_ti += Rbar_tt A``). `blocks`: indices of the attention blocks (self, cross, self, cross, ...) in the
    product, all by default."""
    modules = []
    for layer in model.text_decoder.bert.encoder.layer:
        modules += [layer.attention.self, layer.crossattention.self]
    blocks = range(len(modules)) if blocks is None else blocks
    ids = sequences[:, :-1]
    new = sequences.shape[1] - prompt_length
    with OwnAttention(model, modules) as own, torch.enable_grad():
        logits = model(input_ids=ids, pixel_values=pixel_values).logits  # (rows, seq, vocab)
        maps = torch.zeros(ids.shape[0], new, 1 + SIDE * SIDE, dtype=logits.dtype)
        for row in range(ids.shape[0]):
            for step in range(new):
                position = prompt_length - 1 + step
                relevances = own.relevance(logits[row, position, sequences[row, prompt_length + step]], row)
                text = torch.eye(ids.shape[1], dtype=logits.dtype)
                image = torch.zeros(ids.shape[1], 1 + SIDE * SIDE, dtype=logits.dtype)
                for index in blocks:
                    if index % 2:  # cross-attention
                        image = image + normalised(text) @ relevances[index]
                    else:
                        image = image + relevances[index] @ image
                        text = text + relevances[index] @ text
                maps[row, step] = image[position]
    return maps


@pytest.mark.parametrize(("case", "mode"), [("caption", "greedy"), ("prompt", "greedy"), ("prompt", "beams")])
def test_teacher_equals_a_naive_bimodal_reference(case, mode):
    """In float64: the teacher (BLIP's inline attention routed through its probes, the bi-modal rule as vectors) on
    the sequences BLIP's generate() returned (BOS prompt; beam search 3 returning 2) equals full matrices built from
    BLIP's own attention; its hidden states are the decoder's and the vision tower's."""
    model, inputs, _ = built(case)
    model = copy.deepcopy(model).double()
    inputs = {k: v.double() if v.is_floating_point() else v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        sequences = model.generate(
            **{k: v.clone() for k, v in inputs.items()}, **(BEAMS if mode == "beams" else GREEDY)
        )
    output = gradient_relevancy(model, inputs, sequences, return_hidden_states=True)
    result = output.result
    rows = sequences.shape[0]
    prompt_length = sequences.shape[1] - result.relevancy.shape[1]
    assert prompt_length == (1 if case == "caption" else inputs["input_ids"].shape[1] - 1)  # BOS + prompt - [SEP]
    pixel_values = inputs["pixel_values"].repeat_interleave(rows // inputs["pixel_values"].shape[0], dim=0)
    expected = naive_blip_relevancy(model, pixel_values, sequences, prompt_length)
    assert float(expected.abs().max()) > 0, "the reference is all zero: the image does not reach the text"
    assert bool(result.token_mask.all()) and bool(result.image_token_mask.all())
    torch.testing.assert_close(result.relevancy, expected, rtol=1e-9, atol=1e-20)
    with torch.no_grad():
        states = model.vision_model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(output.image_hidden_states, states, rtol=1e-9, atol=1e-12)
    assert [tuple(m.shape) for m in result.relevancy_maps(0)] == [(result.relevancy.shape[1], SIDE, SIDE)]
    assert all("forward" not in vars(module) for module in get_adapter(model).inline_attention(model))


def test_teacher_layers_count_self_and_cross_attention_blocks():
    """``layers=[0, 1]``: the first BERT layer's self-attention and cross-attention blocks only; equal to the naive
    reference over those blocks and unlike the maps over all four."""
    model, inputs, _ = built("prompt")
    model = copy.deepcopy(model).double()
    inputs = {k: v.double() if v.is_floating_point() else v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        sequences = model.generate(**{k: v.clone() for k, v in inputs.items()}, **GREEDY)
    first = gradient_relevancy(model, inputs, sequences, layers=[0, 1])
    every = gradient_relevancy(model, inputs, sequences)
    prompt_length = sequences.shape[1] - first.relevancy.shape[1]
    expected = naive_blip_relevancy(model, inputs["pixel_values"], sequences, prompt_length, blocks=[0, 1])
    torch.testing.assert_close(first.relevancy, expected, rtol=1e-9, atol=1e-20)
    assert first.layers == [0, 1] and every.layers == [0, 1, 2, 3]
    assert not torch.allclose(first.relevancy, every.relevancy, rtol=1e-3, atol=0)


def test_attention_methods_refuse_cross_attention_images():
    """The attention methods read relevance at image positions of the sequence, which BLIP's has none of."""
    model, inputs, _ = built("caption")
    with torch.no_grad():
        sequences = model.generate(**inputs, **GREEDY)
    with pytest.raises(NotImplementedError, match="takes its images through cross-attention"):
        get_method("rollout").attribute(model, dict(inputs), sequences)


def test_fastrm_method_after_generation_equals_the_maps_of_generate():
    """`get_method("fastrm")` on BLIP's returned sequences (forced through BLIP's forward from the prompt its
    generate() handed the decoder) gives the maps generate() returned."""
    model, inputs, head = built("prompt")
    out = FastRMWrapper(model, head).generate(
        **{k: v.clone() for k, v in inputs.items()}, **GREEDY, return_relevancy=True
    )
    after = get_method("fastrm", head=head).attribute(model, dict(inputs), out.sequences)
    torch.testing.assert_close(after.relevancy, out.relevancy, rtol=1e-4, atol=1e-5)


def test_streamer_and_row_wise_stopping_criteria():
    """A streamer and stopping criteria that end the rows at different steps, passed through BLIP's generate() to
    the text decoder's: the same tokens and stream as plain generate(); maps equal the head on a separate forward
    for each row's tokens; the pad filler after a row stopped is marked special."""
    from test_modes import streamed_like_plain

    model, inputs, head = built("caption")
    out = streamed_like_plain(model, head, inputs, 1, do_sample=False, max_new_tokens=4)  # decoder prompt: BOS
    # row b stops after 1 + b tokens; generate() fills row 0's second step with the pad token, marked special
    assert out.sequences[0, 2].item() == PAD and out.special_token_mask.tolist() == [[False, True], [False, False]]
    reference = reference_maps(model, head, inputs["pixel_values"], out.sequences, prompt_length=1)
    mask = out.token_mask & ~out.special_token_mask
    torch.testing.assert_close(out.relevancy[mask], reference[:, : out.relevancy.shape[1]][mask], rtol=1e-4, atol=1e-5)
