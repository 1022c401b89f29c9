"""Refusals of the multi-view families (coverage helper "ocr"): missing processor outputs are named, not guessed."""

from __future__ import annotations

import pytest
from test_families import built

from hf_fastrm import FastRMLogitsProcessor
from hf_fastrm.architectures import get_adapter


def test_molmo2_without_its_image_outputs_is_refused_by_name():
    model, inputs, head = built("molmo2")
    dropped = ("pixel_values", "image_token_pooling", "image_grids", "image_num_crops")
    partial = {key: value for key, value in inputs.items() if key not in dropped}
    named = "got no `pixel_values`, `image_token_pooling`, `image_grids`"
    with pytest.raises(ValueError, match=named), FastRMLogitsProcessor(model, head) as fastrm:
        model.generate(**partial, max_new_tokens=2, do_sample=False, logits_processor=[fastrm])
    with FastRMLogitsProcessor(model, head) as fastrm:  # the complete inputs still work afterwards
        model.generate(**inputs, max_new_tokens=2, do_sample=False, logits_processor=[fastrm])
    assert fastrm.result.relevancy.shape[:2] == (inputs["input_ids"].shape[0], 2)


@pytest.mark.parametrize(
    ("name", "dropped"), [("unlimited_ocr", "patches_grid"), ("unlimited_ocr", "num_local_patches")]
)
def test_local_crops_without_their_counts_are_refused_by_name(name, dropped):
    model, inputs, _ = built(name)
    partial = {key: value for key, value in inputs.items() if key != dropped}
    with pytest.raises(ValueError, match=f"`{dropped}`"):
        get_adapter(model).image_layout(model.config, inputs["input_ids"], partial)
