"""FastRMLogitsProcessor's lifecycle: hooks go with the processor, results belong to the calls that were given it."""

import gc
import math

import pytest
import torch
from conftest import hook_snapshot
from transformers import LogitsProcessor
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from hf_fastrm import FastRMHead, FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.architectures import get_adapter
from hf_fastrm.testing_utils import TINY_EOS_TOKEN_ID, tiny_head, tiny_head_config, tiny_llava_inputs

GREEDY = {"do_sample": False, "max_new_tokens": 4}


def encoder_wrapped(model) -> bool:
    return any("get_image_features" in module.__dict__ for module in (model, model.model))


def test_hooks_are_removed_when_the_processor_is_collected(llava, head):
    inputs = tiny_llava_inputs(llava)
    llava.generate(**inputs, **GREEDY)  # transformers adds its output-capturing hooks on the first call
    hooks_before = hook_snapshot(llava)
    fastrm = FastRMLogitsProcessor(llava, head)
    llava.generate(**inputs, **GREEDY, logits_processor=[fastrm])
    assert fastrm.result.relevancy.shape == (1, 4, 16)
    assert hook_snapshot(llava) != hooks_before and encoder_wrapped(llava)
    del fastrm
    gc.collect()
    assert hook_snapshot(llava) == hooks_before and not encoder_wrapped(llava)


def test_result_for_refuses_outputs_of_another_call(llava, head):
    first = tiny_llava_inputs(llava, seed=1)
    second = tiny_llava_inputs(llava, seed=2)
    pair = tiny_llava_inputs(llava, batch_size=2, seed=3)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        out_pair = llava.generate(**pair, **GREEDY, logits_processor=[fastrm])
        out_first = llava.generate(**first, **GREEDY, logits_processor=[fastrm])
        assert fastrm.result_for(out_first).relevancy.shape == (1, 4, 16)
        # a batch-size mismatch is the clear error, not a broadcast error
        with pytest.raises(ValueError, match="last generate\\(\\) call.*2 sequences, that call 1"):
            fastrm.result_for(out_pair)
        out_second = llava.generate(**second, **GREEDY, logits_processor=[fastrm])
        with pytest.raises(ValueError, match="last generate\\(\\) call.*prompts differ"):
            fastrm.result_for(out_first)
        # same prompt, another number of new tokens
        longer = llava.generate(**second, do_sample=False, max_new_tokens=6)
        with pytest.raises(ValueError, match="6 new tokens differ from the 4"):
            fastrm.result_for(longer)
        assert fastrm.result_for(out_second).relevancy.shape == (1, 4, 16)


