"""Relevancy maps drawn over images: colour maps, NaN-aware bilinear upsampling of a patch grid, compositing.

Only numpy and PIL are used (no matplotlib), so pictures can be made anywhere the package installs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# Anchor colours (RGB in [0, 1], evenly spaced from 0 to 1) of the colour maps; interpolated into 256-entry tables.
_COLORMAP_ANCHORS: dict[str, list[tuple[float, float, float]]] = {
    # The classic rainbow of gradient relevancy papers (Chefer et al., LVLM-Interpret, FastRM).
    "jet": [(0.0, 0.0, 0.5), (0.0, 0.0, 1.0), (0.0, 0.5, 1.0), (0.0, 1.0, 1.0), (0.5, 1.0, 0.5),
            (1.0, 1.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)],
    "turbo": [(0.190, 0.072, 0.232), (0.276, 0.421, 0.891), (0.158, 0.736, 0.923), (0.197, 0.949, 0.595),
              (0.644, 0.990, 0.235), (0.933, 0.812, 0.227), (0.984, 0.493, 0.128), (0.816, 0.185, 0.018),
              (0.480, 0.016, 0.011)],
    "viridis": [(0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530), (0.207, 0.372, 0.553),
                (0.164, 0.471, 0.558), (0.128, 0.567, 0.551), (0.135, 0.659, 0.518), (0.267, 0.749, 0.441),
                (0.478, 0.821, 0.318), (0.741, 0.873, 0.150), (0.993, 0.906, 0.144)],
    "inferno": [(0.001, 0.000, 0.014), (0.122, 0.047, 0.283), (0.329, 0.060, 0.430), (0.522, 0.125, 0.418),
                (0.716, 0.215, 0.330), (0.877, 0.393, 0.204), (0.969, 0.620, 0.039), (0.975, 0.858, 0.301),
                (0.988, 0.998, 0.645)],
}  # fmt: skip

COLORMAPS: tuple[str, ...] = tuple(_COLORMAP_ANCHORS)
"""Names accepted by the `colormap` arguments."""

DEFAULT_COLORMAP = "jet"


def colormap_table(name: str = DEFAULT_COLORMAP, entries: int = 256) -> np.ndarray:
    """The colour map `name` as a `(entries, 3)` uint8 table (index 0 is the value 0, the last index the value 1)."""
    if name not in _COLORMAP_ANCHORS:
        raise ValueError(f"Unknown colour map {name!r}; choose one of {list(COLORMAPS)}.")
    anchors = np.asarray(_COLORMAP_ANCHORS[name], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(anchors))
    samples = np.linspace(0.0, 1.0, entries)
    table = np.stack([np.interp(samples, positions, anchors[:, channel]) for channel in range(3)], axis=-1)
    return np.round(table * 255.0).astype(np.uint8)


def colormap_css_gradient(name: str = DEFAULT_COLORMAP, stops: int = 9) -> str:
    """A CSS ``linear-gradient(...)`` of the colour map, left (0) to right (1), for legends in HTML reports."""
    table = colormap_table(name, stops)
    colours = ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in table.tolist())
    return f"linear-gradient(to right, {colours})"


def apply_colormap(values: np.ndarray, name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Colours for values in [0, 1] (clipped): `(...)` float array -> `(..., 3)` uint8 RGB."""
    table = colormap_table(name)
    index = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(table) - 1)
    return table[np.round(index).astype(np.int64)]


