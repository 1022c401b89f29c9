"""VideoLLaMA 3's grids with the merge sizes its processors pass per item and with video token compression.

The table case runs images at the image processor's default merge size 1. Its video processor merges 2 x 2 and
drops unchanged patches (``video_compression_mask``), and a caller may ask the image processor for merge 2: the
grids must then follow ``image_merge_sizes`` / ``video_merge_sizes`` (the vision config has no merge size) and leave
the dropped cells empty, and every cell must still look at its part of the image (the locality probe's method).
"""

from __future__ import annotations

import functools

import pytest
import torch
from family_table import video_llama_3_pixels
from test_families import built, hook_state
from test_family_locality import check_axis, decoder_inputs, token_pixel_weights, vision_attention_silenced
from test_modes import check_result

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.architectures import VideoLlama3Adapter, get_adapter

IMAGE, VIDEO = 200, 201  # the tiny table config's placeholder ids


def image_inputs_merged_2(inputs: dict) -> dict:
    """The table case's three images (1x4x4, 1x4x6, 1x6x4 patches) at merge size 2: 4, 6 and 6 tokens."""
    ids = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 1, 19, 6] + [IMAGE] * 4 + [175, 38, 145],
            [1] + [IMAGE] * 6 + [169, 133] + [IMAGE] * 6 + [179],
        ]
    )
    return dict(inputs, input_ids=ids, attention_mask=(ids != 0).long(), image_merge_sizes=torch.tensor([2, 2, 2]))


def video_inputs(compressed: bool = True) -> dict:
    """One 2-frame video of 4x4 patches at merge 2 (8 features), 3 dropped by the compression mask (none when not
    `compressed`: an all-True mask); the prompt writes each frame's kept tokens after a timestamp, as VideoLLaMA 3's
    processor does."""
    pixels = torch.randn(32, 3 * 16 * 16, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 1] if compressed else [1] * 8, dtype=torch.bool)
    ids = torch.tensor([[1, 19] + [VIDEO] * 4 + [30, 31] + [VIDEO] * int(mask[4:].sum()) + [175, 38]])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([[2, 4, 4]]),
        "video_merge_sizes": torch.tensor([2]),
        "video_compression_mask": mask,
    }


def two_video_batch() -> dict:
    """A left-padded batch of two uncompressed videos (all-True compression masks): row 0 the 2x4x4 video of
    [`video_inputs`] (8 tokens), row 1 a 1x4x4 one (4 tokens), both at merge 2."""
    first = video_inputs(compressed=False)
    pixels = torch.randn(16, 3 * 16 * 16, generator=torch.Generator().manual_seed(1))
    second = [0] * 5 + [1, 19, 30] + [VIDEO] * 4 + [175, 38]
    ids = torch.cat([first["input_ids"], torch.tensor([second])])
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "pixel_values_videos": torch.cat([first["pixel_values_videos"], pixels]),
        "video_grid_thw": torch.tensor([[2, 4, 4], [1, 4, 4]]),
        "video_merge_sizes": torch.tensor([2, 2]),
        "video_compression_mask": torch.ones(12, dtype=torch.bool),
    }


VIDEO_PROMPTS = {
    "compressed": video_inputs,
    "uncompressed": functools.partial(video_inputs, compressed=False),
    "uncompressed-batch2": two_video_batch,
}


def receptive_fields(model, inputs: dict, key: str, layouts) -> list[torch.Tensor]:
    """Per row, `(image_tokens, 3)`: each token's dominant sub-image and pixel centroid with the vision attention
    silenced (tests/models/test_family_locality.py's method, on inputs the table does not build)."""
    language_model = get_adapter(model).language_model(model)
    pixels = inputs[key].detach().clone().requires_grad_(True)
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = decoder_inputs(args, kwargs)

    handle = language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with vision_attention_silenced(model, language_model), torch.enable_grad():
            model(**{**inputs, key: pixels})
    finally:
        handle.remove()
    coords = video_llama_3_pixels(key, pixels, inputs).float()
    subs = coords[:, 0].long()
    fields = []
    for row, layout in enumerate(layouts):
        weights = token_pixel_weights(captured["embeds"], row, layout.image_positions, [pixels], direction=None)
        mass = torch.zeros(weights.shape[0], int(subs.max()) + 1).index_add_(1, subs, weights)
        keep = (subs.unsqueeze(0) == mass.argmax(dim=1).unsqueeze(1)) & (weights > 0)
        kept = weights * keep
        centroid = kept @ coords[:, 1:] / kept.sum(dim=1, keepdim=True)
        fields.append(torch.cat([mass.argmax(dim=1).float().unsqueeze(1), centroid], dim=1))
    return fields


