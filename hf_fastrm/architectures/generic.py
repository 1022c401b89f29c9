"""The placeholder-token pattern, for any family: image/video features written over placeholder ids in the decoder.

Most vision-language models in transformers (LLaVA and its many descendants, Qwen-VL, GLM-4V, Gemma, Janus, ...)
encode each image into a run of features and write them over placeholder tokens (``config.image_token_id``,
``video_token_id``, or their ``*_index`` spellings) in the language model's input sequence. What a
[`PlaceholderAdapter`] knows without family-specific code:

* positions: the tokens whose id is a placeholder id (from the config or its `text_config`);
* grids, from the processor outputs the forward received, each checked against the token count it must explain:

  - ``image_grid_thw`` / ``video_grid_thw`` with the vision tower's merge size (Qwen-VL style): one
    ``(h / merge, w / merge)`` grid per image, ``(t, h / merge, w / merge)`` per video;
  - ``image_sizes`` (pixels) with the tower's patch size and merge size: ``(height / (patch * merge), width /
    (patch * merge))`` when that product is the image's token count;
  - ``spatial_shapes`` (patch rows and columns, SigLIP2 NaFlex towers) over ``downsample_factor``, likewise checked;
  - otherwise each image's token count (the placeholder run between non-placeholder tokens, or the batch's tokens
    shared evenly by the images the pixel values hold): a square grid when the vision config says the tower
    outputs a square of that many tokens (``(image_size / patch_size / k)^2`` for an integer pooling ``k``);
* an honest 1-D layout when none of that applies: the grid is a 1-D tensor of the image's tokens in prompt order,
  and `relevancy_maps()` warns that no 2-D patch grid is known instead of guessing one.

The language model and its final norm are found under the attribute spellings transformers uses
(``model.model.language_model``, ``model.language_model``, ``model.model.text_model``, ``model.model`` for models
whose decoder is the base model, ...).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, RowImageLayout
from .grids import MediaPlan, assign_media, consecutive_runs, merge_rows, per_item_list, token_positions

IMAGE_ID_NAMES = ("image_token_id", "image_token_index")
VIDEO_ID_NAMES = ("video_token_id", "video_token_index")
LANGUAGE_MODEL_PATHS = (
    "model.language_model",
    "language_model",
    "model.text_model",
    "model.llm",
    "model.text_decoder",
    "model.decoder",
    "model",
)
NORM_NAMES = ("norm", "final_layernorm", "final_norm", "ln_f", "norm_f", "final_layer_norm", "embedding_norm")
"""Final-norm spellings, in order (LFM2 calls its final norm ``embedding_norm``)."""
LAYER_NAMES = ("layers", "h", "blocks")


def config_token_id(config: Any, names: tuple[str, ...]) -> int | None:
    """The first of `names` set on `config` or on its text config (`None` when none is)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else None
    for holder in (config, text_config):
        for name in names:
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and not isinstance(value, bool):
                return int(value)
    return None


def has_placeholder_tokens(config: Any) -> bool:
    """Whether `config` names an image placeholder token id (the pattern [`PlaceholderAdapter`] serves)."""
    return config_token_id(config, IMAGE_ID_NAMES) is not None


def _attribute_path(root: nn.Module, path: str) -> nn.Module | None:
    module: Any = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _layers_of(module: nn.Module) -> nn.ModuleList | None:
    for name in LAYER_NAMES:
        layers = getattr(module, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    return None


def _vision_value(config: Any, *names: str) -> int | None:
    for holder in (getattr(config, "vision_config", None), config):
        for name in names:
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int | float) and not isinstance(value, bool) and value:
                return int(value)
            if isinstance(value, list | tuple) and value and isinstance(value[0], int):
                return int(value[0])
    return None


