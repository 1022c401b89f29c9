"""The shared suite, parametrised over model families: real layouts, identical tokens, maps on the right tokens.

Each family's tiny model (tests/models/family_builders.py) runs through `FastRMWrapper.generate(...,
return_relevancy=True)`, a reused `FastRMLogitsProcessor` and the gradient teacher. The maps must equal the head
applied to the last hidden states of ONE separate forward with ``output_hidden_states=True`` at the positions the
layout names: that checks that the layout points at the image tokens the processor wrote, in grid order.
"""

from __future__ import annotations

import functools

import pytest
import torch
from family_builders import (
    FamilyCase,
    aya_vision_case,
    gemma3_case,
    idefics3_case,
    idefics_case,
    internvl_case,
    llama4_case,
    llava_case,
    llava_next_case,
    llava_next_video_case,
    llava_onevision_case,
    llava_pixtral_case,
    mistral3_case,
    mllama_case,
    paligemma_case,
    qwen_case,
    vipllava_case,
)
from family_table import table_cases

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.architectures import get_adapter
from hf_fastrm.testing_utils import tiny_head

NEW_TOKENS = 4
GREEDY = {"do_sample": False, "max_new_tokens": NEW_TOKENS}
TAP_WRAPPED = (  # the tap's wrappers
    "get_image_features",
    "get_video_features",
    "_expand_inputs_for_generation",
    "prepare_inputs_for_generation",
    "generate",
    "_maybe_prepare_encoder_kwargs_for_generation",
)

CASES: list[FamilyCase] = [
    llava_case(),
    llava_pixtral_case(),
    vipllava_case(),
    llava_next_case(),
    llava_next_video_case(),
    llava_onevision_case(),
    llava_onevision_case(video=True),
    qwen_case("qwen2_vl"),
    qwen_case("qwen2_vl", video=True),
    qwen_case("qwen2_5_vl"),
    qwen_case("qwen3_vl", video=True),
    qwen_case("qwen3_vl_moe"),
    idefics3_case("idefics3"),
    idefics3_case("smolvlm"),
    gemma3_case(),
    paligemma_case(),
    mistral3_case(),
    internvl_case(),
    aya_vision_case(),
    llama4_case(),
    mllama_case(),
    idefics_case(),
    idefics_case(resampler=False),
    *table_cases(),
]
BY_NAME = {case.name: case for case in CASES}


def params(cases: list[FamilyCase]) -> list:
    return [pytest.param(case.name, id=case.name, marks=[pytest.mark.slow] if case.slow else []) for case in cases]


@functools.cache
def built(name: str) -> tuple[torch.nn.Module, dict, torch.nn.Module]:
    model, inputs = BY_NAME[name].build()
    return model, inputs, tiny_head(model)


def generation_or_skip(model, inputs) -> torch.Tensor:
    """Plain greedy generation; skips when the installed transformers cannot generate with this family at all."""
    try:
        with torch.no_grad():
            return model.generate(**inputs, **GREEDY)
    except AttributeError as error:  # Llama 4 in transformers 5.24: forward reads `outputs.image_outputs`
        pytest.skip(f"{type(model).__name__}.generate() fails without FastRM in this transformers: {error}")


@functools.cache
def generated(name: str):
    """(plain sequences, the wrapper's output) for one family, computed once."""
    model, inputs, head = built(name)
    plain = generation_or_skip(model, inputs)
    before = hook_state(model)  # after a first generate(): transformers installs hooks of its own lazily
    out = FastRMWrapper(model, head).generate(**inputs, **GREEDY, return_relevancy=True)
    return plain, out, before, hook_state(model)


def hook_state(model: torch.nn.Module) -> dict[str, tuple]:
    """Every module's forward hooks and pre-hooks, and the instance-level methods the tap wraps."""
    state = {}
    for name, module in model.named_modules():
        patched = tuple(key for key in TAP_WRAPPED if key in module.__dict__)
        if module._forward_hooks or module._forward_pre_hooks or patched:
            state[name] = (tuple(module._forward_hooks), tuple(module._forward_pre_hooks), patched)
    return state


def reference_hidden_states(model, inputs, sequences, case: FamilyCase) -> torch.Tensor:
    """`(batch, seq, hidden)`: the last hidden states (what `lm_head` reads) of ONE separate full forward over the
    generated sequences, with the processor outputs and the positions generate() used."""
    return reference_forward(model, inputs, sequences, case)[0]


