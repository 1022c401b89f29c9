"""One result assembly: the rule for token masks, special tokens and confidence, shared by every method."""

import math

import torch

from hf_fastrm import FastRMWrapper
from hf_fastrm.confidence import sequence_confidence
from hf_fastrm.results import special_token_ids, token_masks
from hf_fastrm.teacher import gradient_relevancy_for_outputs
from hf_fastrm.testing_utils import tiny_llava_inputs
from hf_fastrm.viz import ExplanationReport

EOS, PAD = 7, 0


def test_tokens_after_the_first_eos_are_masked_and_eos_pad_bos_are_special():
    new_tokens = torch.tensor([[5, EOS, 9, 9], [EOS, EOS, 3, 4], [5, 6, PAD, 8]])
    token_mask, special = token_masks(new_tokens, eos_ids=[EOS], special_ids=[EOS, PAD])
    assert token_mask.tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]
    assert special.tolist() == [[False, True, False, False], [True, False, False, False], [False, False, True, False]]


def test_tokens_a_processor_never_saw_count_as_generated_and_finished_beams_do_not():
    new_tokens = torch.tensor([[5, 6]])  # three steps, the last token unseen
    generated = torch.tensor([[True, True, True]])
    token_mask, special = token_masks(new_tokens, [EOS], [EOS], generated)
    assert token_mask.tolist() == [[True, True, True]] and not special.any()
    token_mask, _ = token_masks(new_tokens, [EOS], [EOS], torch.tensor([[True, False, False]]))
    assert token_mask.tolist() == [[True, False, False]]


def test_special_ids_are_the_calls_eos_plus_the_generation_configs_eos_pad_bos(llava):
    config = llava.generation_config
    default = special_token_ids(llava)
    assert set(default) >= {config.eos_token_id} and 123 not in default
    assert set(special_token_ids(llava, eos_token_id=123)) == set(default) | {123}
    assert special_token_ids(llava, eos_token_id=123, special_token_ids=[4]) == [4]


class _Tokenizer:
    all_special_ids = ()  # the report must not fall back to this: the result carries the rule

    def decode(self, ids, **kwargs):
        return " ".join(str(int(i)) for i in ids)


def test_head_teacher_and_report_agree_on_masks_with_a_call_time_eos(llava64, head64):
    inputs = tiny_llava_inputs(llava64, batch_size=2, text_lengths=[4, 9])
    plain = llava64.generate(**inputs, do_sample=False, max_new_tokens=6)
    prompt_length = inputs["input_ids"].shape[1]
    call_eos = int(plain[0, prompt_length + 2])  # row 0 ends at its third token under this override
    assert call_eos != llava64.generation_config.eos_token_id
    call = {**inputs, "do_sample": False, "max_new_tokens": 6, "eos_token_id": call_eos}
    head_out = FastRMWrapper(llava64, head64).generate(**call, return_relevancy=True)
    teacher = gradient_relevancy_for_outputs(llava64, head_out, call)

    assert head_out.token_mask[0].tolist()[:4] == [True, True, True, False]
    assert head_out.special_token_mask[0, 2], "the call's eos is a special token"
    for field in ("token_mask", "special_token_mask", "image_token_mask"):
        assert torch.equal(getattr(head_out, field), getattr(teacher, field)), field
    for result in (head_out, teacher):
        counted = result.token_mask & ~result.special_token_mask
        torch.testing.assert_close(result.sequence_confidence, sequence_confidence(result.confidence, counted))
        assert torch.isnan(result.relevancy[~result.token_mask]).all()
        assert torch.isnan(result.confidence[~result.token_mask]).all()

    report = ExplanationReport.from_outputs(
        head_out, _Tokenizer(), prompt="q", prompt_length=prompt_length, teacher=teacher
    )
    assert report.special == head_out.special_token_mask[0, :3].tolist() == [False, False, True]
    assert math.isclose(report.sequence_confidence, float(head_out.sequence_confidence[0]))