def test_calls_not_given_the_processor_leave_its_result_alone(llava, head):
    first = tiny_llava_inputs(llava, seed=1)
    other = tiny_llava_inputs(llava, batch_size=2, num_images=2, seed=2)
    text_only = {"input_ids": torch.tensor([[1, 5, 6, 7]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    plain_text = llava.generate(**text_only, **GREEDY)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        out = llava.generate(**first, **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True)
        expected = fastrm.result_for(out)
        plain = fastrm.result
        llava.generate(**other, **GREEDY)  # hooks attached, processor not given
        # a prompt the processor would refuse (no image tokens) runs as if the hooks were not there
        assert torch.equal(llava.generate(**text_only, **GREEDY), plain_text)
        torch.testing.assert_close(fastrm.result.relevancy, plain.relevancy, equal_nan=True)
        torch.testing.assert_close(fastrm.result_for(out).relevancy, expected.relevancy, equal_nan=True)


def test_beam_search_result_is_refused_and_result_for_follows_the_returned_beams(llava64, head64):
    inputs = tiny_llava_inputs(llava64, batch_size=2, num_images=1)
    beams = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 4, "do_sample": False}
    with FastRMLogitsProcessor(llava64, head64) as fastrm:
        out = llava64.generate(**inputs, **beams, logits_processor=[fastrm], return_dict_in_generate=True)
        with pytest.raises(ValueError, match="beam search.*result_for\\(outputs\\)"):
            _ = fastrm.result
        with pytest.raises(ValueError, match="beam search.*beam_indices"):
            fastrm.result_for(out.sequences)
        result = fastrm.result_for(out)
    assert result.relevancy.shape[0] == 4  # batch * num_return_sequences, not batch * num_beams
    wrapped = FastRMWrapper(llava64, head64).generate(**inputs, **beams, return_relevancy=True)
    torch.testing.assert_close(result.relevancy, wrapped.relevancy, equal_nan=True)
    # after a greedy call the same processor answers `result` again
    with FastRMLogitsProcessor(llava64, head64) as fastrm:
        llava64.generate(**inputs, **GREEDY, logits_processor=[fastrm])
        assert fastrm.result.relevancy.shape == (2, 4, 16)


class OnlyEOS(LogitsProcessor):
    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -math.inf)
        forced[:, TINY_EOS_TOKEN_ID] = 0.0
        return forced


def test_answer_of_special_tokens_only_warns_why_sequence_confidence_is_nan(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2)
    logger = logging.get_logger("hf_fastrm.results")
    with CaptureLogger(logger) as captured:
        out = FastRMWrapper(llava, head).generate(
            **inputs, **GREEDY, logits_processor=[OnlyEOS()], return_relevancy=True
        )
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + 1
    assert torch.isnan(out.sequence_confidence).all()
    assert not torch.isnan(out.confidence[:, 0]).any()  # the end-of-sequence token still has its map
    assert "sequence_confidence is NaN for row(s) [0, 1]" in captured.out
    assert "special token" in captured.out
    with CaptureLogger(logger) as captured:
        teacher = FastRMWrapper(llava, head).generate(
            **inputs, **GREEDY, logits_processor=[OnlyEOS()], return_relevancy="gradient"
        )
    assert torch.isnan(teacher.sequence_confidence).all()
    assert "sequence_confidence is NaN for row(s) [0, 1]" in captured.out
    with CaptureLogger(logger) as captured:
        FastRMWrapper(llava, head).generate(**inputs, **GREEDY, return_relevancy=True)
    assert "sequence_confidence is NaN" not in captured.out


def test_missing_pixel_values_is_refused_naming_them(llava, head):
    inputs = tiny_llava_inputs(llava)
    prompt = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    hooks_before = hook_snapshot(llava)
    with pytest.raises(ValueError, match="no `pixel_values`"), FastRMLogitsProcessor(llava, head) as fastrm:
        llava.generate(**prompt, **GREEDY, logits_processor=[fastrm])
    assert fastrm.__dict__.get("_record") is None  # no map over placeholder embeddings was made
    for method in (True, "gradient"):
        with pytest.raises(ValueError, match="no `pixel_values`"):
            FastRMWrapper(llava, head).generate(**prompt, **GREEDY, return_relevancy=method)
    assert hook_snapshot(llava) == hooks_before


def test_required_inputs_follow_the_prompts_tokens(llava):
    from transformers import Qwen2VLConfig

    adapter = get_adapter(llava)
    image_id = llava.config.image_token_id
    assert adapter.required_inputs(llava.config, torch.tensor([[1, image_id, 5]])) == ("pixel_values",)
    assert adapter.required_inputs(llava.config, torch.tensor([[1, 4, 5]])) == ()
    config = Qwen2VLConfig()
    qwen = get_adapter(config)
    both = torch.tensor([[config.image_token_id, config.video_token_id]])
    assert qwen.required_inputs(config, both) == (
        "pixel_values",
        "image_grid_thw",
        "pixel_values_videos",
        "video_grid_thw",
    )


@pytest.mark.parametrize("question_aware", [False, True])
def test_expanded_rows_share_their_prefill_keys(llava64, question_aware):
    """Beam search / num_return_sequences repeat each prompt row in place: the head's keys are computed for one row
    of each group (prefill memory) and repeated, equal to the keys of every row computed one by one."""
    if question_aware:
        torch.manual_seed(0)
        head = FastRMHead(tiny_head_config(llava64, head_type="question_aware")).double().eval()
    else:
        head = tiny_head(llava64).double()
    inputs = tiny_llava_inputs(llava64, batch_size=2, num_images=1)
    seen: list[int] = []
    original = head.image_keys

    def counting(image_states):
        seen.append(image_states.shape[0])
        return original(image_states)

    head.image_keys = counting
    beams = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 3, "do_sample": False}
    with FastRMLogitsProcessor(llava64, head) as fastrm:
        out = llava64.generate(**inputs, **beams, logits_processor=[fastrm], return_dict_in_generate=True)
        shared = fastrm._tap.image_features
        prompt_ids = fastrm._tap.prompt_ids
    assert seen == [2]  # the 2 prompt rows, not the 6 beams
    assert prompt_ids.shape[0] == 6
    image_keys = shared.image_keys if question_aware else shared
    assert image_keys.shape[0] == 6
    # the keys of the unexpanded rows (a greedy call on the same prompts), each repeated as generate() repeats rows
    with FastRMLogitsProcessor(llava64, head) as fastrm:
        llava64.generate(**inputs, **GREEDY, logits_processor=[fastrm])
        single = fastrm._tap.image_features
    single_keys = single.image_keys if question_aware else single
    assert seen == [2, 2]
    torch.testing.assert_close(image_keys, single_keys.repeat_interleave(3, dim=0), rtol=1e-10, atol=1e-12)
    if question_aware:
        torch.testing.assert_close(shared.text_keys, single.text_keys.repeat_interleave(3, dim=0))
        assert torch.equal(shared.text_token_mask, single.text_token_mask.repeat_interleave(3, dim=0))
    assert out.sequences.shape[0] == 4
