"""The gradient teacher: lean equals the naive reference in float64, options, labels, the wrapper, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from teacher_reference import naive_gradient_relevancy

from hf_fastrm import FastRMWrapper, get_adapter
from hf_fastrm.teacher import attention as teacher_attention
from hf_fastrm.teacher import gradient_relevancy, gradient_relevancy_for_outputs, relevancy_labels
from hf_fastrm.testing_utils import TINY_EOS_TOKEN_ID, TINY_PAD_TOKEN_ID, tiny_llava, tiny_llava_inputs

NEW_TOKENS = 4


def attention_settings(model) -> list:
    return [(id(c), c.__dict__.get("_attn_implementation_internal")) for c in teacher_attention._configs(model)]


def assert_maps_equal(lean: torch.Tensor, naive: torch.Tensor) -> None:
    """Same NaN pattern, equal to 1e-6 absolute and far below the maps' own scale."""
    assert lean.shape == naive.shape
    assert torch.equal(torch.isnan(lean), torch.isnan(naive))
    scale = naive.nan_to_num().abs().max()
    assert scale > 1e-4, "maps too flat to compare meaningfully"
    difference = (lean - naive).nan_to_num().abs().max()
    assert difference <= 1e-6
    assert difference <= 1e-9 * scale


def naive_masked(naive: dict, token_mask: torch.Tensor) -> torch.Tensor:
    return naive["relevancy"].masked_fill(~token_mask.unsqueeze(-1), math.nan)


@pytest.fixture(scope="module")
def model():
    return tiny_llava(seed=1, dtype=torch.float64)


def generate(model, inputs, **kwargs):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, **kwargs}
    return model.generate(**inputs, **kwargs)


# ---------------------------------------------------------------------------------------------- lean == naive
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lean_equals_naive_on_several_prompts(model, seed):
    inputs = tiny_llava_inputs(model, seed=seed, text_lengths=[4 + 3 * seed])
    sequences = generate(model, inputs, do_sample=True, top_k=0, min_new_tokens=NEW_TOKENS)
    lean = gradient_relevancy(model, inputs, sequences, token_chunk_size=3)
    naive = naive_gradient_relevancy(model, inputs, sequences)
    assert lean.result.method == "gradient"
    assert lean.relevancy.shape == (1, NEW_TOKENS, 16)
    assert_maps_equal(lean.relevancy, naive_masked(naive, lean.result.token_mask))


@pytest.mark.parametrize("target", ["logit", "log_prob"])
@pytest.mark.parametrize("block_rows", [0, 5])
def test_lean_equals_naive_on_a_left_padded_batch(model, target, block_rows):
    inputs = tiny_llava_inputs(model, batch_size=3, text_lengths=[3, 8, 5], seed=3)
    sequences = generate(model, inputs, min_new_tokens=NEW_TOKENS)
    lean = gradient_relevancy(
        model, inputs, sequences, target=target, return_text_relevancy=True, attention_block_rows=block_rows
    )
    naive = naive_gradient_relevancy(model, inputs, sequences, target=target)
    assert_maps_equal(lean.relevancy, naive_masked(naive, lean.result.token_mask))
    # The text part of the row: NaN at image positions, padding and positions after p; equal elsewhere.
    text = lean.text_relevancy[:, :, :-1]
    expected = naive["rows"].clone()
    prompt_length = inputs["input_ids"].shape[1]
    for row, positions in enumerate(naive["image_positions"]):
        expected[row, :, positions] = math.nan
        padding = (inputs["attention_mask"][row] == 0).nonzero().flatten()
        expected[row, :, padding] = math.nan
    for step in range(NEW_TOKENS):
        expected[:, step, prompt_length + step :] = math.nan
    assert_maps_equal(text, expected)
    assert torch.isnan(lean.text_relevancy[:, :, -1]).all()


def test_targets_differ(model):
    inputs = tiny_llava_inputs(model, seed=4)
    sequences = generate(model, inputs, min_new_tokens=NEW_TOKENS)
    logit = gradient_relevancy(model, inputs, sequences, target="logit").relevancy
    log_prob = gradient_relevancy(model, inputs, sequences, target="log_prob").relevancy
    assert not torch.allclose(logit, log_prob)


