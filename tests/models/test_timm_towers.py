"""Layouts of the timm-tower families beyond the shared table: Perception LM's tiles and video frames, and square
grids from the token count alone on the families' own configs (which name no image or patch size)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from family_builders import BOS
from family_table import TABLE, build_entry
from transformers import AutoConfig

from hf_fastrm.architectures import get_adapter


@functools.cache
def perception_lm():
    """The table's tiny Perception LM (CLIP ViT stand-in tower, 2 x 2 pooled tokens a tile)."""
    return build_entry(next(entry for entry in TABLE if entry.name == "perception_lm"))[0]


def test_perception_lm_tiles_and_frames_get_one_square_grid_each():
    model = perception_lm()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 3, 16, 16, generator=generator)  # 2 images: thumbnail + 2 tiles each
    video = torch.randn(1, 2, 3, 16, 16, generator=generator)  # 1 video of 2 frames
    with torch.no_grad():
        per_tile = model.model.get_image_features(pixel_values=images).pooler_output.shape[1]
    image_tokens, video_tokens = 3 * per_tile, 2 * per_tile
    image_id, video_id = config.image_token_id, config.video_token_id
    ids = [BOS, 5, *[image_id] * image_tokens, 6, *[image_id] * image_tokens, 7, *[video_id] * video_tokens, 8]
    input_ids = torch.tensor([ids])
    kwargs = {"pixel_values": images, "pixel_values_videos": video}
    with torch.no_grad():  # the model's own check that these token counts are its features' counts
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)

    layout = get_adapter(model).image_layout(config, input_ids, kwargs)[0]

    assert layout.grid_labels == [
        "image 0 thumbnail",
        "image 0 tile 1",
        "image 0 tile 2",
        "image 1 thumbnail",
        "image 1 tile 1",
        "image 1 tile 2",
        "video 0 frame 0",
        "video 0 frame 1",
    ]
    side = math.isqrt(per_tile)
    assert all(tuple(grid.shape) == (side, side) for grid in layout.image_grids)
    # tile after tile, row-major inside each: the grids cover the image tokens in prompt order, once each
    flat = torch.cat([grid.flatten() for grid in layout.image_grids])
    assert torch.equal(flat, torch.arange(2 * image_tokens + video_tokens))
    assert torch.equal(
        layout.image_positions, (input_ids[0] == image_id).logical_or(input_ids[0] == video_id).nonzero().flatten()
    )


@pytest.mark.parametrize("model_type", ["fast_vlm", "gemma3n"])
def test_feature_map_families_square_by_count_on_their_own_configs(model_type):
    """Their own vision configs (timm's) name no image or patch size: the grid comes from the count alone."""
    config = AutoConfig.for_model(model_type)
    image_id = config.image_token_id
    input_ids = torch.tensor([[BOS, *[image_id] * 256, 5, *[image_id] * 6, 6]])

    layout = get_adapter(config).image_layout(config, input_ids, {})[0]

    assert layout.grid_labels == ["image 0", "image 1"]
    assert tuple(layout.image_grids[0].shape) == (16, 16)  # Gemma 3n's 256 soft tokens, FastViT's 1024 px / 64
    assert tuple(layout.image_grids[1].shape) == (6,)  # not a square: an honest 1-D grid
