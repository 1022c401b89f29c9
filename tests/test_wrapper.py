"""FastRMWrapper as transformers users hold a wrapped model: an nn.Module, PeftModel-style pass-through."""

import copy

import pytest
import torch
from torch import nn

from hf_fastrm import FastRMHead, FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.teacher import gradient_relevancy, gradient_relevancy_for_outputs
from hf_fastrm.testing_utils import tiny_head, tiny_llava, tiny_llava_inputs

GREEDY = {"do_sample": False, "max_new_tokens": 4}


@pytest.fixture()
def wrapper():
    """A fresh model and head (these tests change modes, dtypes and flags)."""
    model = tiny_llava(seed=0)
    return FastRMWrapper(model, tiny_head(model))


def test_wrapper_is_a_module_holding_model_and_head(wrapper):
    assert isinstance(wrapper, nn.Module)
    assert dict(wrapper.named_children()) == {"model": wrapper.model, "head": wrapper.head}
    assert wrapper.config is wrapper.model.config
    assert wrapper.generation_config is wrapper.model.generation_config
    assert wrapper.device == wrapper.model.device and wrapper.dtype == torch.float32
    # state_dict: the base model's keys under "model.", the head's under "head."
    keys = wrapper.state_dict().keys()
    assert set(keys) == {f"model.{k}" for k in wrapper.model.state_dict()} | {
        f"head.{k}" for k in wrapper.head.state_dict()
    }
    other = FastRMWrapper(tiny_llava(seed=1), tiny_head(wrapper.model, seed=1))
    assert not torch.equal(other.head.key.weight, wrapper.head.key.weight)
    other.load_state_dict(wrapper.state_dict())
    assert torch.equal(other.head.key.weight, wrapper.head.key.weight)
    assert torch.equal(other.model.lm_head.weight, wrapper.model.lm_head.weight)


def test_mode_dtype_and_grad_methods_return_the_wrapper_and_reach_the_head(wrapper):
    assert wrapper.train() is wrapper and wrapper.model.training and wrapper.head.training
    assert wrapper.eval() is wrapper and not wrapper.model.training and not wrapper.head.training
    assert wrapper.half() is wrapper
    assert wrapper.model.dtype == torch.float16 and wrapper.head.key.weight.dtype == torch.float16
    assert wrapper.double() is wrapper and wrapper.head.norm.weight.dtype == torch.float64
    assert wrapper.to(torch.float32) is wrapper and wrapper.dtype == torch.float32
    assert wrapper.head.query.weight.dtype == torch.float32
    assert wrapper.float() is wrapper and wrapper.cpu() is wrapper and wrapper.to("cpu") is wrapper
    assert wrapper.requires_grad_(False) is wrapper
    assert not any(p.requires_grad for p in wrapper.model.parameters())
    assert not any(p.requires_grad for p in wrapper.head.parameters())


def test_chained_eval_keeps_fastrm(wrapper):
    # the issue: FastRMWrapper(m, h).eval() returned the bare model, which has no return_relevancy
    model = FastRMWrapper(wrapper.model, wrapper.head).eval()
    inputs = tiny_llava_inputs(model.model)
    out = model.generate(**inputs, **GREEDY, return_relevancy=True)
    assert out.relevancy.shape == (1, 4, 16)
    assert torch.equal(out.sequences, wrapper.model.generate(**inputs, **GREEDY))


