"""The locality probe's pixel decoders (family_table.LOCALITY_PIXEL_COORDINATES) agree with the processors' layouts.

Each test patchifies images whose pixels carry their own coordinates (every channel of pixel (y, x) of image i holds
``i * 10000 + y * 100 + x``) with the family's own patchify code and checks that the decoder names, for every
element of a real patch, the image and the patch (y // patch, x // patch) that element came from. Gemma 4's image
processor runs as is; the others' modules import torchvision (not installed here), so their patchify functions
are taken from the installed transformers sources and run on their own (they use torch only).
"""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from family_table import LOCALITY_PIXEL_COORDINATES
from PIL import Image


def source_functions(module: str, *names: str) -> dict:
    """The named top-level functions (or methods, by name, of any class) of an installed transformers module,
    compiled from its source without importing the module."""
    package, _, file = module.rpartition(".")
    path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / f"{file}.py"
    tree = ast.parse(path.read_text())
    found = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in names}
    assert set(found) == set(names), f"{module} lacks {set(names) - set(found)}"
    for node in found.values():
        node.decorator_list = []
    namespace = {"torch": torch, "math": math}
    exec(compile(ast.Module(body=list(found.values()), type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def coordinate_image(index: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
    """`(channels, height, width)`: every channel of pixel (y, x) holds ``index * 10000 + y * 100 + x``."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (index * 10000 + y * 100 + x).float().expand(channels, height, width).clone()


def assert_decoded(decoded: torch.Tensor, values: torch.Tensor, real: torch.Tensor, unit: int) -> None:
    """`decoded` `(elements, 3)` names (image, y // unit, x // unit) of the value encoded in every element of a real
    patch (`real`: `(elements,)` bool, False on padding patches)."""
    values = values.reshape(-1).round().long()[real]
    expected = torch.stack([values // 10000, values % 10000 // 100 // unit, values % 100 // unit], dim=1)
    assert decoded.shape == (real.numel(), 3)
    assert torch.equal(decoded[real].long(), expected)


SIZES = [(16, 24), (24, 16), (8, 8)]


def test_gemma4_decoder_follows_its_image_processor():
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    patch = 4
    # uint8 pixels: y * 16 + x in every channel (sides of at most 16), rescaled to [0, 1] by the processor
    sizes = [(16, 8), (8, 16), (16, 16)]
    images = []
    for h, w in sizes:
        y, x = np.mgrid[:h, :w]
        images.append(Image.fromarray(np.repeat((y * 16 + x).astype(np.uint8)[..., None], 3, axis=-1)))
    processor = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=2, max_soft_tokens=70)
    out = processor(images=images, do_resize=False, do_normalize=False, return_tensors="pt")
    pixels = out["pixel_values"]
    decoded = LOCALITY_PIXEL_COORDINATES["gemma4"]("pixel_values", pixels, dict(out))
    level = (pixels * 255).round().long()
    values = torch.arange(len(sizes)).view(-1, 1, 1) * 10000 + level // 16 * 100 + level % 16
    real = (out["image_position_ids"] >= 0).all(-1, keepdim=True).expand_as(pixels).reshape(-1)
    assert_decoded(decoded, values, real, patch)


def test_gemma4_unified_decoder_follows_patches_merge():
    module = "transformers.models.gemma4_unified.image_processing_gemma4_unified"
    code = source_functions(module, "convert_image_to_patches", "patches_merge", "pad_along_first_dim")
    patch, kernel, length = 4, 2, 70
    pixel_values, positions = [], []
    for index, (h, w) in enumerate(SIZES):  # Gemma4UnifiedImageProcessor._preprocess, steps 3 to 6
        image = coordinate_image(index, h, w)
        patches = code["convert_image_to_patches"](image, patch)
        grid = torch.meshgrid(torch.arange(w // patch), torch.arange(h // patch), indexing="xy")
        teacher = torch.stack(grid, dim=-1).reshape(patches.shape[0], 2)
        merged, merged_positions = code["patches_merge"](
            patches.unsqueeze(0), teacher.unsqueeze(0), patches.shape[0] // kernel**2
        )
        merged, merged_positions = code["pad_along_first_dim"](merged[0], merged_positions[0], length)
        pixel_values.append(merged)
        positions.append(merged_positions)
    pixels, positions = torch.stack(pixel_values), torch.stack(positions)
    inputs = {"pixel_values": pixels, "image_position_ids": positions}
    decoded = LOCALITY_PIXEL_COORDINATES["gemma4_unified"]("pixel_values", pixels, inputs)
    real = (positions >= 0).all(-1, keepdim=True).expand_as(pixels).reshape(-1)
    assert_decoded(decoded, pixels, real, patch * kernel)


def test_lfm2_vl_decoder_follows_its_patchify():
    module = "transformers.models.lfm2_vl.image_processing_lfm2_vl"
    code = source_functions(module, "convert_image_to_patches")
    patch = 4
    lists = [
        code["convert_image_to_patches"](coordinate_image(index, h, w).unsqueeze(0), patch)[0]
        for index, (h, w) in enumerate(SIZES)
    ]
    longest = max(item.shape[0] for item in lists)
    pixels = torch.stack([torch.nn.functional.pad(item, (0, 0, 0, longest - item.shape[0])) for item in lists])
    shapes = torch.tensor([(h // patch, w // patch) for h, w in SIZES])
    inputs = {"pixel_values": pixels, "spatial_shapes": shapes}
    decoded = LOCALITY_PIXEL_COORDINATES["lfm2_vl"]("pixel_values", pixels, inputs)
    real = (torch.arange(longest).view(1, -1, 1) < shapes.prod(-1).view(-1, 1, 1)).expand_as(pixels).reshape(-1)
    assert_decoded(decoded, pixels, real, patch)


def test_kimi_k25_decoder_follows_its_image_patchify():
    patchify = source_functions("transformers.models.kimi_k25.image_processing_kimi_k25", "patchify")["patchify"]
    patch = 4
    lists, grids = [], []
    for index, (h, w) in enumerate(SIZES):
        patches, rows, cols = patchify(None, coordinate_image(index, h, w).unsqueeze(0), patch)
        lists.append(patches[0])
        grids.append([1, rows, cols])
    pixels = torch.cat(lists)
    inputs = {"pixel_values": pixels, "image_grid_thw": torch.tensor(grids)}
    decoded = LOCALITY_PIXEL_COORDINATES["kimi_k25"]("pixel_values", pixels, inputs)
    assert_decoded(decoded, pixels, torch.ones(pixels.numel(), dtype=torch.bool), patch)


def test_kimi_k25_decoder_follows_its_video_patchify():
    """A video's frames (each with its pixels' coordinates) one after the other, each frame's patches row-major: the
    decoder names the video and the patch, the frame being the axis the tower averages away."""
    patchify = source_functions("transformers.models.kimi_k25.video_processing_kimi_k25", "patchify")["patchify"]
    patch, frames = 4, 3
    lists, grids = [], []
    for index, (h, w) in enumerate(SIZES):
        video = coordinate_image(index, h, w).expand(1, frames, -1, -1, -1)
        patches, t, rows, cols = patchify(None, video, patch)
        lists.append(patches[0])
        grids.append([t, rows, cols])
    pixels = torch.cat(lists)
    inputs = {"pixel_values_videos": pixels, "video_grid_thw": torch.tensor(grids)}
    decoded = LOCALITY_PIXEL_COORDINATES["kimi_k25"]("pixel_values_videos", pixels, inputs)
    assert_decoded(decoded, pixels, torch.ones(pixels.numel(), dtype=torch.bool), patch)