def check_locality(model, inputs: dict, key: str, layouts) -> None:
    for row, (layout, fields) in enumerate(zip(layouts, receptive_fields(model, inputs, key, layouts), strict=True)):
        for label, grid in zip(layout.grid_labels, layout.image_grids, strict=True):
            for axis in range(-grid.ndim, 0):
                if grid.shape[axis] > 1:
                    check_axis(fields, grid, axis, f"video_llama_3 row {row} {label}")


def test_image_merge_sizes_2():
    model, inputs, _ = built("video_llama_3")
    inputs = image_inputs_merged_2(inputs)
    adapter = get_adapter(model)
    assert isinstance(adapter, VideoLlama3Adapter)
    layouts = adapter.image_layout(model.config, inputs["input_ids"], inputs)
    assert [[tuple(grid.shape) for grid in layout.image_grids] for layout in layouts] == [[(2, 2)], [(2, 3), (3, 2)]]
    for layout in layouts:  # every image token in exactly one cell, cells in prompt order
        cells = torch.cat([grid.flatten() for grid in layout.image_grids])
        assert torch.equal(cells, torch.arange(layout.image_positions.numel()))
    check_locality(model, inputs, "pixel_values", layouts)


def test_video_merge_and_compression():
    model, _, _ = built("video_llama_3")
    inputs = video_inputs()
    with torch.no_grad():  # the model itself takes this prompt (its feature count check passes)
        model(**inputs)
    (layout,) = get_adapter(model).image_layout(model.config, inputs["input_ids"], inputs)
    (grid,) = layout.image_grids
    assert layout.grid_labels == ["video 0"]
    assert grid.shape == (2, 2, 2)
    mask = inputs["video_compression_mask"]
    assert torch.equal(grid.flatten() >= 0, mask)  # dropped features have no cell
    assert torch.equal(grid.flatten()[mask], torch.arange(int(mask.sum())))  # kept ones in prompt order
    check_locality(model, inputs, "pixel_values_videos", [layout])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"video_merge_sizes": torch.tensor([2, 2])}, "`video_merge_sizes` has 2 entries"),
        ({"video_compression_mask": torch.ones(6, dtype=torch.bool)}, "`video_compression_mask` has 6 entries"),
        # the mask as generate() expands it for 3 rows per prompt (each entry repeated): the model cannot decode that
        (
            {"video_compression_mask": torch.tensor([1, 1, 1, 1, 1, 0, 0, 1], dtype=torch.bool).repeat_interleave(3)},
            r"compressed video \(3 rows per prompt.*cannot decode in transformers 5.24",
        ),
    ],
)
def test_mismatched_video_inputs_refused(change, message):
    model, _, _ = built("video_llama_3")
    inputs = video_inputs() | change
    with pytest.raises(ValueError, match=message):
        get_adapter(model).image_layout(model.config, inputs["input_ids"], inputs)


# ------------------------------------------------------------------------------------------- videos in generate()
NEW_TOKENS, SEED = 4, 1234
GENERATION_MODES = {  # name -> (generate() settings, returned rows per prompt row)
    "greedy": ({"do_sample": False}, 1),
    "beam3-return2": ({"num_beams": 3, "num_return_sequences": 2, "do_sample": False}, 2),
    "sample-return2": ({"do_sample": True, "top_k": 0, "num_return_sequences": 2}, 2),
}


