"""Families whose images reach the decoder without a placeholder id the generic adapter reads: BLIP-2 kin (their own
generate() feeds embeddings), Kosmos-2 (a position mask), GIT (a prepended image). What the shared suite does not
reach: refusals, the after-generation route and the text index past GIT's image prefix."""

from __future__ import annotations

import pytest
import torch
from family_table import QFORMER, set_path, shrink
from test_families import built, generated

from hf_fastrm import FastRMLogitsProcessor
from hf_fastrm.architectures import RowImageLayout, get_adapter
from hf_fastrm.methods import get_method
from hf_fastrm.testing_utils import tiny_head
from hf_fastrm.text_tokens import text_token_index

T5 = {
    "text_config.d_model": 32,
    "text_config.d_ff": 37,
    "text_config.d_kv": 8,
    "text_config.num_layers": 2,
    "text_config.num_decoder_layers": 2,
    "text_config.num_heads": 4,
}


def test_flan_t5_language_model_is_refused_with_the_reason():
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.for_model("blip-2", text_config={"model_type": "t5"})
    shrink(config)
    for path, value in {**QFORMER, **T5, "image_token_index": 210}.items():
        if not path.startswith("text_config.") or path in T5:
            set_path(config, path, value)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    assert not model.config.use_decoder_only_language_model
    with pytest.raises(ValueError, match="encoder-decoder language model"):
        FastRMLogitsProcessor(model, tiny_head(model))


@pytest.mark.parametrize("model_type", ["blip-2", "instructblip"])
def test_checkpoint_without_the_placeholder_id_is_refused(model_type):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    assert config.image_token_index is None  # the default: checkpoints from before the 5.x processors
    input_ids = torch.tensor([[1, 5, 6, 7]])
    with pytest.raises(ValueError, match="sets no `image_token_index`"):
        get_adapter(config).image_layout(config, input_ids, {})


@pytest.mark.parametrize("name", ["git", "kosmos-2", "blip-2"])
def test_fastrm_after_generation_finds_the_same_states(name):
    """The after-generation route (one forward over the returned sequences) reads the same positions as the tap did
    inside generate(): GIT's tokens sit after its prepended image, Kosmos-2 decodes padded rows at its own positions,
    BLIP-2's forward writes the queries itself. Tolerance: cached decoding vs one full forward in float32."""
    model, inputs, head = built(name)
    _, out, _, _ = generated(name)
    after = get_method("fastrm", head=head).attribute(model, dict(inputs), out)
    torch.testing.assert_close(after.relevancy, out.relevancy, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_text_index_counts_the_prepended_image():
    """Text positions of a prompt behind a 17-token image prefix (GIT): the prefix and padding are no text."""
    layouts = [RowImageLayout(torch.arange(17)), RowImageLayout(torch.arange(17))]
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    index, keep = text_token_index(3, layouts, mask, prefix=17)
    assert index[0].tolist() == [17, 18, 19] and keep[0].all()
    assert index[1, :2].tolist() == [18, 19] and keep[1].tolist() == [True, True, False]


def test_prompt_as_embeddings_only_is_still_refused():
    """The embedded-prompt route needs the prompt's ids from generate(); embeddings alone cannot say where the image
    tokens are (LLaVA given `inputs_embeds` and no `input_ids`)."""
    from hf_fastrm import FastRMWrapper

    model, inputs, head = built("llava")
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match="needs `input_ids`"):
        FastRMWrapper(model, head).generate(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=2, return_relevancy=True
        )
