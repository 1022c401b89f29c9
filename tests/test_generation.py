"""FastRM inside generate(): identical tokens, maps equal to the head on a separate forward, masks, modes, errors."""

import pytest
import torch
from conftest import hook_snapshot
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

from hf_fastrm import FastRMGenerateDecoderOnlyOutput, FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.testing_utils import TINY_EOS_TOKEN_ID, tiny_head, tiny_llava, tiny_llava_inputs

GREEDY = {"do_sample": False, "max_new_tokens": 6}


def expected_maps(model, head, inputs, sequences, layouts, prompt_length, beam_rows=None):
    """The head applied to last hidden states from ONE separate forward with output_hidden_states=True."""
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, prompt_length:])], dim=1)
    # the positions generate() uses for left-padded rows (RoPE angles are float32, so they must match exactly)
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    with torch.no_grad():
        out = model(
            input_ids=sequences,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=inputs["pixel_values"],
            output_hidden_states=True,
        )
    last = out.hidden_states[-1]
    maps = []
    for row, layout in enumerate(layouts):
        image_states = last[row, layout.image_positions]
        num_new = sequences.shape[1] - prompt_length
        token_states = last[row, prompt_length - 1 : prompt_length - 1 + num_new]
        maps.append(head(token_states.unsqueeze(0), image_states.unsqueeze(0))[0])
    return maps


def test_last_hidden_state_is_what_lm_head_reads(llava64):
    inputs = tiny_llava_inputs(llava64)
    with torch.no_grad():
        out = llava64(**inputs, output_hidden_states=True)
    torch.testing.assert_close(llava64.lm_head(out.hidden_states[-1]), out.logits)


@pytest.mark.parametrize("batch_size,num_images", [(1, 1), (3, [1, 2, 1])])
def test_greedy_tokens_identical_and_maps_equal_head_on_hidden_states(llava64, head64, batch_size, num_images):
    hooks_before = hook_snapshot(llava64)
    inputs = tiny_llava_inputs(llava64, batch_size=batch_size, num_images=num_images)
    plain = llava64.generate(**inputs, **GREEDY)
    wrapper = FastRMWrapper(llava64, head64)
    out = wrapper.generate(**inputs, **GREEDY, return_relevancy=True)
    assert isinstance(out, FastRMGenerateDecoderOnlyOutput)
    assert torch.equal(out.sequences, plain)
    assert hook_snapshot(llava64) == hooks_before
    prompt_length = inputs["input_ids"].shape[1]
    maps = expected_maps(llava64, head64, inputs, out.sequences, out.image_layouts, prompt_length)
    for row, expected in enumerate(maps):
        valid = out.token_mask[row]
        n = out.image_layouts[row].num_image_tokens
        torch.testing.assert_close(out.relevancy[row, valid, :n], expected[valid], rtol=1e-9, atol=1e-9)
        assert torch.isnan(out.relevancy[row, :, n:]).all()
    assert out.confidence.shape == out.token_mask.shape


def test_seeded_sampling_tokens_identical(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2)
    kwargs = {"do_sample": True, "top_k": 20, "temperature": 1.3, "max_new_tokens": 8}
    torch.manual_seed(123)
    plain = llava.generate(**inputs, **kwargs)
    torch.manual_seed(123)
    out = FastRMWrapper(llava, head).generate(**inputs, **kwargs, return_relevancy=True)
    assert torch.equal(out.sequences, plain)
    assert out.relevancy.shape == (2, 8, 16)


def test_left_padded_batch_rows_match_unbatched_runs(llava64, head64):
    inputs = tiny_llava_inputs(llava64, batch_size=2, text_lengths=[4, 9])
    assert (inputs["attention_mask"][0] == 0).any(), "row 0 should be left-padded"
    wrapper = FastRMWrapper(llava64, head64)
    batched = wrapper.generate(**inputs, **GREEDY, return_relevancy=True)
    for row in range(2):
        keep = inputs["attention_mask"][row].bool()
        single = {
            "input_ids": inputs["input_ids"][row : row + 1, keep],
            "attention_mask": inputs["attention_mask"][row : row + 1, keep],
            "pixel_values": inputs["pixel_values"][row : row + 1],
        }
        alone = wrapper.generate(**single, **GREEDY, return_relevancy=True)
        assert torch.equal(alone.sequences[0, -6:], batched.sequences[row, -6:])
        torch.testing.assert_close(alone.relevancy[0], batched.relevancy[row], rtol=1e-7, atol=1e-7)