@pytest.mark.parametrize("prompt", list(VIDEO_PROMPTS))
@pytest.mark.parametrize("mode", list(GENERATION_MODES))
def test_video_through_generate(mode, prompt):
    """A video through `FastRMWrapper.generate` and `FastRMLogitsProcessor`: tokens of plain generate(), maps of the
    head on one separate forward of the returned sequences (test_modes.py's `check_result`), per row as many image
    tokens as video placeholders. When generate() expands the rows, a compressed video cannot be decoded by the model
    itself (transformers 5.24, see `EXPANDED_COMPRESSED_VIDEO`): plain generate() fails, FastRM refuses naming it."""
    model, _, head = built("video_llama_3")
    inputs = VIDEO_PROMPTS[prompt]()
    compressed = not bool(inputs["video_compression_mask"].all())
    settings, returned = GENERATION_MODES[mode]
    kwargs = {**settings, "max_new_tokens": NEW_TOKENS}
    before = hook_state(model)
    if compressed and returned > 1:
        rows = max(settings.get("num_beams", 1), settings.get("num_return_sequences", 1))  # generate()'s expand_size
        expanded = expanded_by_the_model(model, inputs, kwargs)  # the model's own failure, without FastRM
        assert list(expanded["mm_encoder_outputs"]["video"].pooler_output) == []  # the encoded video lost
        mask = inputs["video_compression_mask"]
        assert torch.equal(expanded["video_compression_mask"], mask.repeat_interleave(rows))  # not mask.repeat(rows)
        with pytest.raises(
            ValueError, match=rf"compressed video \({rows} rows per prompt.*cannot decode in transformers"
        ):
            FastRMWrapper(model, head).generate(**inputs, **kwargs, return_relevancy=True)
        with pytest.raises(ValueError, match="cannot decode in transformers"), FastRMLogitsProcessor(model, head) as p:
            model.generate(**inputs, **kwargs, logits_processor=[p])
        assert hook_state(model) == before, "FastRM left hooks or method wrappers on the model after refusing"
        return

    torch.manual_seed(SEED)
    with torch.no_grad():
        plain = model.generate(**inputs, **kwargs)
    before = hook_state(model)  # after a plain generate(): transformers installs hooks of its own lazily
    torch.manual_seed(SEED)
    out = FastRMWrapper(model, head).generate(**inputs, **kwargs, return_relevancy=True)
    assert hook_state(model) == before, "FastRM left hooks or method wrappers on the model"
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    check_result("video_llama_3", mode, model, inputs, head, out.sequences, out, returned=returned)
    prompt_length = inputs["input_ids"].shape[1]
    placeholders = (out.sequences[:, :prompt_length] == VIDEO).sum(dim=1)
    assert out.relevancy.shape[0] == inputs["input_ids"].shape[0] * returned
    assert torch.equal(out.image_token_mask.sum(dim=1), placeholders)
    for layout, count in zip(out.image_layouts, placeholders.tolist(), strict=True):  # one video, each token a cell
        cells = layout.image_grids[0].flatten()
        assert len(layout.image_grids) == 1 and torch.equal(cells[cells >= 0], torch.arange(count))
        assert int((cells < 0).sum()) == (int((~inputs["video_compression_mask"]).sum()) if compressed else 0)

    torch.manual_seed(SEED)
    with FastRMLogitsProcessor(model, head) as fastrm:
        again = model.generate(**inputs, **kwargs, logits_processor=[fastrm], return_dict_in_generate=True)
        result = fastrm.result_for(again)
    torch.testing.assert_close(again.sequences, plain, rtol=0, atol=0)
    # the same computation in the same process: the processor's result is the wrapper's, bit for bit
    torch.testing.assert_close(result.relevancy, out.relevancy, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(result.token_mask, out.token_mask, rtol=0, atol=0)


def expanded_by_the_model(model, inputs: dict, kwargs: dict) -> dict:
    """The model kwargs transformers' own `_expand_inputs_for_generation` returns in a plain generate() with
    `kwargs`, after checking that generate() then fails as transformers 5.24 does on a compressed video."""
    captured = {}
    original = model._expand_inputs_for_generation

    def recording(*args, **kw):
        input_ids, model_kwargs = original(*args, **kw)
        captured.update(model_kwargs)
        return input_ids, model_kwargs

    model._expand_inputs_for_generation = recording
    try:
        with pytest.raises(ValueError, match="expected a non-empty list of Tensors"), torch.no_grad():
            model.generate(**inputs, **kwargs)  # if this passes, transformers fixed it: revisit the refusal
    finally:
        del model._expand_inputs_for_generation
    return captured
