"""BLIP-2 family refusals the shared suite does not reach: an encoder-decoder (Flan-T5) language model, and a
checkpoint without the query placeholder id."""

from __future__ import annotations

import pytest
import torch
from family_table import QFORMER, set_path, shrink

from hf_fastrm import FastRMLogitsProcessor
from hf_fastrm.architectures import get_adapter
from hf_fastrm.testing_utils import tiny_head

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