class ForceTokenAfter(LogitsProcessor):
    """Forces `token` at step `step` (to make a row end early)."""

    def __init__(self, prompt_length, step, token, row=0):
        self.prompt_length, self.step, self.token, self.row = prompt_length, step, token, row

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores[self.row] = -float("inf")
            scores[self.row, self.token] = 0.0
        return scores


def test_tokens_after_eos_are_masked_and_user_processors_run_alongside(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2)
    prompt_length = inputs["input_ids"].shape[1]
    force = ForceTokenAfter(prompt_length, step=2, token=TINY_EOS_TOKEN_ID)
    plain = llava.generate(**inputs, **GREEDY, logits_processor=[force])
    out = FastRMWrapper(llava, head).generate(**inputs, **GREEDY, logits_processor=[force], return_relevancy=True)
    assert torch.equal(out.sequences, plain)
    assert out.sequences[0, prompt_length + 2] == TINY_EOS_TOKEN_ID
    assert out.token_mask[0].tolist() == [True, True, True, False, False, False]
    assert torch.isnan(out.relevancy[0, 3:]).all() and torch.isnan(out.confidence[0, 3:]).all()
    assert not torch.isnan(out.confidence[0, :3]).any()
    # the EOS token is excluded from the sequence summary
    torch.testing.assert_close(out.sequence_confidence[0], out.confidence[0, :2].mean())
    assert out.token_mask[1].all()


class StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


class CountingStreamer(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = 0, False

    def put(self, value):
        self.puts += 1

    def end(self):
        self.ended = True


def test_stopping_criteria_and_streamer(llava, head):
    inputs = tiny_llava_inputs(llava)
    prompt_length = inputs["input_ids"].shape[1]
    streamer = CountingStreamer()
    out = FastRMWrapper(llava, head).generate(
        **inputs,
        do_sample=False,
        max_new_tokens=10,
        stopping_criteria=StoppingCriteriaList([StopAfter(prompt_length + 4)]),
        streamer=streamer,
        return_relevancy=True,
    )
    assert out.sequences.shape[1] == prompt_length + 4
    assert out.relevancy.shape[1] == 4
    assert streamer.puts == 1 + 4 and streamer.ended


def test_beam_search_maps_follow_the_returned_beams(llava64, head64):
    # one image per row: transformers < 5.24 expands pixel_values per image, not per row, for beam search
    inputs = tiny_llava_inputs(llava64, batch_size=2, num_images=1)
    kwargs = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 5, "do_sample": False}
    plain = llava64.generate(**inputs, **kwargs)
    out = FastRMWrapper(llava64, head64).generate(**inputs, **kwargs, return_relevancy=True)
    assert isinstance(out, GenerateBeamDecoderOnlyOutput)
    assert torch.equal(out.sequences, plain)
    prompt_length = inputs["input_ids"].shape[1]
    # returned rows are (batch * num_return_sequences); their prompts repeat each input row twice
    expanded = {key: value.repeat_interleave(2, dim=0) for key, value in inputs.items() if key != "pixel_values"}
    expanded["pixel_values"] = inputs["pixel_values"].repeat_interleave(2, dim=0)
    maps = expected_maps(llava64, head64, expanded, out.sequences, out.image_layouts, prompt_length)
    for row, expected in enumerate(maps):
        valid = out.token_mask[row]
        n = out.image_layouts[row].num_image_tokens
        torch.testing.assert_close(out.relevancy[row, valid, :n], expected[valid], rtol=1e-9, atol=1e-9)


def test_processor_standalone_and_reused(llava64, head64):
    hooks_before = hook_snapshot(llava64)
    first = tiny_llava_inputs(llava64, seed=1)
    second = tiny_llava_inputs(llava64, batch_size=2, num_images=2, seed=2)
    with FastRMLogitsProcessor(llava64, head64) as fastrm:
        out1 = llava64.generate(**first, **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True)
        result1 = fastrm.result_for(out1)
        plain_result1 = fastrm.result
        out2 = llava64.generate(**second, **GREEDY, logits_processor=[fastrm])
        result2 = fastrm.result_for(out2)
    assert hook_snapshot(llava64) == hooks_before
    assert isinstance(out1, GenerateDecoderOnlyOutput) and isinstance(out2, torch.Tensor)
    assert result1.relevancy.shape == (1, 6, 16) and result2.relevancy.shape == (2, 6, 32)
    torch.testing.assert_close(plain_result1.relevancy, result1.relevancy, equal_nan=True)
    wrapped = FastRMWrapper(llava64, head64).generate(**second, **GREEDY, return_relevancy=True)
    torch.testing.assert_close(result2.relevancy, wrapped.relevancy, equal_nan=True)
    assert len(result2.relevancy_maps(1)) == 2 and result2.relevancy_maps(1)[0].shape == (6, 4, 4)