def test_lean_equals_naive_with_two_images_in_one_prompt(model):
    inputs = tiny_llava_inputs(model, batch_size=2, num_images=[2, 1], seed=5)
    sequences = generate(model, inputs, min_new_tokens=NEW_TOKENS)
    lean = gradient_relevancy(model, inputs, sequences, token_chunk_size=2)
    naive = naive_gradient_relevancy(model, inputs, sequences)
    assert lean.relevancy.shape == (2, NEW_TOKENS, 32)
    assert lean.result.image_token_mask.sum(dim=1).tolist() == [32, 16]
    assert torch.isnan(lean.relevancy[1, :, 16:]).all()
    assert_maps_equal(lean.relevancy, naive_masked(naive, lean.result.token_mask))
    maps = lean.result.relevancy_maps(0)
    assert len(maps) == 2 and maps[1].shape == (NEW_TOKENS, 4, 4)


def test_layer_subset_equals_naive_and_changes_the_maps(model):
    inputs = tiny_llava_inputs(model, seed=6)
    sequences = generate(model, inputs, min_new_tokens=NEW_TOKENS)
    last = gradient_relevancy(model, inputs, sequences, layers=[-1])
    assert last.layers == [1]
    naive = naive_gradient_relevancy(model, inputs, sequences, layers=[1])
    assert_maps_equal(last.relevancy, naive_masked(naive, last.result.token_mask))
    every = gradient_relevancy(model, inputs, sequences)
    assert not torch.allclose(every.relevancy, last.relevancy)


def test_chunk_sizes_agree(model):
    inputs = tiny_llava_inputs(model, batch_size=2, seed=7)
    sequences = generate(model, inputs, max_new_tokens=5, min_new_tokens=5)
    per_token = gradient_relevancy(model, inputs, sequences, token_chunk_size=1).relevancy
    for chunk in (2, 8):
        torch.testing.assert_close(
            gradient_relevancy(model, inputs, sequences, token_chunk_size=chunk).relevancy,
            per_token,
            atol=1e-12,
            rtol=0,
            equal_nan=True,
        )


def test_a_chunk_out_of_memory_is_retried_in_halves_on_any_device(model, monkeypatch, caplog):
    from hf_fastrm.teacher import gradient as teacher_gradient

    inputs = tiny_llava_inputs(model, batch_size=1, seed=7)
    sequences = generate(model, inputs, max_new_tokens=4, min_new_tokens=4)
    expected = gradient_relevancy(model, inputs, sequences, token_chunk_size=1).relevancy
    real = teacher_gradient._chunk_relevance
    sizes = []

    def short_of_memory(targets, probes, start, stop):
        sizes.append(stop - start)
        if stop - start > 1:
            raise torch.OutOfMemoryError("simulated")  # what CUDA, XPU and other allocators raise
        return real(targets, probes, start, stop)

    monkeypatch.setattr(teacher_gradient, "_chunk_relevance", short_of_memory)
    result = gradient_relevancy(model, inputs, sequences, token_chunk_size=4).relevancy
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}
    torch.testing.assert_close(result, expected, atol=1e-12, rtol=0, equal_nan=True)


def test_float32_model_matches_naive_closely():
    model32 = tiny_llava(seed=1)
    inputs = tiny_llava_inputs(model32, batch_size=2, seed=8)
    sequences = generate(model32, inputs, min_new_tokens=NEW_TOKENS)
    lean = gradient_relevancy(model32, inputs, sequences)
    naive = naive_gradient_relevancy(model32, inputs, sequences)
    assert lean.relevancy.dtype == torch.float32
    torch.testing.assert_close(
        lean.relevancy, naive_masked(naive, lean.result.token_mask), atol=1e-5, rtol=1e-4, equal_nan=True
    )