def _as_grid(relevancy_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """A `(h, w)` float64 array; a `(frames, h, w)` video grid is averaged over frames (NaN ignored)."""
    if isinstance(relevancy_map, torch.Tensor):
        grid = relevancy_map.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        grid = np.asarray(relevancy_map, dtype=np.float64)
    if grid.ndim == 3:
        finite = np.isfinite(grid)
        counts = finite.sum(axis=0)
        sums = np.where(finite, grid, 0.0).sum(axis=0)
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(
            f"A relevancy map must be a non-empty (height, width) grid, got shape {tuple(grid.shape)}; take one "
            "token's map, e.g. `out.relevancy_maps(0)[image_index][token_index]`."
        )
    return grid


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of `size_in` cells at `size_out` pixel centres (cell centres aligned, edges clamped)."""
    position = (np.arange(size_out, dtype=np.float64) + 0.5) * size_in / size_out - 0.5
    position = np.clip(position, 0.0, size_in - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, position - low


def upsample_grid(relevancy_map: torch.Tensor | np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear upsampling of a patch grid that may hold NaN cells (cells no image token covers).

    NaN cells take no part in the interpolation: the value at a pixel is the bilinear mean of the valid cells around
    it (weights renormalised), and `coverage` is 1 over the pixels of valid cells and 0 over those of NaN cells, so
    a NaN cell stays wholly transparent and its neighbours' colours do not bleed into it.

    Args:
        relevancy_map (`torch.Tensor` or `np.ndarray` of shape `(h, w)`): one token's map over one image's grid.
        size (`tuple[int, int]`): the output `(width, height)` in pixels, as PIL orders it.

    Returns:
        `(values, coverage)`, two float64 arrays of shape `(height, width)`; `values` is 0 where `coverage` is 0.
    """
    grid = _as_grid(relevancy_map)
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"`size` must be a positive (width, height), got {size}.")
    valid = np.isfinite(grid)
    filled = np.where(valid, grid, 0.0)
    rows = _axis_weights(grid.shape[0], height)
    cols = _axis_weights(grid.shape[1], width)

    def interpolate(array: np.ndarray) -> np.ndarray:
        low, high, frac = rows
        array = array[low] * (1.0 - frac)[:, None] + array[high] * frac[:, None]
        low, high, frac = cols
        return array[:, low] * (1.0 - frac)[None, :] + array[:, high] * frac[None, :]

    weight = interpolate(valid.astype(np.float64))
    weighted = interpolate(filled)
    # The cell each pixel lies in (pixel centre inside the cell).
    cell_rows = np.minimum(((np.arange(height) + 0.5) * grid.shape[0] / height).astype(np.int64), grid.shape[0] - 1)
    cell_cols = np.minimum(((np.arange(width) + 0.5) * grid.shape[1] / width).astype(np.int64), grid.shape[1] - 1)
    coverage = valid[cell_rows][:, cell_cols].astype(np.float64)
    values = np.where((coverage > 0) & (weight > 1e-12), weighted / np.maximum(weight, 1e-12), 0.0)
    return values, coverage


def normalize_map(
    relevancy_map: torch.Tensor | np.ndarray,
    *,
    normalize: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Scales a `(h, w)` map to [0, 1]; NaN stays NaN.

    Args:
        normalize (`bool`, *optional*, defaults to `True`): min-max over the finite cells (a constant map becomes 0),
            so the picture shows where the map is high relative to the rest of the image. Set to `False` to keep
            FastRM's absolute relevance (a sigmoid output, already in [0, 1]).
        vmin, vmax (`float`, *optional*): fixed bounds instead of the map's own minimum and maximum (defaults to the
            map's own when `normalize`, else 0 and 1).
    """
    grid = _as_grid(relevancy_map)
    finite = grid[np.isfinite(grid)]
    if normalize and finite.size:
        low = float(finite.min()) if vmin is None else float(vmin)
        high = float(finite.max()) if vmax is None else float(vmax)
    else:
        low = 0.0 if vmin is None else float(vmin)
        high = 1.0 if vmax is None else float(vmax)
    span = high - low
    if not math.isfinite(span) or span <= 0:
        return np.where(np.isfinite(grid), 0.0, np.nan)
    return np.clip((grid - low) / span, 0.0, 1.0)


def heatmap_rgba(
    relevancy_map: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    *,
    alpha: float = 0.5,
    colormap: str = DEFAULT_COLORMAP,
    normalize: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """The coloured map alone, as an RGBA image of `size` (width, height): opacity `alpha`, transparent over NaN."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    scaled = normalize_map(relevancy_map, normalize=normalize, vmin=vmin, vmax=vmax)
    values, coverage = upsample_grid(scaled, size)
    rgb = apply_colormap(values, colormap)
    opacity = np.round(coverage * alpha * 255.0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, opacity]), mode="RGBA")


