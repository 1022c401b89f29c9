"""Cohere2 Vision's tiled images: ``BOI + (tile tokens + LINE_BREAK) * tiles + EOI``, as its processor writes them
(crops of the image, then a thumbnail when there are several); one `pixel_values` entry per tile.

Checked: each tile is one square grid, labelled by its image (``image k tile j``, ``image k thumbnail``, or ``image
k`` for an image of one tile); tokens identical to plain generate(); maps equal the head on a separate forward; the
teacher gives the same layouts.
"""

from __future__ import annotations

import pytest
import torch
from test_families import BY_NAME, built, reference_relevancy

from hf_fastrm import FastRMWrapper
from hf_fastrm.teacher import gradient_relevancy

BOI, LINE_BREAK, EOI = 5, 6, 7  # text ids of the tiny vocabulary standing in for the processor's special tokens
GREEDY = {"do_sample": False, "max_new_tokens": 3, "min_new_tokens": 3}


def tiled_inputs(model) -> tuple[dict, int]:
    """Row 0: an image of 3 tiles (2 crops and the thumbnail), text, an image of 1 tile; row 1 (left-padded): two
    images of one tile. `(inputs, tokens per tile)`."""
    image = model.config.image_token_id
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size // model.config.downsample_factor
    per_tile = side * side

    def picture(tiles: int) -> list[int]:
        return [BOI] + ([image] * per_tile + [LINE_BREAK]) * tiles + [EOI]

    rows = [[1, 9, *picture(3), 10, 11, *picture(1), 12], [1, *picture(1), 13, *picture(1), 14]]
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    pixels = torch.randn(6, 3, vision.image_size, vision.image_size, generator=torch.Generator().manual_seed(3))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}, per_tile


LABELS = [["image 0 tile 0", "image 0 tile 1", "image 0 thumbnail", "image 1"], ["image 0", "image 1"]]


@pytest.fixture(scope="module")
def generated():
    model, _, head = built("cohere2_vision")
    inputs, per_tile = tiled_inputs(model)
    with torch.no_grad():
        plain = model.generate(**inputs, **GREEDY)
    out = FastRMWrapper(model, head).generate(**inputs, **GREEDY, return_relevancy=True)
    return model, head, inputs, per_tile, plain, out


def test_one_grid_per_tile_labelled_by_image(generated):
    model, _, inputs, per_tile, _, out = generated
    side = int(per_tile**0.5)
    image = model.config.image_token_id
    for row, layout in enumerate(out.image_layouts):
        assert layout.grid_labels == LABELS[row]
        assert [tuple(grid.shape) for grid in layout.image_grids] == [(side, side)] * len(LABELS[row])
        # the tiles, in prompt order, each row-major over its own run of image tokens
        torch.testing.assert_close(
            layout.image_positions, (inputs["input_ids"][row] == image).nonzero().flatten(), rtol=0, atol=0
        )
        for tile, grid in enumerate(layout.image_grids):
            want = torch.arange(tile * per_tile, (tile + 1) * per_tile).view(side, side)
            torch.testing.assert_close(grid, want, rtol=0, atol=0)


def test_tokens_identical_and_maps_equal_head_on_separate_forward(generated):
    model, head, inputs, _, plain, out = generated
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    expected = reference_relevancy(model, head, inputs, out.sequences, out.image_layouts, BY_NAME["cohere2_vision"])
    for row, want in enumerate(expected):
        n = out.image_layouts[row].num_image_tokens
        torch.testing.assert_close(out.relevancy[row, :, :n], want, rtol=1e-4, atol=1e-5)
    maps = out.relevancy_maps(0)
    assert len(maps) == 4 and all(tuple(m.shape[1:]) == tuple(maps[0].shape[1:]) for m in maps)


def test_teacher_on_the_same_tiles(generated):
    model, _, inputs, _, _, out = generated
    result = gradient_relevancy(model, dict(inputs), out.sequences).result
    assert [layout.grid_labels for layout in result.image_layouts] == LABELS
    valid = result.token_mask.unsqueeze(-1) & result.image_token_mask.unsqueeze(1)
    assert bool((result.relevancy[valid] >= 0).all()) and float(result.relevancy[valid].sum()) > 0
