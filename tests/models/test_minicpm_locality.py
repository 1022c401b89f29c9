"""MiniCPM-V's grids follow the image: each cell's token sees exactly its block of patches of its picture.

The shared locality probe (test_family_locality.py) does not decode NaViT-packed patch strips, and its silencing
rule zeroes MiniCPM-V's whole window-attention merger. Here only the vision tower's self-attention modules
(``*VisionAttention``) are silenced, so every feature depends on its own patches alone; the gradient of each image
token's input embedding with respect to the strip `(1, channels, patch, patches * patch)` then names the patches the
token reads, which must be the `(d, d)` block at the cell's row and column of that picture (d patches a cell).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_families import built

from hf_fastrm.architectures import get_adapter


class _Captured(Exception):
    """Raised once the decoder's input embeddings are captured."""


@contextlib.contextmanager
def vision_self_attention_silenced(model, language_model):
    inside = {id(module) for module in language_model.modules()}

    def zero(module, args, output):
        return (torch.zeros_like(output[0]), *output[1:]) if isinstance(output, tuple) else torch.zeros_like(output)

    handles = [
        module.register_forward_hook(zero)
        for module in model.modules()
        if id(module) not in inside and type(module).__name__.endswith("VisionAttention")
    ]
    assert handles, "no vision self-attention found to silence"
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize(
    ("name", "side"),
    [("minicpmv4_6", 4), ("minicpmv4_7", 4), pytest.param("minicpm_ocr", 2, marks=pytest.mark.slow)],
)
def test_minicpm_cells_read_their_block_of_patches(name, side):
    model, inputs, _ = built(name)
    adapter = get_adapter(model)
    language_model = adapter.language_model(model)
    layouts = adapter.image_layout(model.config, inputs["input_ids"], dict(inputs))
    pixels = inputs["pixel_values"].detach().clone().requires_grad_(True)
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]
        raise _Captured  # the decoder's forward is not needed: stop there

    handle = language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with vision_self_attention_silenced(model, language_model), torch.enable_grad(), pytest.raises(_Captured):
            model(**{**inputs, "pixel_values": pixels})
    finally:
        handle.remove()
    patch = model.config.vision_config.patch_size
    owners = [  # strip patch index -> (picture, patch row, patch column)
        (picture, row, col)
        for picture, (height, width) in enumerate(inputs["target_sizes"].tolist())
        for row in range(height)
        for col in range(width)
    ]
    picture = 0
    for row, layout in enumerate(layouts):
        for grid in layout.image_grids:
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    token = layout.image_positions[grid[i, j]]
                    (grad,) = torch.autograd.grad(captured["embeds"][row, token].sum(), pixels, retain_graph=True)
                    read = grad.abs().sum(dim=(0, 1, 2)).view(-1, patch).sum(-1).nonzero().flatten().tolist()
                    want = {(picture, i * side + a, j * side + b) for a in range(side) for b in range(side)}
                    assert {owners[q] for q in read} == want, f"{name} row {row} picture {picture} cell ({i}, {j})"
            picture += 1
