"""Each grid cell's token sees the part of the image the cell stands for.

With the vision tower's self-attention silenced (its output zeroed, so every patch feature depends on its own
pixels only: patch embedding, MLPs, norms, merging, pooling and pixel shuffles are all local), the gradient of an
image token's input embedding with respect to the pixel values shows where that token looks. For every grid the
layout reports, cells must then follow the image: along a grid row the pixels move right (or on to the next tile,
tiles in row-major order as every processor cuts them), along a column they move down (or on by one row of
tiles), along a video grid's first axis on to later frames.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from family_table import LOCALITY_PATCH_MERGE, LOCALITY_PIXEL_COORDINATES, LOCALITY_SLOW, LOCALITY_UNCHECKED
from test_families import BY_NAME, CASES, built, params

from hf_fastrm.architectures import get_adapter


@contextlib.contextmanager
def vision_attention_silenced(model, language_model):
    """Zeroes the output of every attention module outside the language model (the vision tower's).

    Attention that pools (a type named "...Pool...", or a module whose attribute name says pooling, as Molmo2's
    `image_pooling_2d`: each pooled token's query, keys and values are the patches of its own pooling window) is kept:
    like average pooling it mixes only the patches the cell stands for."""
    inside = {id(module) for module in language_model.modules()}

    def zero(module, args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    def is_attention(path: str, module) -> bool:  # the self-attention itself, not a whole block ("...AttentionLayer")
        name = type(module).__name__
        pools = "pool" in path.rpartition(".")[2].lower()
        return "Attention" in name and not pools and not any(word in name for word in ("Layer", "Block", "Pool"))

    handles = [
        module.register_forward_hook(zero)
        for path, module in model.named_modules()
        if id(module) not in inside and is_attention(path, module)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def pixel_coordinates(name: str, tensor: torch.Tensor, inputs: dict, merge: int = 2) -> torch.Tensor:
    """`(elements, 3)` (sub-image id, y, x) of every element of a pixel tensor.

    `(..., C, H, W)` tensors: leading indices flattened into the sub-image id. Qwen's flattened patches
    `(patches, C * T * p * p)`: decoded with the image processor's patch order `(t, h / m, w / m, m, m)` per image
    (`merge` m; 1 for processors that list patches row-major, as HY-V4-VL's and Muse's), the sub-image being (image, temporal patch).
    """
    if tensor.ndim >= 4:
        *lead, channels, height, width = tensor.shape
        sub = torch.arange(int(torch.tensor(lead).prod())).view(*lead, 1, 1, 1).expand(*lead, channels, height, width)
        y = torch.arange(height).view(height, 1).expand(*tensor.shape)
        x = torch.arange(width).view(1, width).expand(*tensor.shape)
        return torch.stack([sub.reshape(-1), y.reshape(-1), x.reshape(-1)], dim=1)
    grids = inputs["image_grid_thw" if name == "pixel_values" else "video_grid_thw"].tolist()
    rows = []
    sub_base = 0
    for t, h, w in grids:
        patch = torch.arange(t * h * w).view(t, h // merge, w // merge, merge, merge)
        tt, bh, bw, mh, mw = torch.meshgrid(*(torch.arange(s) for s in patch.shape), indexing="ij")
        rows.append(torch.stack([sub_base + tt, bh * merge + mh, bw * merge + mw], dim=-1).reshape(-1, 3))
        sub_base += t
    per_patch = torch.cat(rows)
    return per_patch.repeat_interleave(tensor.shape[1], dim=0)


def decoder_inputs(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The language model's input states `(batch, seq, hidden)`: its ``inputs_embeds``, or for a decoder called
    with the states themselves (GIT's encoder: the image features prepended to the text embeddings) its
    ``hidden_states``."""
    if kwargs.get("inputs_embeds") is not None:
        return kwargs["inputs_embeds"]
    states = kwargs.get("hidden_states", args[0] if args else None)
    return states if isinstance(states, torch.Tensor) and states.is_floating_point() else None


def token_pixel_weights(
    embeds: torch.Tensor,
    row: int,
    positions: torch.Tensor,
    pixels: list[torch.Tensor],
    direction: torch.Tensor | None,
) -> torch.Tensor:
    """`(tokens, pixel elements)`: |gradient| of each image token's embedding (row `row`, `positions`), summed over
    its hidden dimension or projected on `direction`, with respect to every pixel element; one batched backward."""
    selector = torch.zeros(positions.numel(), *embeds.shape, dtype=embeds.dtype)
    selector[torch.arange(positions.numel()), row, positions] = 1.0 if direction is None else direction
    grads = torch.autograd.grad(embeds, pixels, selector, retain_graph=True, is_grads_batched=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros(positions.numel(), *p.shape)).abs().reshape(positions.numel(), -1)
            for g, p in zip(grads, pixels, strict=True)
        ],
        dim=1,
    )