def test_relevancy_maps_are_the_grid_view(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2, num_images=[2, 1])
    out = FastRMWrapper(llava, head).generate(**inputs, **GREEDY, return_relevancy=True)
    maps = out.relevancy_maps()
    assert [len(row) for row in maps] == [2, 1]
    assert torch.equal(maps[0][1].flatten(1), out.relevancy[0, :, 16:32])
    assert torch.equal(maps[1][0].flatten(1), out.relevancy[1, :, :16])


def test_cls_token_of_full_strategy_is_outside_the_grid():
    model = tiny_llava(vision_feature_select_strategy="full")
    head = tiny_head(model)
    inputs = tiny_llava_inputs(model)
    out = FastRMWrapper(model, head).generate(**inputs, **GREEDY, return_relevancy=True)
    assert out.relevancy.shape[-1] == 17
    assert torch.equal(out.relevancy_maps(0)[0].flatten(1), out.relevancy[0, :, 1:])


class Explode(LogitsProcessor):
    def __init__(self, at_call):
        self.calls, self.at_call = 0, at_call

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == self.at_call:
            raise RuntimeError("boom")
        return scores


def test_no_hook_or_setting_left_after_an_error_inside_generation(llava, head):
    hooks_before = hook_snapshot(llava)
    inputs = tiny_llava_inputs(llava)
    attn_before = llava.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        FastRMWrapper(llava, head).generate(**inputs, **GREEDY, logits_processor=[Explode(3)], return_relevancy=True)
    assert hook_snapshot(llava) == hooks_before
    assert llava.config._attn_implementation == attn_before
    with pytest.raises(RuntimeError, match="boom"), FastRMLogitsProcessor(llava, head) as fastrm:
        llava.generate(**inputs, **GREEDY, logits_processor=[Explode(2), fastrm])
    assert hook_snapshot(llava) == hooks_before


def test_prompt_without_image_tokens_is_refused(llava, head):
    hooks_before = hook_snapshot(llava)
    inputs = tiny_llava_inputs(llava)
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["input_ids"] == llava.config.image_token_id, 5)
    del inputs["pixel_values"]
    with pytest.raises(ValueError, match="no image tokens.*<image>"):
        FastRMWrapper(llava, head).generate(**inputs, **GREEDY, return_relevancy=True)
    assert hook_snapshot(llava) == hooks_before


def test_unsupported_family_lists_supported_ones_and_how_to_register(head):
    from transformers import LlamaConfig, LlamaForCausalLM

    text_model = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=50)
    )
    hooks_before = hook_snapshot(text_model)
    with pytest.raises(ValueError, match=r"'llama' is not supported.*llava.*register_architecture"):
        FastRMWrapper(text_model, head)
    with pytest.raises(ValueError, match="register_architecture"):
        FastRMLogitsProcessor(text_model, head)
    assert hook_snapshot(text_model) == hooks_before


def test_wrong_head_is_refused_before_any_hook(llava):
    from hf_fastrm import FastRMConfig, FastRMHead

    hooks_before = hook_snapshot(llava)
    with pytest.raises(ValueError, match="hidden size 48.*hidden size 32"):
        FastRMLogitsProcessor(llava, FastRMHead(FastRMConfig(hidden_size=48)))
    assert hook_snapshot(llava) == hooks_before


def test_wrapper_without_flag_is_the_base_model(tmp_path, llava, head):
    inputs = tiny_llava_inputs(llava)
    wrapper = FastRMWrapper(llava, head)
    assert wrapper.config is llava.config and wrapper.generation_config is llava.generation_config
    plain = llava.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    passed = wrapper.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    assert type(passed) is type(plain) and torch.equal(passed.sequences, plain.sequences)
    assert type(wrapper.generate(**inputs, **GREEDY)) is torch.Tensor
    with torch.no_grad():
        torch.testing.assert_close(wrapper(**inputs).logits, llava(**inputs).logits)
    wrapper.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()


def test_wrapper_from_pretrained_loads_model_and_head_from_folders(tmp_path, llava, head):
    llava.save_pretrained(tmp_path / "model")
    head.config.base_model_name_or_path = str(tmp_path / "model")
    head.save_pretrained(tmp_path / "head")
    wrapper = FastRMWrapper.from_pretrained(str(tmp_path / "model"), head=str(tmp_path / "head"), dtype=torch.float32)
    assert torch.equal(wrapper.head.key.weight, head.key.weight)
    inputs = tiny_llava_inputs(wrapper.model)
    out = wrapper.generate(**inputs, **GREEDY, return_relevancy=True)
    assert torch.equal(out.sequences, llava.generate(**inputs, **GREEDY))
