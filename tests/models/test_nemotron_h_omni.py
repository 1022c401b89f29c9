"""Nemotron 3 Nano Omni beyond the shared table: videos are refused with a way out, and the layout reads
`image_grid_hw` on the family's own (default-sized) config."""

from __future__ import annotations

import pytest
import torch
from family_builders import BOS
from transformers import AutoConfig

from hf_fastrm.architectures import get_adapter

IMAGE = 240


def config():
    """The default config with the image placeholder the checkpoints set (`img_context_token_id`)."""
    return AutoConfig.for_model("nemotron_h_omni", image_token_id=IMAGE)


def test_grids_from_image_grid_hw_after_the_pixel_shuffle():
    cfg = config()
    grid_hw = torch.tensor([[32, 48], [16, 16]])  # RADIO patches; downsample_ratio 0.5: 16 x 24 and 8 x 8 tokens
    input_ids = torch.tensor([[BOS, *[IMAGE] * (16 * 24), 5, *[IMAGE] * 64, 6]])

    layout = get_adapter(cfg).image_layout(cfg, input_ids, {"image_grid_hw": grid_hw})[0]

    assert [tuple(grid.shape) for grid in layout.image_grids] == [(16, 24), (8, 8)]
    assert torch.equal(torch.cat([grid.flatten() for grid in layout.image_grids]), torch.arange(16 * 24 + 64))


def test_videos_are_refused_with_a_way_out():
    cfg = config()
    input_ids = torch.tensor([[BOS, *[IMAGE] * 8, 5]])
    kwargs = {"pixel_values_videos": torch.zeros(1, 2, 6, 32, 32)}

    with pytest.raises(ValueError, match="explains images only.*Generate without `pixel_values_videos`"):
        get_adapter(cfg).image_layout(cfg, input_ids, kwargs)


def test_image_tokens_beyond_the_described_images_are_refused():
    cfg = config()
    input_ids = torch.tensor([[BOS, *[IMAGE] * 20, 5]])  # one 4 x 4 image describes 16 tokens, not 20

    with pytest.raises(ValueError, match="more image tokens than the 1 image"):
        get_adapter(cfg).image_layout(cfg, input_ids, {"image_grid_hw": torch.tensor([[8, 8]])})
