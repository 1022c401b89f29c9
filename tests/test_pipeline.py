"""The "fastrm-image-text-to-text" pipeline on the shipped toy model: the stock text plus relevancy and confidence."""

import pytest
import torch
from transformers import pipeline

import hf_fastrm.pipeline  # noqa: F401  (registers the task)
from hf_fastrm import FastRMWrapper
from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
from hf_fastrm.toy.modeling import format_prompt
from hf_fastrm.toy.scenes import make_examples

GREEDY = {"max_new_tokens": 4, "generate_kwargs": {"do_sample": False}}


@pytest.fixture(scope="module")
def toy():
    return load_default_model(), load_default_processor(), load_default_head()


@pytest.fixture(scope="module")
def examples():
    return make_examples(3, seed="pipeline")


def chat(scene, question):
    return [{"role": "user", "content": [{"type": "image", "image": scene.image}, {"type": "text", "text": question}]}]


def test_outputs_carry_the_wrappers_maps_and_the_stock_text(toy, examples):
    model, processor, head = toy
    wrapper = FastRMWrapper(model, head)
    scene, question = examples[0]
    prompt = format_prompt(question.text)
    stock = pipeline("image-text-to-text", model=model, processor=processor)(images=scene.image, text=prompt, **GREEDY)
    pipe = pipeline("fastrm-image-text-to-text", model=wrapper, processor=processor)
    [out] = pipe(images=scene.image, text=prompt, **GREEDY)
    assert out["generated_text"] == stock[0]["generated_text"]

    inputs = processor(images=scene.image, text=prompt, return_tensors="pt")
    direct = wrapper.generate(**inputs, max_new_tokens=4, do_sample=False, return_relevancy=True)
    num_tokens = int(direct.token_mask[0].sum())
    new_ids = direct.sequences[0, inputs["input_ids"].shape[1] :][:num_tokens]
    assert out["generated_tokens"] == processor.tokenizer.convert_ids_to_tokens(new_ids.tolist())
    assert out["relevancy"].shape == (num_tokens, int(direct.image_token_mask[0].sum()))
    # the same inputs through the same code in one process: equal up to float32 rounding
    torch.testing.assert_close(out["relevancy"], direct.relevancy[0, :num_tokens][:, direct.image_token_mask[0]])
    torch.testing.assert_close(out["confidence"], direct.confidence[0, :num_tokens])
    assert out["sequence_confidence"] == pytest.approx(float(direct.sequence_confidence[0]), rel=1e-6)
    [grid] = out["relevancy_maps"]
    assert grid.shape == (num_tokens, 6, 6)
    assert torch.equal(grid.flatten(1), out["relevancy"])  # one 6x6 image, every token in the grid


def test_bare_model_with_head_batched_chats_and_opt_out(toy, examples):
    model, processor, head = toy
    chats = [chat(scene, question.text) for scene, question in examples]
    stock = pipeline("image-text-to-text", model=model, processor=processor, batch_size=2)(text=chats, **GREEDY)
    pipe = pipeline("fastrm-image-text-to-text", model=model, head=head, processor=processor, batch_size=2)
    assert isinstance(pipe.model, FastRMWrapper) and pipe.model.head is head
    outs = pipe(text=chats, **GREEDY)
    assert [o[0]["generated_text"] for o in outs] == [s[0]["generated_text"] for s in stock]
    for [out] in outs:
        num_tokens = len(out["generated_tokens"])
        assert out["relevancy"].shape == (num_tokens, 36) and out["confidence"].shape == (num_tokens,)
        assert 0.0 <= out["sequence_confidence"] <= 1.0
        assert ((out["relevancy"] >= 0) & (out["relevancy"] <= 1)).all()
    plain = pipe(text=chats[0], return_relevancy=False, **GREEDY)
    assert plain[0]["generated_text"] == stock[0][0]["generated_text"] and "relevancy" not in plain[0]


def test_stock_pipeline_with_the_wrapper_generates_as_the_model_and_names_the_route(toy, examples):
    model, processor, head = toy
    scene, question = examples[1]
    prompt = format_prompt(question.text)
    stock = pipeline("image-text-to-text", model=model, processor=processor)(images=scene.image, text=prompt, **GREEDY)
    wrapped = pipeline("image-text-to-text", model=FastRMWrapper(model, head), processor=processor)
    assert wrapped(images=scene.image, text=prompt, **GREEDY) == stock
    with pytest.raises(ValueError, match="fastrm-image-text-to-text"):
        wrapped(images=scene.image, text=prompt, max_new_tokens=4, generate_kwargs={"return_relevancy": True})