@pytest.mark.parametrize("block_rows", [None, 2, 3])
@pytest.mark.parametrize(
    "kv_heads,softcap,window,sinks",
    [(4, None, None, False), (2, None, 3, False), (1, 5.0, None, False), (2, None, None, True)],
)
def test_probed_attention_equals_autograd_through_eager_attention(kv_heads, softcap, window, sinks, block_rows):
    """The attention's own backward against autograd through plain eager math, for several seeds at once; in row
    blocks too, with a causal, a left-padded and a sliding-window mask, and with attention sinks (one learned logit
    per head, a softmax column dropped afterwards) and values narrower than keys, as HY-V4's MLA attention has."""
    generator = torch.Generator().manual_seed(kv_heads)
    batch, heads, length, dim, scaling = 2, 4, 7, 8, 0.3

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    query, key, value = (
        leaf(batch, heads, length, dim),
        leaf(batch, kv_heads, length, dim),
        leaf(batch, kv_heads, length, dim - 3 if sinks else dim),
    )
    allowed = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length).clone()
    allowed[0, :, :, :2] = False  # a left-padded row
    allowed[0, :, :2, 0] = True
    if window is not None:
        allowed[1] &= ~torch.ones(length, length, dtype=torch.bool).tril(-window)
    mask = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    probe = torch.zeros(batch, length, length, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, batch, heads, length, value.shape[-1], generator=generator, dtype=torch.float64)
    sink_logits = torch.randn(heads, generator=generator, dtype=torch.float64) + 1.0 if sinks else None

    blocks = None if block_rows is None else teacher_attention.row_blocks(mask, length, length, block_rows)
    if block_rows is not None:  # every row once; every key a block leaves out is masked for all its rows
        assert blocks[0::4] == list(range(0, length, block_rows))
        assert blocks[1::4] == [min(start + block_rows, length) for start in range(0, length, block_rows)]
        for start, stop, key_start, key_stop in zip(*(blocks[i::4] for i in range(4)), strict=True):
            outside = torch.ones(length, dtype=torch.bool)
            outside[key_start:key_stop] = False
            assert not allowed[:, :, start:stop, outside].any()
        assert blocks[2:4] == [0, block_rows], "the first rows see only the first keys"
        assert sum(b - a for a, b in zip(blocks[2::4], blocks[3::4], strict=True)) < length * len(blocks) // 4
    output = teacher_attention._ProbedAttention.apply(
        query, key, value, mask, probe, scaling, softcap, blocks, sink_logits
    )
    targets = (output.unsqueeze(0) * weights).sum(dim=(1, 2, 3, 4)) ** 2  # three nonlinear targets
    seeds = torch.eye(3, dtype=torch.float64)
    batched = torch.func.vmap(
        lambda s: torch.autograd.grad(targets, [probe, query, key, value], s, retain_graph=True)
    )(seeds)

    groups = heads // kv_heads
    scores = query @ key.repeat_interleave(groups, 1).transpose(-1, -2) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if sinks:
        column = sink_logits.view(1, heads, 1, 1).expand(batch, heads, length, 1)
        probs = torch.softmax(torch.cat([scores + mask, column], dim=-1), dim=-1)[..., :length]
        assert bool((probs.sum(dim=-1) < 1 - 1e-3).all()), "the sinks take no probability: the case tests nothing"
    else:
        probs = torch.softmax(scores + mask, dim=-1)
    probs.retain_grad()
    reference_output = probs @ value.repeat_interleave(groups, 1)
    torch.testing.assert_close(output, reference_output)
    reference_targets = (reference_output.unsqueeze(0) * weights).sum(dim=(1, 2, 3, 4)) ** 2
    for index in range(3):
        probs.grad = None
        grads = torch.autograd.grad(reference_targets[index], [probs, query, key, value], retain_graph=True)
        relevance = (grads[0] * probs).clamp(min=0).mean(dim=1)
        torch.testing.assert_close(batched[0][index], relevance)
        for ours, theirs in zip(batched[1:], grads[1:], strict=True):
            torch.testing.assert_close(ours[index], theirs)


# ---------------------------------------------------------------------------------------------- outputs
def test_result_masks_after_end_of_sequence(model):
    inputs = tiny_llava_inputs(model, batch_size=2, seed=9)
    sequences = generate(model, inputs, min_new_tokens=NEW_TOKENS)
    prompt_length = inputs["input_ids"].shape[1]
    sequences[0, prompt_length + 1] = TINY_EOS_TOKEN_ID
    sequences[0, prompt_length + 2 :] = TINY_PAD_TOKEN_ID
    result = gradient_relevancy(model, inputs, sequences).result
    assert result.token_mask.tolist() == [[True, True, False, False], [True] * NEW_TOKENS]
    assert torch.isnan(result.relevancy[0, 2:]).all() and not torch.isnan(result.relevancy[0, :2]).any()
    assert torch.isnan(result.confidence[0, 2:]).all()
    assert ((result.confidence[1] >= 0) & (result.confidence[1] <= 1)).all()
    assert (result.relevancy.nan_to_num() >= 0).all()
    # The end-of-sequence token is explained but left out of the per-sequence confidence.
    torch.testing.assert_close(result.sequence_confidence[0], result.confidence[0, 0])