def display_size(
    image_size: tuple[int, int], min_size: int | None = None, max_size: int | None = None
) -> tuple[int, int]:
    """`image_size` (width, height) scaled so the longer side is at least `min_size` and at most `max_size`."""
    width, height = image_size
    longer = max(width, height)
    scale = 1.0
    if min_size and longer < min_size:
        scale = math.ceil(min_size / longer)  # whole factors keep synthetic pixels square
    if max_size and longer * scale > max_size:
        scale = max_size / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_for_display(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as RGB at `size`: nearest-neighbour when enlarging (crisp pixels), Lanczos when shrinking."""
    image = image.convert("RGB")
    if image.size == tuple(size):
        return image
    enlarging = size[0] >= image.size[0] and size[1] >= image.size[1]
    return image.resize(size, Image.Resampling.NEAREST if enlarging else Image.Resampling.LANCZOS)


def overlay(
    image: Image.Image,
    relevancy_map: torch.Tensor | np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = DEFAULT_COLORMAP,
    normalize: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    size: tuple[int, int] | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
) -> Image.Image:
    """Draws one token's relevancy map over an image.

    The patch grid is upsampled bilinearly to the picture's size (cell centres on patch centres), coloured with
    `colormap` and blended with opacity `alpha`; grid cells that are NaN (no image token there) stay transparent.
    The map is assumed to cover the whole `image`: pass the region the model saw (after the processor's crop).

    Args:
        image (`PIL.Image.Image`): the image the map refers to.
        relevancy_map (`torch.Tensor` of shape `(h, w)`): e.g. ``out.relevancy_maps(0)[image_index][token_index]``.
        alpha (`float`, *optional*, defaults to 0.5): opacity of the colour layer.
        colormap (`str`, *optional*, defaults to ``"jet"``): one of [`COLORMAPS`].
        normalize, vmin, vmax: see [`normalize_map`].
        size (`tuple[int, int]`, *optional*): output `(width, height)`; defaults to the image's size, enlarged to
            `min_size` or shrunk to `max_size` on its longer side when those are given.

    Returns:
        `PIL.Image.Image` in RGB mode.

    Example:

    ```python
    >>> maps = out.relevancy_maps(0)                  # one (new_tokens, h, w) tensor per image
    >>> overlay(image, maps[0][0]).save("token0.png")
    ```
    """
    size = tuple(size) if size is not None else display_size(image.size, min_size, max_size)
    base = resize_for_display(image, size)
    layer = heatmap_rgba(
        relevancy_map, size, alpha=alpha, colormap=colormap, normalize=normalize, vmin=vmin, vmax=vmax
    )
    # Composite in float: PIL's alpha_composite rounds, and a fully transparent layer must leave the image exact.
    base_array = np.asarray(base, dtype=np.float64)
    layer_array = np.asarray(layer, dtype=np.float64)
    weight = layer_array[..., 3:] / 255.0
    blended = base_array * (1.0 - weight) + layer_array[..., :3] * weight
    return Image.fromarray(np.round(blended).astype(np.uint8), mode="RGB")


@dataclass
class OverlayStyle:
    """How maps are drawn in every output of a report (see [`overlay`]).

    Args:
        colormap (`str`, *optional*, defaults to ``"jet"``): colour map name.
        alpha (`float`, *optional*, defaults to 0.5): opacity of the colour layer.
        normalize (`bool`, *optional*, defaults to `True`): min-max each map over its cells before colouring.
        min_size (`int`, *optional*, defaults to 256): small images are enlarged (by whole factors) until their
            longer side reaches this many pixels, so maps of tiny scenes stay readable.
        max_size (`int`, *optional*, defaults to 768): large images are shrunk to this longer side.
    """

    colormap: str = DEFAULT_COLORMAP
    alpha: float = 0.5
    normalize: bool = True
    min_size: int | None = 256
    max_size: int | None = 768

    def draw(self, image: Image.Image, relevancy_map: torch.Tensor) -> Image.Image:
        """`relevancy_map` `(h, w)` over `image`, sized for display."""
        return overlay(
            image,
            relevancy_map,
            alpha=self.alpha,
            colormap=self.colormap,
            normalize=self.normalize,
            size=display_size(image.size, self.min_size, self.max_size),
        )

    def base(self, image: Image.Image) -> Image.Image:
        """`image` alone at the size its overlays have."""
        return resize_for_display(image, display_size(image.size, self.min_size, self.max_size))


def image_bytes(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, optimize=True, **({"quality": 88} if image_format == "JPEG" else {}))
    return buffer.getvalue()