def reference_forward(model, inputs, sequences, case: FamilyCase) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[`reference_hidden_states`], and for cross-attention cases the image states `(batch, image_states, hidden)`
    the same forward's cross-attention layers attended to (read by the case's own hook; else None)."""
    prompt_length = inputs["input_ids"].shape[1]
    num_new = sequences.shape[1] - prompt_length
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, prompt_length:])], dim=1)
    kwargs = {}
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if key in case.repeat_inputs:  # generated tokens take the prompt's last row (the model's generation rule)
            value = torch.cat([value, value[:, -1:].expand(-1, num_new, *value.shape[2:])], dim=1)
        elif isinstance(value, torch.Tensor) and value.shape[:2] == inputs["input_ids"].shape:
            fill = case.new_token_type if key == "token_type_ids" else 0
            value = torch.cat([value, value.new_full((value.shape[0], num_new, *value.shape[2:]), fill)], dim=1)
        kwargs[key] = value
    decoding_positions = get_adapter(model).decoding_position_ids(model, sequences, prompt_length)
    if decoding_positions is not None:  # the family decodes at other positions than a full forward derives
        kwargs["position_ids"] = decoding_positions
    elif not case.mrope:  # the positions generate() uses for left-padded rows
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    normed = []
    handles = [
        get_adapter(model).final_norm(model).register_forward_hook(lambda _m, _a, output: normed.append(output))
    ]
    recorded = {}
    if case.image_states is not None:
        module, read = case.image_states(model)
        handles.append(
            module.register_forward_pre_hook(
                lambda _, args, kwargs: recorded.update(states=read(args, kwargs)), with_kwargs=True
            )
        )
    try:
        with torch.no_grad():
            out = model(input_ids=sequences, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    # BLIP-2 and kin return the language model's own output inside theirs
    hidden_states = getattr(out, "hidden_states", None) or out.language_model_outputs.hidden_states
    last = hidden_states[-1]
    if last.dim() != 3:  # Gemma 3n records its AltUp stack (altup, batch, seq, hidden); lm_head reads the final norm
        last = normed[-1]
    return last, recorded.get("states")


def reference_relevancy(model, head, inputs, sequences, layouts, case: FamilyCase) -> list[torch.Tensor]:
    """Per row `(new_tokens, image_tokens)`: the head on the last hidden states of the separate forward."""
    last, cross_states = reference_forward(model, inputs, sequences, case)
    prompt_length = inputs["input_ids"].shape[1]
    num_new = sequences.shape[1] - prompt_length
    prompt_end = sequence_prefix(model, inputs) + prompt_length  # in the decoder's sequence
    maps = []
    with torch.no_grad():
        for row, layout in enumerate(layouts):
            token_states = last[row, prompt_end - 1 : prompt_end - 1 + num_new]
            # cross-attention layouts index the image states the cross-attention layers attended to
            image_states = (cross_states if layout.cross_attention else last)[row, layout.image_positions]
            maps.append(head(token_states.unsqueeze(0), image_states.unsqueeze(0))[0])
    return maps


def sequence_prefix(model, inputs: dict) -> int:
    """Positions the model puts before `input_ids` in the decoder's sequence (GIT's image; 0 elsewhere)."""
    return get_adapter(model).sequence_prefix(model.config, inputs)


def image_token_marks(case: FamilyCase, config, inputs: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """`(rows, prefix + prompt_length)` bool over the decoder's sequence: the image tokens as the processor marked
    them (placeholder ids, or the case's mask input, e.g. Kosmos-2's ``image_embeds_position_mask``), after a
    prefix of prepended image features (GIT), for rows of the same prompts."""
    if case.image_mask_input is not None:
        marks = inputs[case.image_mask_input][:, : input_ids.shape[1]].bool()
    else:
        marks = torch.isin(input_ids, torch.tensor(sorted(image_token_ids(config)), dtype=input_ids.dtype))
    prefix = get_adapter(config).sequence_prefix(config, inputs)
    return torch.cat([marks.new_ones(marks.shape[0], prefix), marks], dim=1)


def image_token_ids(config) -> set[int]:
    ids = set()
    for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            ids.add(int(value))
    return ids


# ---------------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", params(CASES))
def test_layout_matches_the_processor(name):
    """Grid labels and shapes as the processor's own numbers say; every cell one distinct image token."""
    case = BY_NAME[name]
    model, inputs, _ = built(name)
    layouts = get_adapter(model).image_layout(model.config, inputs["input_ids"], dict(inputs))
    got = [
        [(label, tuple(grid.shape)) for label, grid in zip(lay.grid_labels, lay.image_grids, strict=True)]
        for lay in layouts
    ]
    assert got == case.expected_grids
    marks = image_token_marks(case, model.config, inputs, inputs["input_ids"])
    for row, layout in enumerate(layouts):
        assert layout.cross_attention == (case.image_states is not None)
        if layout.cross_attention:  # positions index the cross-attention states: checked against them in generation
            assert layout.image_positions.unique().numel() == layout.num_image_tokens
        else:
            assert bool(marks[row, layout.image_positions].all())
        cells = torch.cat([grid.flatten() for grid in layout.image_grids])
        cells = cells[cells >= 0]
        assert cells.unique().numel() == cells.numel(), "a token sits in two grid cells"
        assert int(cells.max()) < layout.num_image_tokens