def test_hidden_states_are_the_last_hidden_states(model):
    inputs = tiny_llava_inputs(model, batch_size=2, seed=10)
    sequences = generate(model, inputs, min_new_tokens=NEW_TOKENS)
    teacher = gradient_relevancy(model, inputs, sequences, return_hidden_states=True)
    prompt_length = inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, prompt_length:])], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        last = model(
            input_ids=sequences,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=inputs["pixel_values"],
            output_hidden_states=True,
        ).hidden_states[-1]
    layouts = teacher.result.image_layouts
    for row, layout in enumerate(layouts):
        torch.testing.assert_close(teacher.image_hidden_states[row], last[row, layout.image_positions])
        torch.testing.assert_close(
            teacher.token_hidden_states[row], last[row, prompt_length - 1 : prompt_length - 1 + NEW_TOKENS]
        )


def test_model_state_is_restored(model):
    inputs = tiny_llava_inputs(model, seed=11)
    sequences = generate(model, inputs)
    before = attention_settings(model)
    model.lm_head.weight.requires_grad_(True)
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    try:
        gradient_relevancy(model, inputs, sequences)
        assert attention_settings(model) == before
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(module.training for module in model.modules())
        assert model.lm_head.weight.grad is None
    finally:
        model.eval()
        model.lm_head.weight.requires_grad_(False)


def test_attention_setting_restored_after_an_error(model):
    inputs = tiny_llava_inputs(model, seed=12)
    sequences = generate(model, inputs)
    before = attention_settings(model)
    flags = [p.requires_grad for p in model.parameters()]
    layer = get_adapter(model).decoder_layers(model)[1]

    def broken(*args, **kwargs):
        raise RuntimeError("boom inside the forward")

    layer.forward = broken
    try:
        with pytest.raises(RuntimeError, match="boom"):
            gradient_relevancy(model, inputs, sequences)
    finally:
        del layer.forward
    assert attention_settings(model) == before
    assert teacher_attention._ACTIVE_CAPTURE is None
    assert [p.requires_grad for p in model.parameters()] == flags
    gradient_relevancy(model, inputs, sequences)  # works again


def test_only_the_language_model_runs_the_teacher_attention(model):
    seen: dict[str, set] = {"vision": set(), "language": set()}

    def recorder(kind):
        def hook(module, args, kwargs):
            seen[kind].add(module.config._attn_implementation)

        return hook

    vision_attention = next(m for n, m in model.named_modules() if "vision_tower" in n and n.endswith("self_attn"))
    language_attention = get_adapter(model).decoder_layers(model)[0].self_attn
    handles = [
        vision_attention.register_forward_pre_hook(recorder("vision"), with_kwargs=True),
        language_attention.register_forward_pre_hook(recorder("language"), with_kwargs=True),
    ]
    try:
        inputs = tiny_llava_inputs(model, seed=13)
        sequences = generate(model, inputs, max_new_tokens=2)
        seen["vision"].clear(), seen["language"].clear()
        gradient_relevancy(model, inputs, sequences)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"vision": {"sdpa"}, "language": {teacher_attention.TEACHER_ATTENTION}}
    assert model.config.text_config._attn_implementation == "sdpa"


# ---------------------------------------------------------------------------------------------- labels
def test_relevancy_labels():
    relevancy = torch.tensor([[1.0, 2.0, 4.0, 5.0], [3.0, 3.0, 3.0, 3.0], [0.0, math.nan, 10.0, 2.0]])
    labels = relevancy_labels(relevancy)
    assert labels.tolist() == [
        [False, False, True, True],  # (x - 1) / 4 = 0, 0.25, 0.75, 1
        [False, False, False, False],  # flat map: nothing stands out
        [False, False, True, False],  # NaN ignored; 2/10 < 0.3
    ]
    assert relevancy_labels(relevancy, threshold=0.2)[0].tolist() == [False, True, True, True]
    mask = torch.tensor([True, True, True, False])
    assert relevancy_labels(relevancy, image_token_mask=mask)[0].tolist() == [False, True, True, False]  # 0, 1/3, 1
    with pytest.raises(ValueError, match="threshold"):
        relevancy_labels(relevancy, threshold=1.5)


def test_labels_of_teacher_maps(model):
    inputs = tiny_llava_inputs(model, batch_size=2, num_images=[2, 1], seed=14)
    result = gradient_relevancy(model, inputs, generate(model, inputs, min_new_tokens=NEW_TOKENS)).result
    labels = relevancy_labels(result.relevancy, image_token_mask=result.image_token_mask.unsqueeze(1))
    assert labels.shape == result.relevancy.shape
    assert not labels[1, :, 16:].any()
    assert labels.any(dim=-1).all()  # the most relevant patch of each map is always a label


