"""The locality probe decodes flattened patch lists in the order the families' own image processors write them.

`test_family_locality.py` trusts a per-family decoder (``LOCALITY_PIXEL_COORDINATES``) or merge-block size
(``LOCALITY_PATCH_MERGE``) to say which image patch every pixel element comes from; a wrong decoder would make it
pass a wrong grid or fail a right one. Here each family's real image processor (transformers' PIL backend, no
download) patchifies images whose channels hold every pixel's row and column, and the decoded patch of every element
must be the one its pixel lies in.
"""

from __future__ import annotations

import pytest
import torch
from family_table import LOCALITY_PATCH_MERGE, LOCALITY_PIXEL_COORDINATES
from test_family_locality import pixel_coordinates


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """`(3, height, width)`: channel 0 each pixel's row, channel 1 its column, channel 2 zero."""
    y = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
    x = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
    return torch.stack([y, x, torch.zeros(height, width)])


def processor(name: str):
    if name == "paddleocr_vl":
        from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

        return PaddleOCRVLImageProcessorPil()
    if name == "hunyuan_vl":
        from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import HunYuanVLImageProcessorPil

        return HunYuanVLImageProcessorPil()
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import VideoLlama3ImageProcessorPil

    return VideoLlama3ImageProcessorPil()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("paddleocr_vl", {}),
        ("hunyuan_vl", {}),
        ("video_llama_3", {}),  # its image processor's default merge size, 1
        ("video_llama_3", {"merge_size": 2}),
    ],
)
def test_probe_decodes_the_processors_patch_order(name, kwargs):
    proc = processor(name)
    patch = proc.patch_size
    side = 2 * patch * 2  # a multiple of patch * merge for merge 1 and 2: no resize needed
    images = [coordinate_image(side * 2, side * 3), coordinate_image(side * 3, side)]
    out = proc(
        images=[image.numpy() for image in images],
        do_resize=False,
        do_rescale=False,
        do_normalize=False,
        return_tensors="pt",
        **kwargs,
    )
    inputs = dict(out)
    pixels = inputs["pixel_values"]
    decode = LOCALITY_PIXEL_COORDINATES.get(name)
    if decode is not None:
        coordinates = decode("pixel_values", pixels, inputs)
    else:
        coordinates = pixel_coordinates("pixel_values", pixels, inputs, LOCALITY_PATCH_MERGE.get(name, 2))
    patches = pixels.shape[0]
    assert coordinates.shape == (pixels.numel(), 3)
    coordinates = coordinates.view(patches, -1, 3)
    # every processor keeps each patch channel-first ((channels, [temporal,] patch, patch)): channel 0 / 1 hold the
    # pixel's row / column exactly (no rescale, no normalization)
    values = pixels.reshape(patches, 3, -1)
    per_channel = values.shape[-1]
    rows = coordinates[:, :per_channel, 1]  # the decoder's coordinates of channel 0's elements
    cols = coordinates[:, :per_channel, 2]
    assert torch.equal(torch.div(values[:, 0], patch, rounding_mode="floor"), rows)
    assert torch.equal(torch.div(values[:, 1], patch, rounding_mode="floor"), cols)
    image_of_patch = torch.repeat_interleave(torch.arange(len(images)), inputs["image_grid_thw"].prod(-1))
    assert torch.equal(coordinates[:, 0, 0], image_of_patch)
    assert bool((coordinates == coordinates[:, :1]).all()), "elements of one patch decoded to different patches"