class PlaceholderAdapter(ArchitectureAdapter):
    """An adapter for any family that writes image (and video) features over placeholder tokens.

    Args:
        model_types: the ``config.model_type`` values it serves (empty for the fallback instance that
            [`get_adapter`] hands to an unregistered family).
        family: the family's name for docs and errors.
        tested_configs: the suite's cases for it (``"<model_type>[-variant]: what it covers"``).
        teacher_support: one line for docs/supported-models.md.
        grid_description: one line for docs/supported-models.md (defaults to what this class derives).
        patch_grids: `False` for families whose image tokens are resampled latents (perceiver, Q-Former): no patch
            grid exists, every image is one 1-D grid whatever its token count.
    """

    family = "placeholder-token families (generic adapter)"
    grid_description = (
        "generic: positions from the config's image/video placeholder ids; grids from `image_grid_thw` (+ merge "
        "size), `image_sizes` (+ patch and merge size) or a square token count the vision config confirms; else "
        "one 1-D grid per image in prompt order"
    )
    teacher_support = "yes"

    def __init__(
        self,
        model_types: tuple[str, ...] = (),
        *,
        family: str | None = None,
        tested_configs: tuple[str, ...] = (),
        teacher_support: str | None = None,
        grid_description: str | None = None,
        patch_grids: bool = True,
    ) -> None:
        self.model_types = tuple(model_types)
        self.patch_grids = patch_grids
        if family is not None:
            self.family = family
        self.tested_configs = tuple(tested_configs)
        if teacher_support is not None:
            self.teacher_support = teacher_support
        if grid_description is not None:
            self.grid_description = grid_description

    # ------------------------------------------------------------------ modules
    def language_model(self, model: nn.Module) -> nn.Module:
        for path in LANGUAGE_MODEL_PATHS:
            module = _attribute_path(model, path)
            if module is not None and _layers_of(module) is not None and self._norm_of(module) is not None:
                return module
        raise ValueError(
            f"Cannot find the text decoder of {type(model).__name__}: none of "
            f"{', '.join('model.' + p for p in LANGUAGE_MODEL_PATHS)} has decoder layers and a final norm. Subclass "
            "`hf_fastrm.ArchitectureAdapter` and override `language_model` / `final_norm` for this family."
        )

    @staticmethod
    def _norm_of(module: nn.Module) -> nn.Module | None:
        for name in NORM_NAMES:
            norm = getattr(module, name, None)
            if isinstance(norm, nn.Module):
                return norm
        return None

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self._norm_of(self.language_model(model))

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return _layers_of(self.language_model(model))

    # ------------------------------------------------------------------ tokens
    def image_token_id(self, config: Any) -> int:
        token_id = config_token_id(config, IMAGE_ID_NAMES)
        if token_id is None:
            raise ValueError(
                f"{type(config).__name__} names no image placeholder token (`image_token_id` / `image_token_index`), "
                "so the generic adapter cannot find the image tokens. Register an adapter for this family."
            )
        return token_id

    def video_token_id(self, config: Any) -> int | None:
        token_id = config_token_id(config, VIDEO_ID_NAMES)
        return None if token_id == self.image_token_id(config) else token_id

    def merge_size(self, config: Any) -> int:
        return _vision_value(config, "spatial_merge_size", "merge_size", "merge_kernel_size") or 1

    # ------------------------------------------------------------------ layout
    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        family = getattr(config, "model_type", None) or type(config).__name__
        image_positions = token_positions(input_ids, self.image_token_id(config))
        grids = [self._media_grids(config, image_positions, model_kwargs, "image", family)]
        positions = image_positions
        video_id = self.video_token_id(config)
        if video_id is not None:
            video_positions = token_positions(input_ids, video_id)
            grids.append(self._media_grids(config, video_positions, model_kwargs, "video", family))
            positions = [torch.cat(pair).sort().values for pair in zip(image_positions, video_positions, strict=True)]
        return merge_rows(positions, *grids)

    def _media_grids(
        self, config: Any, positions: list[torch.Tensor], kwargs: dict[str, Any], kind: str, family: str
    ) -> list[list[tuple[str, torch.Tensor]]]:
        grid_thw = per_item_list(kwargs.get(f"{kind}_grid_thw"))
        if grid_thw:
            merge = self.merge_size(config)
            return assign_media(
                positions,
                lambda item, row: self._thw_plan(grid_thw[item], merge, squeeze_time=kind == "image"),
                kind=kind,
                num_items=len(grid_thw),
                family=family,
            )
        if kind == "image" and kwargs.get("spatial_shapes") is not None:
            plans = self._spatial_shape_plans(config, kwargs["spatial_shapes"], positions)
            if plans is not None:
                return assign_media(
                    positions, lambda item, row: plans[item], kind=kind, num_items=len(plans), family=family
                )
        if kind == "image" and kwargs.get("image_sizes") is not None:
            plans = self._image_size_plans(config, kwargs["image_sizes"], positions)
            if plans is not None:
                return assign_media(
                    positions, lambda item, row: plans[item], kind=kind, num_items=len(plans), family=family
                )
        counts = self._even_counts(positions, kwargs, kind)
        if counts is not None:
            return assign_media(
                positions,
                lambda item, row: self._count_plan(config, counts),
                kind=kind,
                num_items=None,
                family=family,
            )
        # one item per run of consecutive placeholders
        result = []
        for row_positions in positions:
            row_grids = []
            for local, (start, length) in enumerate(consecutive_runs(row_positions)):
                plan = self._count_plan(config, length)
                for suffix, offsets in plan.grids:
                    row_grids.append((f"{kind} {local} {suffix}".rstrip(), row_positions[start + offsets]))
            result.append(row_grids)
        return result

    @staticmethod
    def _thw_plan(grid_thw: list[int], merge: int, squeeze_time: bool) -> MediaPlan:
        frames, height, width = (int(v) for v in grid_thw)
        height, width = height // merge, width // merge
        grid = torch.arange(frames * height * width).view(frames, height, width)
        return MediaPlan(frames * height * width, [("", grid[0] if squeeze_time and frames == 1 else grid)])

    def _image_size_plans(self, config: Any, image_sizes: Any, positions: list[torch.Tensor]) -> list | None:
        """Per image a `(height / (patch * merge), width / (patch * merge))` grid, if those products add up to
        the prompt's image tokens; `None` otherwise (then `image_sizes` means something else in this family)."""
        patch = _vision_value(config, "patch_size")
        if not patch:
            return None
        step = patch * self.merge_size(config)
        sizes = per_item_list(image_sizes)
        try:
            shapes = [(int(size[0]) // step, int(size[1]) // step) for size in sizes]
        except (TypeError, IndexError, ValueError):
            return None
        if sum(h * w for h, w in shapes) != sum(int(p.numel()) for p in positions):
            return None
        return [MediaPlan(h * w, [("", torch.arange(h * w).view(h, w))]) for h, w in shapes]

    def _spatial_shape_plans(self, config: Any, spatial_shapes: Any, positions: list[torch.Tensor]) -> list | None:
        """Per image a `(rows / f, cols / f)` grid from `spatial_shapes` (patch rows and columns, SigLIP2 NaFlex)
        and the pixel-unshuffle factor ``f`` (``downsample_factor``), if those products are the image tokens."""
        factor = int(getattr(config, "downsample_factor", None) or 1)
        shapes = [(int(h) // factor, int(w) // factor) for h, w in per_item_list(spatial_shapes)]
        if not shapes or sum(h * w for h, w in shapes) != sum(int(p.numel()) for p in positions):
            return None
        return [MediaPlan(h * w, [("", torch.arange(h * w).view(h, w))]) for h, w in shapes]

    @staticmethod
    def _even_counts(positions: list[torch.Tensor], kwargs: dict[str, Any], kind: str) -> int | None:
        """Tokens per item when the pixel values hold `n` items of one shape and the prompts `n * k` tokens."""
        pixel_values = kwargs.get("pixel_values" if kind == "image" else "pixel_values_videos")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() < 4:
            return None
        items = int(pixel_values.shape[0]) * (int(pixel_values.shape[1]) if pixel_values.dim() == 6 else 1)
        total = sum(int(p.numel()) for p in positions)
        if items == 0 or total % items or total == 0:
            return None
        return total // items

    def _count_plan(self, config: Any, count: int) -> MediaPlan:
        """A square grid when the vision config says the tower gives a square of `count` tokens, else 1-D."""
        if not self.patch_grids:
            return MediaPlan(count, [("", torch.arange(count))])
        side = math.isqrt(count)
        image_size = _vision_value(config, "image_size")
        patch = _vision_value(config, "patch_size")
        if side * side == count and image_size and patch and image_size % patch == 0:
            patches = image_size // patch
            if patches % side == 0:
                return MediaPlan(count, [("", torch.arange(count).view(side, side))])
        return MediaPlan(count, [("", torch.arange(count))])