# ---------------------------------------------------------------------------------------------- wrapper
def test_wrapper_gradient_relevancy(model):
    inputs = tiny_llava_inputs(model, batch_size=2, seed=15)
    wrapper = FastRMWrapper(model)
    out = wrapper.generate(**inputs, max_new_tokens=NEW_TOKENS, return_relevancy="gradient")
    assert torch.equal(out.sequences, generate(model, inputs))
    direct = gradient_relevancy(model, inputs, out.sequences).result
    torch.testing.assert_close(out.relevancy, direct.relevancy, equal_nan=True)
    torch.testing.assert_close(out.confidence, direct.confidence, equal_nan=True)
    assert out.relevancy_maps(0)[0].shape == (NEW_TOKENS, 4, 4)


def test_wrapper_gradient_relevancy_with_beam_search(model):
    inputs = tiny_llava_inputs(model, batch_size=2, seed=16)
    wrapper = FastRMWrapper(model)
    out = wrapper.generate(
        **inputs, max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False, return_relevancy="gradient"
    )
    assert out.relevancy.shape[0] == 4
    # Each returned beam is explained as the sequence it is: the maps of its own prompt, teacher-forced.
    for row in (0, 3):
        prompt = {key: value[row // 2 : row // 2 + 1] for key, value in inputs.items()}
        single = gradient_relevancy(model, prompt, out.sequences[row : row + 1]).relevancy
        torch.testing.assert_close(out.relevancy[row : row + 1], single, equal_nan=True)
    naive = naive_gradient_relevancy(model, {k: v[1:2] for k, v in inputs.items()}, out.sequences[3:4])
    assert_maps_equal(out.relevancy[3:4], naive_masked(naive, out.token_mask[3:4]))


# ---------------------------------------------------------------------------------------------- bad input
def test_sequences_must_start_with_the_prompt(model):
    inputs = tiny_llava_inputs(model, batch_size=2, seed=17)
    sequences = generate(model, inputs).clone()
    sequences[1, 3] = (sequences[1, 3] + 1) % 90 + 3
    with pytest.raises(ValueError, match=r"Rows \[1\] of `sequences` do not start with their prompt"):
        gradient_relevancy(model, inputs, sequences)
    with pytest.raises(ValueError, match="no generated token"):
        gradient_relevancy(model, inputs, inputs["input_ids"])
    with pytest.raises(ValueError, match="multiple"):
        gradient_relevancy(model, inputs, torch.cat([sequences, sequences[:1]]))


def test_prompt_without_image_is_refused(model):
    inputs = tiny_llava_inputs(model, num_images=0, seed=18)
    inputs.pop("pixel_values")
    sequences = generate(model, inputs, max_new_tokens=2)
    with pytest.raises(ValueError, match="holds no image tokens"):
        gradient_relevancy(model, inputs, sequences)


def test_bad_options_are_refused(model):
    inputs = tiny_llava_inputs(model, seed=19)
    sequences = generate(model, inputs, max_new_tokens=2)
    with pytest.raises(ValueError, match="target"):
        gradient_relevancy(model, inputs, sequences, target="probability")
    with pytest.raises(ValueError, match="Layer 5 does not exist"):
        gradient_relevancy(model, inputs, sequences, layers=[5])
    with pytest.raises(ValueError, match="token_chunk_size"):
        gradient_relevancy(model, inputs, sequences, token_chunk_size=0)
    with pytest.raises(ValueError, match="attention_block_rows"):
        gradient_relevancy(model, inputs, sequences, attention_block_rows=-1)
    with pytest.raises(ValueError, match="input_ids"):
        gradient_relevancy(model, {"pixel_values": inputs["pixel_values"]}, sequences)
    with pytest.raises(TypeError, match="generate"):
        gradient_relevancy_for_outputs(model, {"sequences": sequences}, inputs)


def test_attention_that_ignores_the_interface_is_refused():
    model = tiny_llava(seed=2, dtype=torch.float64)
    inputs = tiny_llava_inputs(model, seed=20)
    sequences = generate(model, inputs, max_new_tokens=2)
    before = attention_settings(model)
    attention = get_adapter(model).decoder_layers(model)[0].self_attn
    original = attention.forward

    def hard_wired_sdpa(*args, **kwargs):
        # A family whose attention computes its own way, whatever the config says.
        saved = attention.config._attn_implementation_internal
        attention.config._attn_implementation_internal = "sdpa"
        try:
            return original(*args, **kwargs)
        finally:
            attention.config._attn_implementation_internal = saved

    attention.forward = hard_wired_sdpa
    with pytest.raises(RuntimeError, match=r"layers \[0\].*AttentionInterface"):
        gradient_relevancy(model, inputs, sequences)
    assert attention_settings(model) == before