@functools.cache
def receptive_fields(name: str) -> list[torch.Tensor]:
    """Per row, `(image_tokens, 3)`: each image token's dominant (pixel tensor, sub-image) id and its centroid.

    Every floating-point input named ``pixel_values*`` is followed (images, videos, Unlimited-OCR's local crops
    `pixel_values_local`), its sub-images numbered after those of the inputs before it."""
    model, inputs, _ = built(name)
    adapter = get_adapter(model)
    language_model = adapter.language_model(model)
    layouts = adapter.image_layout(model.config, inputs["input_ids"], dict(inputs))
    pixels = {
        k: v.detach().clone().requires_grad_(True)
        for k, v in inputs.items()
        if k.startswith("pixel_values") and isinstance(v, torch.Tensor) and v.is_floating_point()
    }
    captured = {}
    # the image tokens' inputs: the decoder's input embeddings, or a cross-attention family's image states
    module, read = (language_model, decoder_inputs)
    if BY_NAME[name].image_states is not None:
        module, read = BY_NAME[name].image_states(model)

    def capture(module, args, kwargs):
        captured["embeds"] = read(args, kwargs)

    handle = module.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        # Llama 4's forward raises after the decoder in this transformers: the embeddings are captured by then
        with (
            vision_attention_silenced(model, language_model),
            torch.enable_grad(),
            contextlib.suppress(AttributeError),
        ):
            model(**{**inputs, **pixels})
    finally:
        handle.remove()
    embeds = captured["embeds"]
    merge = LOCALITY_PATCH_MERGE.get(name, 2)
    decode = LOCALITY_PIXEL_COORDINATES.get(name)
    coordinates = {
        k: (decode(k, v, inputs) if decode else pixel_coordinates(k, v, inputs, merge)).float()
        for k, v in pixels.items()
    }
    offsets = {}
    total = 0
    for k in pixels:  # each pixel input's sub-images numbered after the earlier inputs' (videos after images)
        offsets[k] = total
        total += int(coordinates[k][:, 0].max()) + 1
    coords = torch.cat([coordinates[k] + torch.tensor([offsets[k], 0, 0]) for k in pixels])
    subs = coords[:, 0].long()
    fields = []
    chunk = 32  # tokens a batched backward: its (tokens, pixel elements) gradients are the probe's memory peak
    for row, layout in enumerate(layouts):
        positions = layout.image_positions
        pieces = []
        for start in range(0, positions.numel(), chunk):
            part = positions[start : start + chunk]
            weights = token_pixel_weights(embeds, row, part, list(pixels.values()), direction=None)
            if bool((weights.sum(dim=1) == 0).any()):
                # the plain sum of an embedding is constant after a LayerNorm (GIT's projector ends in one): a
                # fixed random projection of it instead
                direction = torch.randn(
                    embeds.shape[-1], generator=torch.Generator().manual_seed(0), dtype=embeds.dtype
                )
                weights = token_pixel_weights(embeds, row, part, list(pixels.values()), direction=direction)
            mass = torch.zeros(part.numel(), total).index_add_(1, subs, weights)
            sub = mass.argmax(dim=1)
            kept = weights * ((subs.unsqueeze(0) == sub.unsqueeze(1)) & (weights > 0))
            del weights
            centroid = kept @ coords[:, 1:] / kept.sum(dim=1, keepdim=True)
            pieces.append(torch.cat([sub.float().unsqueeze(1), centroid], dim=1))
        fields.append(torch.cat(pieces))
    return fields


def check_axis(fields: torch.Tensor, grid: torch.Tensor, axis: int, label: str) -> None:
    """Consecutive cells along `axis` (-1: columns, -2: rows, -3: frames) move the way the image does."""
    first = grid.narrow(axis, 0, grid.shape[axis] - 1)
    second = grid.narrow(axis, 1, grid.shape[axis] - 1)
    pairs = (first >= 0) & (second >= 0)
    a, b = fields[first[pairs]], fields[second[pairs]]
    same = a[:, 0] == b[:, 0]
    if axis == -3:
        assert bool((b[:, 0] > a[:, 0]).all()), f"{label}: frames out of order"
        return
    along, across = (2, 1) if axis == -1 else (1, 2)
    assert bool((b[same, along] > a[same, along] + 0.5).all()), f"{label}: cells out of order along axis {axis}"
    # a cell covers a block of patches (merge, pool, pixel shuffle): centroids of one block row may differ by < 1
    assert bool(((b[same, across] - a[same, across]).abs() < 1.0).all()), f"{label}: cells drift across axis {axis}"
    steps = (b[~same, 0] - a[~same, 0]).unique()
    if axis == -1:
        assert steps.numel() == 0 or steps.tolist() == [1.0], f"{label}: tiles along a row are not consecutive"
    else:
        assert steps.numel() <= 1 and bool((steps > 0).all()), f"{label}: tile rows out of order"


def locality_params() -> list:
    result = []
    for param in params(CASES):
        name = param.values[0]
        marks = list(param.marks)
        if name in LOCALITY_UNCHECKED:
            marks.append(
                pytest.mark.xfail(reason=LOCALITY_UNCHECKED[name], run=False)
            )  # nothing to learn from running it
        if name in LOCALITY_SLOW:
            marks.append(pytest.mark.slow)
        result.append(pytest.param(name, id=param.id, marks=marks))
    return result


@pytest.mark.parametrize("name", locality_params())
def test_grid_cells_follow_the_image(name):
    model, inputs, _ = built(name)
    layouts = get_adapter(model).image_layout(model.config, inputs["input_ids"], dict(inputs))
    for row, (layout, fields) in enumerate(zip(layouts, receptive_fields(name), strict=True)):
        for label, grid in zip(layout.grid_labels, layout.image_grids, strict=True):
            for axis in range(-grid.ndim, 0):
                if grid.shape[axis] > 1:
                    check_axis(fields, grid, axis, f"{name} row {row} {label}")
