"""The generic placeholder-token adapter: fallback for unregistered types, honest 1-D layouts, the generated page."""

from __future__ import annotations

import functools

import pytest
import torch
from family_table import TABLE, build_entry
from transformers.testing_utils import CaptureLogger

from hf_fastrm import FastRMWrapper
from hf_fastrm import outputs as outputs_module
from hf_fastrm.architectures import PlaceholderAdapter, get_adapter, registry
from hf_fastrm.architectures import docs as docs_module
from hf_fastrm.testing_utils import tiny_head


@functools.cache
def ovis2():
    """A tiny Ovis2 (square grids by count) from the family table."""
    return build_entry(next(entry for entry in TABLE if entry.name == "ovis2"))


class FutureConfig:
    """A config of a model type no adapter is registered for, naming an image placeholder in its text config."""

    model_type = "future_vlm"

    def get_text_config(self):
        return type("Text", (), {"image_token_id": 7})()


def test_unregistered_type_with_placeholders_gets_the_generic_adapter_and_a_warning():
    with CaptureLogger(registry.logger) as captured:
        adapter = get_adapter(FutureConfig())
    assert isinstance(adapter, PlaceholderAdapter)
    assert "'future_vlm'" in captured.out and "generic placeholder-token adapter" in captured.out
    assert adapter.image_token_id(FutureConfig()) == 7


def test_generic_adapter_on_an_unregistered_model_type_generates_identical_tokens():
    """Ovis2's tiny model under a model type nobody registered: same tokens as plain generate, and per row the
    relevancy covers exactly the row's image placeholder tokens, with values in [0, 1]."""
    model, inputs, _ = ovis2()
    original = model.config.model_type
    model.config.model_type = "future_vlm"
    try:
        assert type(get_adapter(model)) is PlaceholderAdapter
        with torch.no_grad():
            plain = model.generate(**inputs, do_sample=False, max_new_tokens=3)
        out = FastRMWrapper(model, tiny_head(model)).generate(
            **inputs, do_sample=False, max_new_tokens=3, return_relevancy=True
        )
    finally:
        model.config.model_type = original
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    image_id = model.config.image_token_id
    for row, layout in enumerate(out.image_layouts):
        assert layout.num_image_tokens == int((inputs["input_ids"][row] == image_id).sum())
        values = out.relevancy[row, :, : layout.num_image_tokens]
        assert bool(((values >= 0) & (values <= 1)).all())


def test_one_dimensional_layout_and_the_warning_in_relevancy_maps():
    """Without a patch grid (resampled latents) each image is one 1-D grid; relevancy_maps() says so and returns
    the maps in prompt order."""
    model, inputs, _ = ovis2()
    adapter = PlaceholderAdapter(("ovis2",), patch_grids=False)
    layouts = adapter.image_layout(model.config, inputs["input_ids"], dict(inputs))
    assert [[grid.dim() for grid in layout.image_grids] for layout in layouts] == [[1], [1, 1]]
    out = FastRMWrapper(model, tiny_head(model)).generate(
        **inputs, do_sample=False, max_new_tokens=2, return_relevancy=True
    )
    out.image_layouts = layouts
    outputs_module.logger.warning_once.cache_clear()
    with CaptureLogger(outputs_module.logger) as captured:
        maps = out.relevancy_maps()
    assert "No 2-D patch grid is known" in captured.out
    for row, layout in enumerate(layouts):
        joined = torch.cat(maps[row], dim=1)
        torch.testing.assert_close(joined, out.relevancy[row, :, : layout.num_image_tokens], equal_nan=True)


def test_image_sizes_that_do_not_add_up_are_not_taken_for_a_grid():
    """`image_sizes` means pixels / (patch * merge) only when those products are the image tokens; else the count
    rules apply (here: a square count confirmed by the vision config)."""
    model, inputs, expected = ovis2()
    adapter = PlaceholderAdapter(("ovis2",))
    kwargs = dict(inputs) | {"image_sizes": torch.tensor([[999, 999]] * 3)}
    layouts = adapter.image_layout(model.config, inputs["input_ids"], kwargs)
    got = [
        [(label, tuple(g.shape)) for label, g in zip(lay.grid_labels, lay.image_grids, strict=True)] for lay in layouts
    ]
    assert got == expected


def test_a_model_type_the_mapping_gains_shows_up_as_untested(monkeypatch):
    mapping = docs_module._mapping()
    monkeypatch.setattr(
        docs_module, "_mapping", lambda: {**mapping, "future_vlm": "FutureVlmForConditionalGeneration"}
    )
    page = docs_module.render()
    row = next(line for line in page.splitlines() if line.startswith("| `future_vlm` |"))
    assert "| untested |" in row
    for model_type in mapping:
        assert f"| `{model_type}` |" in page, f"{model_type} has no row"


def test_no_placeholder_ids_still_gets_the_error():
    class Config:
        model_type = "some_encoder_decoder"

    with pytest.raises(ValueError, match="is not supported"):
        get_adapter(Config())
