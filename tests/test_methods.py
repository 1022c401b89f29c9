"""Relevancy methods behind one interface: every registered method in generate(), the registry, a user's method,
and each built-in method against an independent computation."""

import pytest
import torch
from transformers import PretrainedConfig

from hf_fastrm import FastRMWrapper
from hf_fastrm.methods import RelevancyMethod, available_methods, get_method, register_method, unregister_method
from hf_fastrm.methods.forward import forced_sequence
from hf_fastrm.teacher import gradient_relevancy
from hf_fastrm.testing_utils import tiny_llava_inputs

BUILT_IN = ["attention", "fastrm", "gradient", "lvlm-interpret", "rollout"]
GREEDY = {"do_sample": False, "max_new_tokens": 4}
# transformers' eager attention takes the softmax in float32 even for float64 models (the methods stay in float64)
EAGER_RTOL = 1e-6


def _implementations(model):
    configs = {
        id(m.config): m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)
    }
    return sorted(str(c.__dict__.get("_attn_implementation_internal")) for c in configs.values())


@pytest.fixture(scope="module")
def generated(llava64):
    inputs = tiny_llava_inputs(llava64, batch_size=2, text_lengths=[4, 9])
    return inputs, llava64.generate(**inputs, **GREEDY)


def test_built_in_methods_are_registered():
    assert set(BUILT_IN) <= set(available_methods())


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_in_generate_keeps_tokens_and_the_one_mask_rule(llava64, head64, generated, name):
    inputs, plain = generated
    before = _implementations(llava64)
    out = FastRMWrapper(llava64, head64).generate(**inputs, **GREEDY, return_relevancy=name)
    assert torch.equal(out.sequences, plain)
    assert out.method == name
    assert out.relevancy.shape == (2, 4, 16)
    assert _implementations(llava64) == before, "attention settings restored"
    reference = get_method("fastrm", head=head64).attribute(llava64, inputs, plain)
    for field in ("token_mask", "special_token_mask", "image_token_mask"):
        assert torch.equal(getattr(out, field), getattr(reference, field))
    valid = out.token_mask.unsqueeze(-1) & out.image_token_mask.unsqueeze(1)
    assert (out.relevancy[valid] >= 0).all() and torch.isnan(out.relevancy[~valid]).all()


