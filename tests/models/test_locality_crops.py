"""The locality probe's decoder of Molmo2's overlapping crops follows Molmo2's image processor.

`family_table.molmo2_crop_coordinates` names, for every element of Molmo2's `pixel_values` `(crops, patches,
patch * patch * 3)`, the view (low-resolution view or high-resolution canvas) and the patch of that view it shows.
Here Molmo2's own processor code (`family_table.molmo2_preprocess`) cuts images whose channels hold each pixel's row,
column and image index; the images are sized so that the high-resolution canvas is the image itself (its resize is the
identity), so every crop element's canvas pixel is known exactly, margins included. The low-resolution view is a
bilinear resize of the image to one crop: a linear ramp stays linear under it, so each view pixel's own row and column
are recovered from the values exactly.
"""

from __future__ import annotations

import pytest
import torch
from family_table import molmo2_crop_coordinates, molmo2_preprocess

CROP, PATCH = 24, 4
"""Molmo2's crop side in pixels (`molmo2_preprocess` runs with 24 px crops) and the tested tower's patch size."""
TILINGS = [(1, 1), (2, 3), (3, 2), (1, 2)]
"""(rows, columns) of crops per image: a single crop, wide, tall and a one-row image."""


def coordinate_image(index: int, height: int, width: int) -> torch.Tensor:
    """`(3, height, width)`: channel 0 each pixel's row, channel 1 its column, channel 2 the image index."""
    y = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
    x = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
    return torch.stack([y, x, torch.full((height, width), float(index))])


@pytest.mark.parametrize("margins", [(1, 1), (2, 1)])
def test_molmo2_decoder_follows_its_crops(margins):
    window = CROP // PATCH - sum(margins)  # the crops' stride, in patches
    sizes = [
        (rows * window * PATCH + sum(margins) * PATCH, cols * window * PATCH + sum(margins) * PATCH)
        for rows, cols in TILINGS
    ]
    images = [coordinate_image(index, h, w) for index, (h, w) in enumerate(sizes)]
    out = molmo2_preprocess(images, PATCH, max_crops=6, overlap_margins=margins, normalize=False)
    assert out["image_num_crops"].tolist() == [1 + rows * cols for rows, cols in TILINGS]
    pixels = out["pixel_values"]
    decoded = molmo2_crop_coordinates("pixel_values", pixels, out, overlap_margins=margins)
    assert decoded.shape == (pixels.numel(), 3)
    # every element: patch element (row in patch, column in patch, channel) -> the three channels of its pixel
    decoded = decoded.view(*pixels.shape[:2], PATCH * PATCH, 3, 3)[..., 0, :].long()
    values = pixels.view(*pixels.shape[:2], PATCH * PATCH, 3)
    image = values[..., 2].round().long()
    size = torch.tensor(sizes, dtype=torch.float32)[image]  # (..., 2): each element's image (height, width)
    low = torch.cat([torch.arange(n) == 0 for n in out["image_num_crops"].tolist()]).view(-1, 1, 1).expand_as(image)
    # the low view: bilinear (half-pixel centres) from the image to CROP pixels, so a view pixel v shows image pixel
    # (v + 0.5) * size / CROP - 0.5 (at least 0 here: every image is at least a crop)
    row = torch.where(low, (values[..., 0] + 0.5) * CROP / size[..., 0] - 0.5, values[..., 0])
    col = torch.where(low, (values[..., 1] + 0.5) * CROP / size[..., 1] - 0.5, values[..., 1])
    assert torch.equal(decoded[..., 0], 2 * image + (~low).long())
    assert torch.equal(decoded[..., 1], torch.div(row.round(), PATCH, rounding_mode="floor").long())
    assert torch.equal(decoded[..., 2], torch.div(col.round(), PATCH, rounding_mode="floor").long())


def test_molmo2_decoder_refuses_crops_it_cannot_tile():
    """A crop count no tiling of the image's pooled canvas grid explains is refused, not decoded at random."""
    out = molmo2_preprocess([coordinate_image(0, 40, 56)], PATCH, max_crops=6, normalize=False)
    out["image_grids"] = out["image_grids"].clone()
    out["image_grids"][0, 3] += 1
    with pytest.raises(AssertionError, match="no single tiling"):
        molmo2_crop_coordinates("pixel_values", out["pixel_values"], out)