def test_attribute_assignment_reaches_the_base_model(wrapper):
    config = copy.deepcopy(wrapper.generation_config)
    config.max_new_tokens = 3
    wrapper.generation_config = config
    assert wrapper.model.generation_config is config
    inputs = tiny_llava_inputs(wrapper.model)
    assert wrapper.generate(**inputs, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3
    wrapper.head = None
    assert "head" not in dict(wrapper.named_children()) and wrapper.head is None
    # methods are the wrapper's own: replacing `forward` (as accelerate's hooks do) must not reach the base model
    wrapper.forward = lambda *args, **kwargs: "patched"
    assert wrapper(**inputs) == "patched" and wrapper.model.forward is not wrapper.forward


def test_deepcopy_gives_an_independent_wrapper(wrapper):
    twin = copy.deepcopy(wrapper)
    assert isinstance(twin, FastRMWrapper) and twin.model is not wrapper.model and twin.head is not wrapper.head
    assert torch.equal(twin.head.key.weight, wrapper.head.key.weight)
    inputs = tiny_llava_inputs(wrapper.model)
    assert torch.equal(twin.generate(**inputs, **GREEDY), wrapper.generate(**inputs, **GREEDY))


def test_half_precision_wrapper_generates_with_relevancy(wrapper):
    # the head follows the model to float16; on CPU torch runs float16 LayerNorm and matmul
    inputs = tiny_llava_inputs(wrapper.model)
    wrapper.half()
    inputs["pixel_values"] = inputs["pixel_values"].half()
    out = wrapper.generate(**inputs, **GREEDY, return_relevancy=True)
    assert torch.equal(out.sequences, wrapper.model.generate(**inputs, **GREEDY))
    assert torch.isfinite(out.relevancy).all()


def test_save_pretrained_writes_model_and_head_and_from_pretrained_reads_both(tmp_path, wrapper):
    from transformers import AutoModelForImageTextToText

    original_name = wrapper.head.config.base_model_name_or_path
    wrapper.head.config.base_model_name_or_path = "org/original-model"  # the saved copy has another name
    wrapper.save_pretrained(tmp_path / "saved")
    wrapper.head.config.base_model_name_or_path = original_name
    assert (tmp_path / "saved" / "config.json").exists() and (tmp_path / "saved" / "model.safetensors").exists()
    assert (tmp_path / "saved" / "fastrm_head" / "fastrm_head.safetensors").exists()
    base = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved")  # a plain transformers folder
    assert torch.equal(base.lm_head.weight, wrapper.model.lm_head.weight)
    loaded = FastRMWrapper.from_pretrained(str(tmp_path / "saved"))  # saved together: the name is not checked
    assert isinstance(loaded.head, FastRMHead)
    assert torch.equal(loaded.head.key.weight, wrapper.head.key.weight)  # safetensors: bit for bit
    inputs = tiny_llava_inputs(wrapper.model)
    first = wrapper.generate(**inputs, **GREEDY, return_relevancy=True)
    again = loaded.generate(**inputs, **GREEDY, return_relevancy=True)
    assert torch.equal(first.sequences, again.sequences)
    # same weights, same process and threads: only reduction order could differ, far below 1e-6
    torch.testing.assert_close(first.relevancy, again.relevancy, rtol=1e-6, atol=1e-6, equal_nan=True)

    wrapper.save_pretrained(tmp_path / "model_only", save_head=False)
    assert not (tmp_path / "model_only" / "fastrm_head").exists()
    assert FastRMWrapper.from_pretrained(str(tmp_path / "model_only")).head is None


def test_teacher_accepts_the_wrapper(llava, head):
    wrapper = FastRMWrapper(llava, head)
    inputs = tiny_llava_inputs(llava)
    outputs = llava.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    direct = gradient_relevancy(llava, inputs, outputs.sequences).result
    wrapped = gradient_relevancy(wrapper, inputs, outputs.sequences).result
    # the same model, inputs and code path in one process
    torch.testing.assert_close(wrapped.relevancy, direct.relevancy, rtol=1e-6, atol=1e-7, equal_nan=True)
    for_outputs = gradient_relevancy_for_outputs(wrapper, outputs, inputs)
    torch.testing.assert_close(for_outputs.relevancy, direct.relevancy, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_processor_accepts_the_wrapper_and_its_head(llava, head):
    wrapper = FastRMWrapper(llava, head)
    inputs = tiny_llava_inputs(llava)
    with FastRMLogitsProcessor(wrapper) as fastrm:
        assert fastrm.model is llava and fastrm.head is head
        out = wrapper.generate(**inputs, **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True)
        result = fastrm.result_for(out)
    expected = wrapper.generate(**inputs, **GREEDY, return_relevancy=True)
    torch.testing.assert_close(result.relevancy, expected.relevancy, equal_nan=True)


def test_relevancy_with_return_dict_false_is_refused_naming_the_pipeline_task(llava, head):
    inputs = tiny_llava_inputs(llava)
    with pytest.raises(ValueError, match="return_dict_in_generate=False.*fastrm-image-text-to-text"):
        FastRMWrapper(llava, head).generate(**inputs, **GREEDY, return_relevancy=True, return_dict_in_generate=False)


def test_wrong_arguments_are_refused(llava):
    with pytest.raises(TypeError, match="FastRMHead"):
        FastRMWrapper(llava, head="not a head")
    with pytest.raises(TypeError, match="nn.Module"):
        FastRMWrapper("llava-hf/llava-1.5-7b-hf")