def test_fastrm_after_generation_equals_fastrm_inside_generate(llava64, head64, generated):
    inputs, _ = generated
    inside = FastRMWrapper(llava64, head64).generate(**inputs, **GREEDY, return_relevancy="fastrm")
    after = get_method("fastrm", head=head64).attribute(llava64, inputs, inside.sequences)
    # float64: cached decoding and one full forward differ by ~1e-15
    torch.testing.assert_close(after.relevancy, inside.relevancy, rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.fixture(scope="module")
def unpadded(llava64):
    """transformers' eager attention turns fully masked (padding) rows into NaN in float64 models."""
    inputs = tiny_llava_inputs(llava64, batch_size=2, num_images=[1, 2], text_lengths=[19, 3])
    assert inputs["attention_mask"].all()
    return inputs, llava64.generate(**inputs, **GREEDY)


def _eager_attention(model, inputs, sequences):
    """Head-mean attention of every language-model layer from transformers' own eager attention."""
    forced = forced_sequence(model, inputs, sequences)
    text_config = model.config.get_text_config()
    saved = text_config._attn_implementation_internal
    try:
        text_config._attn_implementation_internal = "eager"
        with torch.no_grad():
            out = model(
                input_ids=forced.input_ids,
                attention_mask=forced.attention_mask,
                output_attentions=True,
                **forced.forward_kwargs,
            )
    finally:
        text_config._attn_implementation_internal = saved
    return forced, [layer.mean(dim=1) for layer in out.attentions]


def test_attention_is_the_last_layers_head_mean_at_the_image_tokens(llava64, unpadded):
    inputs, sequences = unpadded
    forced, attentions = _eager_attention(llava64, inputs, sequences)
    result = get_method("attention").attribute(llava64, inputs, sequences)
    rows = attentions[-1][:, forced.chosen_positions]
    for row, layout in enumerate(result.image_layouts):
        expected = rows[row][:, layout.image_positions]
        n = layout.num_image_tokens
        torch.testing.assert_close(result.relevancy[row, :, :n], expected, rtol=EAGER_RTOL, atol=1e-9)


def test_rollout_is_the_product_of_half_attention_half_identity(llava64, unpadded):
    inputs, sequences = unpadded
    forced, attentions = _eager_attention(llava64, inputs, sequences)
    result = get_method("rollout").attribute(llava64, inputs, sequences)
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    for row, layout in enumerate(result.image_layouts):
        product = eye
        for attention in attentions:  # first layer rightmost
            product = (0.5 * attention[row] + 0.5 * eye) @ product
        expected = product[forced.chosen_positions][:, layout.image_positions]
        torch.testing.assert_close(
            result.relevancy[row, :, : layout.num_image_tokens], expected, rtol=EAGER_RTOL, atol=1e-9
        )


def test_lvlm_interpret_equals_the_normalised_teacher_for_the_first_token_only(llava64, generated):
    inputs, sequences = generated
    teacher = gradient_relevancy(llava64, inputs, sequences, return_text_relevancy=True)
    lvlm = get_method("lvlm-interpret").attribute(llava64, inputs, sequences)
    # the residual normalisation divides row p of R - I by its sum over every position
    row_sum = teacher.text_relevancy.nansum(-1) + teacher.result.relevancy.nansum(-1) - 1
    normalised = teacher.result.relevancy / row_sum.unsqueeze(-1)
    torch.testing.assert_close(lvlm.relevancy[:, 0], normalised[:, 0], rtol=1e-9, atol=1e-12, equal_nan=True)
    later = (lvlm.relevancy[:, 1:] - normalised[:, 1:]).abs().nan_to_num()
    assert later.max() > 1e-9, "later tokens reuse earlier rows, so they differ from the teacher"


def test_lvlm_interpret_differentiates_the_processed_score(llava64, generated):
    inputs, sequences = generated
    raw = get_method("lvlm-interpret").attribute(llava64, inputs, sequences)
    hot = get_method("lvlm-interpret").attribute(llava64, {**inputs, "do_sample": True, "temperature": 0.5}, sequences)
    assert not torch.allclose(raw.relevancy.nan_to_num(), hot.relevancy.nan_to_num(), rtol=1e-6, atol=0)


def test_registry_refuses_duplicates_and_unknown_names():
    class Another(RelevancyMethod):
        name = "rollout"

        def attribute(self, model, inputs, outputs_or_sequences, **options):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_method(Another)
    with pytest.raises(ValueError, match="registered: attention"):
        get_method("no-such-method")
    with pytest.raises(TypeError, match="RelevancyMethod subclass"):
        register_method(object)
    with pytest.raises(ValueError, match="needs a head"):
        get_method("fastrm")


def test_a_user_registered_method_runs_in_generate_with_the_shared_masks(llava64, head64, generated):
    @register_method
    class Uniform(RelevancyMethod):
        name = "test-uniform"

        def attribute(self, model, inputs, outputs_or_sequences, **options):
            forced = forced_sequence(model, inputs, outputs_or_sequences.sequences)
            rows = torch.ones(forced.input_ids.shape[0], forced.steps, forced.input_ids.shape[1], dtype=torch.float64)
            return forced.result(rows, self.name)

    try:
        inputs, plain = generated
        out = FastRMWrapper(llava64, head64).generate(**inputs, **GREEDY, return_relevancy="test-uniform")
        assert torch.equal(out.sequences, plain) and out.method == "test-uniform"
        torch.testing.assert_close(out.confidence[out.token_mask], torch.zeros_like(out.confidence[out.token_mask]))
    finally:
        unregister_method("test-uniform")
    assert "test-uniform" not in available_methods()


@pytest.mark.parametrize("name", ["fastrm", "gradient", "attention", "rollout", "lvlm-interpret"])
def test_every_method_explains_a_wrapper_as_its_base_model(llava64, head64, generated, name):
    inputs, sequences = generated
    init = {"head": head64} if name == "fastrm" else {}
    on_base = get_method(name, **init).attribute(llava64, inputs, sequences)
    on_wrapper = get_method(name, **init).attribute(FastRMWrapper(llava64, head64), inputs, sequences)
    # the same computation in one process on the same model: equal up to float64 rounding
    torch.testing.assert_close(on_wrapper.relevancy, on_base.relevancy, rtol=1e-9, atol=1e-12, equal_nan=True)