# ---------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", params(CASES))
def test_tokens_identical_and_maps_equal_head_on_separate_forward(name):
    case = BY_NAME[name]
    model, inputs, head = built(name)
    plain, out, before, after = generated(name)
    assert after == before, "FastRM left hooks or encoder wrappers on the model"
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)

    valid = out.token_mask.unsqueeze(-1) & out.image_token_mask.unsqueeze(1)
    assert bool(out.relevancy[valid].isfinite().all())
    assert bool(out.relevancy[~valid].isnan().all())

    expected = reference_relevancy(model, head, inputs, out.sequences, out.image_layouts, case)
    maps = out.relevancy_maps()
    for row, layout in enumerate(out.image_layouts):
        n = layout.num_image_tokens
        tokens = out.token_mask[row]
        torch.testing.assert_close(out.relevancy[row, tokens, :n], expected[row][tokens], rtol=1e-4, atol=1e-5)
        shapes = [tuple(grid.shape) for grid in layout.image_grids]
        assert [tuple(m.shape) for m in maps[row]] == [(out.relevancy.shape[1], *shape) for shape in shapes]
        for grid, grid_map in zip(layout.image_grids, maps[row], strict=True):
            cells = grid >= 0
            want = expected[row][:, grid.clamp(min=0)]
            torch.testing.assert_close(grid_map[tokens][:, cells], want[tokens][:, cells], rtol=1e-4, atol=1e-5)
            assert bool(grid_map[:, ~cells].isnan().all())


@pytest.mark.parametrize("name", params(CASES))
def test_logits_processor_reused_across_calls(name):
    model, inputs, head = built(name)
    _, out, _, _ = generated(name)
    before = hook_state(model)
    with FastRMLogitsProcessor(model, head) as fastrm:
        short = model.generate(**inputs, logits_processor=[fastrm], do_sample=False, max_new_tokens=2)
        first = fastrm.result_for(short)
        full = model.generate(**inputs, logits_processor=[fastrm], **GREEDY)
        second = fastrm.result_for(full)
    assert hook_state(model) == before
    torch.testing.assert_close(full, out.sequences, rtol=0, atol=0)
    torch.testing.assert_close(second.relevancy, out.relevancy, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(first.relevancy, out.relevancy[:, :2], rtol=0, atol=0, equal_nan=True)
    assert [lay.grid_labels for lay in second.image_layouts] == [lay.grid_labels for lay in out.image_layouts]


# ---------------------------------------------------------------------------------------------------- teacher
def teacher_params() -> list:
    marks = {
        case.name: [pytest.mark.xfail(reason=case.teacher_issue, strict=False)] if case.teacher_issue else []
        for case in CASES
    }
    return [pytest.param(p.values[0], id=p.id, marks=[*p.marks, *marks[p.values[0]]]) for p in params(CASES)]


@pytest.mark.parametrize("name", teacher_params())
def test_teacher_runs_on_the_same_grids_and_tokens(name):
    """The gradient teacher on each family: same layouts, non-negative finite maps, and its teacher-forced forward
    reproduces the hidden states generation saw (so it explains the tokens that were generated)."""
    teacher = pytest.importorskip("hf_fastrm.teacher")
    case = BY_NAME[name]
    model, inputs, _ = built(name)
    _, out, _, _ = generated(name)
    output = teacher.gradient_relevancy(model, dict(inputs), out.sequences, return_hidden_states=True)
    result = output.result
    assert [lay.grid_labels for lay in result.image_layouts] == [lay.grid_labels for lay in out.image_layouts]
    valid = result.token_mask.unsqueeze(-1) & result.image_token_mask.unsqueeze(1)
    assert bool(result.relevancy[valid].isfinite().all())
    assert bool((result.relevancy[valid] >= 0).all())
    assert float(result.relevancy[valid].sum()) > 0, "the teacher's maps are all zero: attention was not captured"
    for row_maps, row_expected in zip(result.relevancy_maps(), out.relevancy_maps(), strict=True):
        assert [m.shape for m in row_maps] == [m.shape for m in row_expected]
    # The attention backward in small row blocks (each against the keys its rows see: causal, sliding-window and
    # bidirectional image masks) gives the same maps as one block.
    blocked = teacher.gradient_relevancy(model, dict(inputs), out.sequences, attention_block_rows=3).relevancy
    one_block = teacher.gradient_relevancy(model, dict(inputs), out.sequences, attention_block_rows=0).relevancy
    torch.testing.assert_close(blocked, one_block, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(result.relevancy, one_block, rtol=1e-5, atol=1e-6, equal_nan=True)

    last, cross_states = reference_forward(model, inputs, out.sequences, case)
    prompt_length = sequence_prefix(model, inputs) + inputs["input_ids"].shape[1]  # in the decoder's sequence
    for row, layout in enumerate(out.image_layouts):
        n = layout.num_image_tokens
        image_states = (cross_states if layout.cross_attention else last)[row, layout.image_positions]
        torch.testing.assert_close(output.image_hidden_states[row, :n], image_states, rtol=1e-4, atol=1e-4)
        tokens = result.token_mask[row]
        chosen = last[row, prompt_length - 1 : prompt_length - 1 + tokens.numel()]
        torch.testing.assert_close(output.token_hidden_states[row, tokens], chosen[tokens], rtol=1e-4, atol=1e-4)
