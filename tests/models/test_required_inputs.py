"""Image tokens without the processor outputs they need are refused by name (Qwen-VL: pixels and grids)."""

from __future__ import annotations

import pytest
from family_builders import qwen_case

from hf_fastrm import FastRMLogitsProcessor
from hf_fastrm.testing_utils import tiny_head


@pytest.fixture(scope="module")
def qwen():
    model, inputs = qwen_case("qwen2_vl").build()
    return model, inputs, tiny_head(model)


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        (("image_grid_thw",), "got `pixel_values` but no `image_grid_thw`"),
        (("pixel_values",), "got no `pixel_values`:"),
        (("pixel_values", "image_grid_thw"), "got no `pixel_values`:"),
    ],
)
def test_missing_qwen_inputs_are_named(qwen, dropped, named):
    model, inputs, head = qwen
    partial = {key: value for key, value in inputs.items() if key not in dropped}
    with pytest.raises(ValueError, match=named), FastRMLogitsProcessor(model, head, check_base_model=False) as fastrm:
        model.generate(**partial, max_new_tokens=2, do_sample=False, logits_processor=[fastrm])
    # the complete inputs still work on the same model afterwards
    with FastRMLogitsProcessor(model, head, check_base_model=False) as fastrm:
        model.generate(**inputs, max_new_tokens=2, do_sample=False, logits_processor=[fastrm])
    assert fastrm.result.relevancy.shape[:2] == (inputs["input_ids"].shape[0], 2)
