"""Tiny models of the placeholder-token families as a TABLE: one row per model type, shared helpers do the rest.

Each [`TableEntry`] names a model type of transformers' image-text-to-text mapping and only what differs from
the shared recipe: config overrides (sizes as small as transformers' own `ModelTester` classes use: hidden 32,
2 layers, 4 heads, a vision tower of 2 layers on images of a few patches) and how its pixel inputs look. The
shared helpers

* shrink the family's default config (every size attribute of the config and its sub-configs that exists), remap
  its special token ids into a 256-token vocabulary and suppress them in generation;
* build the pixel inputs the model's own vision tower expects (a batch of square images, or Qwen-style flattened
  patches with `image_grid_thw`), ask the model's own `get_image_features` how many features each image gives, and
  write that many placeholder tokens into two left-padded prompt rows (one and two images);
* compute the grids the layout must give from those same numbers (never from the adapter under test).

`TABLE` is public: the shared suite (tests/models/test_families.py) and the generation-mode matrix iterate over
`table_cases()`, so a new row joins every check.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from family_builders import BOS, EOS, PAD, FamilyCase, left_pad

VOCAB = 256
FIRST_SPECIAL = 200
"""Special token ids (placeholders, markers) are remapped to FIRST_SPECIAL, FIRST_SPECIAL + 1, ..."""

SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "num_heads": 4,
    "depth": 2,
    "embed_dim": 32,
    "out_hidden_size": 32,
    "projection_dim": 32,
    "text_hidden_size": 32,
    "projection_hidden_dim": 32,
    "projection_hidden_size": 32,
    "projector_hidden_size": 32,
    "moe_intermediate_size": 16,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "v_head_dim": 8,
    "qk_head_dim": 8,
    "index_head_dim": 8,
    "index_n_heads": 2,
    "swa_head_dim": 8,
    "dense_intermediate_size": 37,
    "shared_intermediate_size": 16,
    "shared_experts_intermediate_size": 16,
    "merged_hidden_size": 128,
    "max_position_embeddings": 512,
    "max_window_layers": 2,
    "sliding_window": 64,
}
"""Size attributes set wherever a config (or one of its sub-configs) has them."""


@dataclass
class TableEntry:
    """One family of the table.

    Attributes:
        model_type: ``config.model_type``; the case name is ``model_type`` (plus ``-variant``).
        config_kwargs: passed to `AutoConfig.for_model` (sub-configs a default config leaves out, as Gemma 4's
            ``vision_config={}``); shrunk like the rest.
        overrides: attribute -> value on the shrunk config; ``"text_config.x"`` / ``"vision_config.x"`` reach a
            sub-config.
        pixels: ``"square"`` (`(images, channels, size, size)` with the vision config's image size), ``"thw"``
            (Qwen-style flattened patches with `image_grid_thw`), ``"sizes"`` (square plus `image_sizes`), ``"5d"``
            (`(images, 1, channels, size, size)`), or `config -> (pixel inputs, grid shapes)` for a family whose real
            image processor builds them (the grid shapes from the processor's own numbers; per image one shape, or
            `(suffix, shape)` pairs for an image of several views).
        image_size: the square images' side in pixels (defaults to the vision config's `image_size`).
        thw: the `image_grid_thw` rows of the three images, for ``pixels="thw"``.
        patch_shape: ``"flat"`` (`(patches, channels * temporal * patch**2)`) or ``"chw"`` (`(patches, channels,
            patch, patch)`) for ``pixels="thw"``.
        grid: the grid shape each image must get (`None`: `(features,)`, 1-D; ``"square"``: sqrt of the features;
            ``"thw"``: `(h / merge, w / merge)`); from the model's own numbers.
        extra_inputs: `(model, inputs) -> dict` of more forward inputs (`mm_token_type_ids`, ...).
        extra_pixels: `(config, pixel inputs) -> dict` of more image inputs the tower needs (a high-resolution
            copy, a pixel mask).
        mrope: the model computes its own position ids.
        vision_stand_in: `config -> vision config` put in place of the family's own vision config before the model
            is built (a tower transformers builds natively, for families whose own tower needs a library this
            environment lacks, e.g. timm); the adapter under test never looks inside the tower.
        image_text: `(config, pixel inputs, image index, features) -> token ids` standing for one image in the
            prompt, as the family's processor writes them (markers around the placeholders); default: `features`
            placeholder tokens.
        teacher_issue: why the teacher fails on this family (the test is then an xfail).
        slow: keep the case out of the default run.
        notes: one line for docs/supported-models.md.
        image_tokens: `(config, image_id, grid shape) -> token ids` of one image in the prompt, for families whose
            processor writes more than a run of placeholders (Fuyu: a newline token after each row; Apertus: rows
            split by end-of-line tokens between begin/end markers); needs ``pixels`` as a callable (the grid shapes
            come from it).
        media: ``"image"``, or ``"video"`` for a family whose only media placeholder is a video token (its pixel
            inputs are then videos, counted by ``get_video_features``, and its grids labelled ``"video i"``).
        image_mask_input: for a family without placeholder ids (Kosmos-2), the input that marks image tokens with 1:
            the prompt gets ordinary ids there (as its processor writes) and this mask.
        images_per_row: images in the first and the second prompt row ((1, 1) for processors that take one image
            per prompt).
        prepended: the model puts the images in front of the prompt (GIT): the prompt holds no image token, and
            `pixels` (a callable) gives the grids.
    """

    model_type: str
    overrides: dict[str, Any] = field(default_factory=dict)
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    pixels: str | Callable[[Any], tuple[dict[str, Any], list[tuple[int, ...]]]] = "square"
    image_size: int | None = None
    thw: tuple[tuple[int, int, int], ...] = ((1, 4, 4), (1, 4, 6), (1, 6, 4))
    grid: str | None = "square"
    patch_shape: str = "flat"
    extra_inputs: Callable[[torch.nn.Module, dict[str, Any]], dict[str, Any]] | None = None
    extra_pixels: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    mrope: bool = False
    vision_stand_in: Callable[[Any], Any] | None = None
    image_text: Callable[[Any, dict[str, Any], int, int], list[int]] | None = None
    teacher_issue: str | None = None
    slow: bool = False
    notes: str = ""
    variant: str = ""
    image_tokens: Callable[[Any, int, tuple[int, ...]], list[int]] | None = None
    media: str = "image"
    image_mask_input: str | None = None
    images_per_row: tuple[int, int] = (1, 2)
    prepended: bool = False

    @property
    def name(self) -> str:
        return f"{self.model_type}-{self.variant}" if self.variant else self.model_type


# ---------------------------------------------------------------------------------------------------- helpers
def sub_configs(config: Any) -> list[Any]:
    """`config` and every config nested in it (text, vision, audio, projector, ...), depth first."""
    found, stack, seen = [], [config], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        for value in vars(current).values():
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):
                stack.append(value)
    return found


def shrink(config: Any) -> dict[str, int]:
    """Sets every size attribute in `SIZES` that a (sub-)config has, cuts per-layer lists to 2 layers, and remaps
    the special token ids into the tiny vocabulary. Returns old -> new token ids."""
    remap: dict[int, int] = {}
    for sub in sub_configs(config):
        for name, value in SIZES.items():
            try:
                current = getattr(sub, name, None)
            except Exception:
                continue
            if (isinstance(current, int) and not isinstance(current, bool)) or (
                name == "head_dim" and current is None
            ):
                setattr(sub, name, value)
        rope = getattr(sub, "rope_parameters", None)
        if isinstance(rope, dict) and "mrope_section" in rope:  # 3-D rotary sections must fill head_dim / 2 = 4
            rope["mrope_section"] = [2, 1, 1]
            if "partial_rotary_factor" in rope:
                rope["partial_rotary_factor"] = 1.0
            if isinstance(getattr(sub, "partial_rotary_factor", None), float):
                sub.partial_rotary_factor = 1.0
        patch, size = getattr(sub, "patch_size", None), getattr(sub, "image_size", None)
        if isinstance(patch, int) and isinstance(size, int) and size > 4 * patch:
            sub.image_size = 4 * patch
        for name in ("vocab_size", "vocab_size_per_layer_input"):
            if isinstance(getattr(sub, name, None), int):
                setattr(sub, name, VOCAB)
        for name in ("layer_types", "mlp_layer_types"):
            value = getattr(sub, name, None)
            if isinstance(value, list) and len(value) > 2:  # the first kind and the first other kind (hybrids)
                setattr(sub, name, [value[0], next((kind for kind in value if kind != value[0]), value[1])])
        for name, value in list(vars(sub).items()):
            if name.endswith(("_token_id", "_token_index")) and isinstance(value, int) and value >= FIRST_SPECIAL:
                remap.setdefault(value, FIRST_SPECIAL + len(remap))
                setattr(sub, name, remap[value])
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if hasattr(sub, name):
                setattr(sub, name, {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}[name])
    return remap


def set_path(config: Any, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    target = config
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)


def _features_per_image(output: Any, num_images: int, sizes: list[int] | None = None) -> list[int]:
    """Feature rows per image from `get_image_features`' output (tensor, list of tensors, or a model output);
    `sizes` (the processor's per-image counts) split one tensor of all images' features when its rows add up."""
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        output = output.pooler_output
    elif getattr(output, "deepstack_features", None):  # Granite 4 Vision: only (layer, per-image list) pairs
        output = output.deepstack_features[0][1]
    elif hasattr(output, "last_hidden_state"):
        output = output.last_hidden_state
    if isinstance(output, list | tuple):
        if len(output) == num_images:
            return [int(item.reshape(-1, item.shape[-1]).shape[0]) for item in output]
        output = torch.cat([item.reshape(-1, item.shape[-1]) for item in output])
    if output.dim() == 3 and output.shape[0] == num_images:
        return [int(output.shape[1])] * num_images
    total = int(output.reshape(-1, output.shape[-1]).shape[0])
    if sizes is not None and total == sum(sizes):
        return list(sizes)
    return [total // num_images] * num_images


def pixel_inputs(entry: TableEntry, config: Any) -> tuple[dict[str, torch.Tensor], int]:
    """The images' pixel inputs as the vision tower expects them (`sum(entry.images_per_row)` images, or one per
    `entry.thw` row), and their count."""
    vision = config.vision_config
    generator = torch.Generator().manual_seed(0)
    channels = getattr(vision, "num_channels", None) or getattr(vision, "in_channels", None) or 3
    if pixel_kind(entry, config) == "thw":
        patch = vision.patch_size
        temporal = getattr(vision, "temporal_patch_size", None) or getattr(vision, "patch_temporal", None) or 1
        rows = sum(t * h * w for t, h, w in entry.thw)
        if entry.patch_shape == "chw":
            pixel_values = torch.randn(rows, channels, patch, patch, generator=generator)
        else:
            pixel_values = torch.randn(rows, channels * temporal * patch * patch, generator=generator)
        return {"pixel_values": pixel_values, "image_grid_thw": torch.tensor(entry.thw)}, len(entry.thw)
    size = entry.image_size or vision.image_size
    size = size if isinstance(size, int) else size[0]
    count = sum(entry.images_per_row)
    pixel_values = torch.randn(count, channels, size, size, generator=generator)
    if entry.pixels == "sizes":  # Pixtral-style towers: one image size per image
        return {"pixel_values": pixel_values, "image_sizes": torch.tensor([[size, size]] * count)}, count
    if entry.pixels == "5d":  # (batch, images, channels, height, width), Idefics2-style
        return {"pixel_values": pixel_values.unsqueeze(1)}, count
    return {"pixel_values": pixel_values}, count


def pixel_kind(entry: TableEntry, config: Any) -> str:
    """``"thw"`` for Qwen-style towers (flattened patches and `image_grid_thw`), else the entry's kind."""
    if callable(entry.pixels):
        return "processor"
    vision = config.vision_config
    qwen_style = getattr(vision, "temporal_patch_size", None) or getattr(vision, "spatial_merge_size", None)
    if entry.pixels == "square" and getattr(vision, "image_size", None) is None and qwen_style:
        return "thw"
    return entry.pixels


def build_entry(entry: TableEntry) -> tuple[torch.nn.Module, dict[str, Any], list[list[tuple[str, tuple]]]]:
    """The tiny model, its inputs (two rows: one image, then two) and the grids they must give."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.for_model(entry.model_type, **entry.config_kwargs)
    remap = shrink(config)
    for path, value in entry.overrides.items():
        set_path(config, path, value)
    if entry.vision_stand_in is not None:  # past the strict dataclass check: the field's type is the family's own
        object.__setattr__(config, "vision_config", entry.vision_stand_in(config))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    config = model.config
    if callable(entry.pixels):
        pixels, processor_shapes = entry.pixels(config)
        num_images = len(processor_shapes)
    else:
        pixels, num_images = pixel_inputs(entry, config)
        processor_shapes = None
    if entry.extra_pixels is not None:
        pixels |= entry.extra_pixels(config, pixels)
    if entry.prepended:
        counts = [0] * num_images  # no token of the prompt holds the image
    else:
        encode = media_encoder(model, entry.media)
        if "image_merge_sizes" in inspect.signature(encode).parameters:  # VideoLLaMA3
            pixels["image_merge_sizes"] = torch.full((num_images,), merge_size(config), dtype=torch.long)
        with torch.no_grad():
            sizes = [grid_cells(shape) for shape in processor_shapes] if processor_shapes else None
            counts = _features_per_image(encode(**pixels), num_images, sizes)
    rows, marks = prompt_rows(entry, config, counts, processor_shapes, pixels)
    inputs = left_pad(rows) | pixels
    padded = left_pad(marks)
    image_marks = padded["input_ids"] * padded["attention_mask"]  # 1 on image tokens, 0 on padding
    if entry.image_mask_input is not None:
        inputs[entry.image_mask_input] = image_marks
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:  # 1 on image tokens, as processors write
        inputs["mm_token_type_ids"] = image_marks
    if entry.extra_inputs is not None:
        inputs |= entry.extra_inputs(model, inputs)
    finish_table_model(model, entry.name, remap)
    shapes = processor_shapes or [grid_shape(entry, config, counts[i], i) for i in range(num_images)]
    kind, first = entry.media, entry.images_per_row[0]
    expected = [
        [grid for i in range(first) for grid in image_grids(i, shapes[i], kind)],
        [grid for i in range(entry.images_per_row[1]) for grid in image_grids(i, shapes[first + i], kind)],
    ]
    return model, inputs, expected


def grid_cells(shape: tuple[int, ...] | list[tuple[str, tuple[int, ...]]]) -> int:
    """Cells of one image's grid, or of all its views' grids (`(suffix, shape)` pairs)."""
    if isinstance(shape, list):
        return sum(math.prod(grid) for _, grid in shape)
    return math.prod(shape)


def image_grids(
    local: int, shape: tuple[int, ...] | list[tuple[str, tuple[int, ...]]], kind: str = "image"
) -> list[tuple[str, tuple]]:
    """The expected `(label, shape)` grids of one image (or video): one grid, or `(suffix, shape)` pairs of a
    multi-view image (``"image 0 base"``, ``"image 0 tiles"``)."""
    if isinstance(shape, list):
        return [(f"{kind} {local} {suffix}", tuple(grid)) for suffix, grid in shape]
    return [(f"{kind} {local}", shape)]


def config_id(config: Any, names: tuple[str, ...]) -> int:
    for holder in (config, config.get_text_config()):
        for name in names:
            if isinstance(getattr(holder, name, None), int):
                return int(getattr(holder, name))
    raise ValueError(f"{type(config).__name__} has no {names}")


def grid_shape(entry: TableEntry, config: Any, count: int, image: int) -> tuple[int, ...]:
    if entry.grid == "thw" or (entry.grid == "square" and pixel_kind(entry, config) == "thw"):
        merge = merge_size(config)
        _, h, w = entry.thw[image]
        return (h // merge, w // merge)
    if entry.grid == "square":
        side = math.isqrt(count)
        assert side * side == count, f"{entry.name}: {count} features per image is not a square"
        return (side, side)
    return (count,)


def merge_size(config: Any) -> int:
    """The vision tower's spatial merge (``spatial_merge_size``, ``merge_size`` or ``merge_kernel_size``)."""
    for name in ("spatial_merge_size", "merge_size", "merge_kernel_size"):
        value = getattr(config.vision_config, name, None)
        if value:
            return int(value[0] if isinstance(value, list | tuple) else value)
    return 1


def finish_table_model(model: torch.nn.Module, name: str, remap: dict[int, int]) -> None:
    """Generation ids set, the special tokens suppressed (a random tiny model would otherwise write image tokens),
    a stable `_name_or_path` for the head's check."""
    vocab = model.config.get_text_config().vocab_size
    model.generation_config.suppress_tokens = sorted(set(range(FIRST_SPECIAL, vocab)) | set(remap.values()))
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    model.config._name_or_path = f"hf-fastrm/tiny-{name}"


def table_case(entry: TableEntry) -> FamilyCase:
    """A [`FamilyCase`] of the shared suite from a table row (the model is built on first use)."""
    expected: list = []

    def build():
        model, inputs, grids = build_entry(entry)
        expected[:] = grids
        return model, inputs

    case = FamilyCase(
        entry.name,
        build,
        expected,
        mrope=entry.mrope,
        teacher_issue=entry.teacher_issue,
        slow=entry.slow,
        image_mask_input=entry.image_mask_input,
    )
    case.notes = entry.notes
    return case


# --- qwenlike
HIGH_IDS = {"image_token_id": 200, "video_token_id": 201, "vision_start_token_id": 202, "vision_end_token_id": 203}
"""Special ids for configs whose defaults sit inside the tiny vocabulary's word range (shrink only remaps ids at or
above FIRST_SPECIAL), so prompt words cannot collide with them."""
HY_V4 = {
    "text_config.qk_rope_head_dim": 8,
    "text_config.head_dim": 8,
    "text_config.qk_head_dim": 12,
    "text_config.index_head_dim": 16,
    "text_config.num_key_value_heads": 4,
}
"""HY-V4-VL's rotary embedding is as wide as the MLA rope slice (its config sets `head_dim = qk_rope_head_dim`,
which `shrink` undoes) and its 3-D split needs `mrope_section` to fill half of it: rope slice 8, sections [2, 1, 1].
MLA expands one key/value per query head (its config ties `num_key_value_heads` to the heads)."""
ERNIE = {
    "text_config.rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [1, 1, 2]},
    "text_config.moe_num_experts": 4,
    "text_config.moe_k": 2,
    "text_config.moe_num_shared_experts": 1,
    "text_config.moe_intermediate_size": [16, 16],
}
"""ERNIE 4.5 VL: its rotary embedding pre-rotates the height/width frequencies and keeps the last `mrope_section[2]`
for time, so the sections must fill head_dim / 2 = 4 with equal height and width parts ([1, 1, 2]); its MoE sizes
(text and vision experts) have names of their own."""
QWEN4_EXP = {
    "text_config.indexer_n_heads": 2,
    "text_config.indexer_kv_heads": 1,
    "text_config.indexer_head_dim": 8,
    "text_config.indexer_budget": 8,
    "text_config.indexer_compress_ratio": 2,
    "text_config.hc_lowrank": 8,
    "text_config.linear_key_head_dim": 8,
    "text_config.linear_value_head_dim": 8,
    "text_config.linear_num_key_heads": 2,
    "text_config.linear_num_value_heads": 4,
    "text_config.shared_expert_intermediate_size": 16,
}
"""Qwen4-Exp: its full-attention layers always build a QSA token indexer (heads, one key head, budget divisible by
the compress ratio; a budget of 8 tokens, 4 blocks of 2, so the tiny prompts' attention is really sparse), and its
Gated DeltaNet and hyper-connection sizes have names of their own."""
GLM5_NEXT = {
    "text_config.layer_types": ["linear_attention", "indexed_attention"],
    "text_config.mlp_layer_types": ["dense", "sparse"],
    "text_config.indexer_types": ["full", "full"],
    "text_config.num_key_value_heads": 4,
    "text_config.qk_rope_head_dim": 0,
    "text_config.head_dim": 0,
    "text_config.qk_nope_head_dim": 8,
    "text_config.qk_head_dim": 8,
    "text_config.linear_head_dim": 8,
    "text_config.linear_num_heads": 4,
    "text_config.index_kpool": 2,
    "text_config.index_topk": 64,
}
"""GLM-5.3-Flash (glm5_next): a NoPE MLA decoder (its config ties `head_dim` to `qk_rope_head_dim = 0` and one
key/value head per query head, which `shrink` undoes) whose default schedule makes a 2-layer model all linear
attention: one KDA layer and one DSA-indexed MLA layer here. The indexer's budget (64 tokens, pools of 2) covers the
tiny prompts: with a budget of 3 pools, plain generate() (without FastRM) decoded a step whose last hidden state differs
by 0.6 from a full forward of the same sequence (rows stopping at different steps), 0 with this budget. Not diagnosed
further; a likely cause is that the indexer's ReLU'd pool scores are exactly 0 for many pools of a random tiny model,
so `topk` breaks ties, which may differ between a decoding step and a full forward."""
# --- timm: stand-in vision towers for families whose own tower is a timm model
NO_TIMM = "timm cannot be installed beside the CPU torch here (it imports torchvision, whose PyPI wheel fails to load)"
TOWER_FIELDS = ("vocab_size", "vocab_offset", "rms_norm_eps")
"""Fields of the family's own vision config that its model code reads beside the tower (Gemma 3n's embedder)."""


def vision_stand_in(model_type: str, **kwargs: Any) -> Callable[[Any], Any]:
    """`config -> vision config`: a tiny transformers-native tower of `model_type` carrying the family's own
    `TOWER_FIELDS` (and `kwargs`, e.g. the ``hidden_size`` / ``model_args`` the projector reads)."""

    def build(config: Any) -> Any:
        from transformers import AutoConfig

        own = {
            name: getattr(config.vision_config, name) for name in TOWER_FIELDS if hasattr(config.vision_config, name)
        }
        return AutoConfig.for_model(model_type, **(own | kwargs))

    return build


CONVNEXT_STAND_IN = {"num_stages": 1, "hidden_sizes": [32], "depths": [1], "patch_size": 4, "image_size": 16}
"""One ConvNeXt stage, 32 channels, patch 4 on 16 px images: a `(batch, 32, 4, 4)` map, the `(batch, channels,
height, width)` layout timm's convolutional towers (FastViT, MobileNet v5) hand to the projector."""
CLIP_STAND_IN = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
CLIP_STAND_IN |= {"patch_size": 4, "image_size": 16, "model_args": {"embed_dim": 32}}
"""A CLIP ViT (class token first, as Perception LM's timm ViT gives) of 4 x 4 patches; `model_args.embed_dim` is
what Perception LM's projector reads for its input width."""


GEMMA3N_TEXT = {
    "num_hidden_layers": 2,
    "intermediate_size": 37,
    "layer_types": ["sliding_attention", "full_attention"],
    "activation_sparsity_pattern": [0.95, 0.0],
    "num_kv_shared_layers": 0,
}
"""Gemma 3n's per-layer lists for 2 layers (the default config's 35-entry lists do not shrink with the layer count);
no KV-shared layers (with 2 layers both kinds must produce their own cache)."""


def nemotron_omni_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Nemotron 3 Nano Omni's image inputs: flattened RADIO patches of 4x4, 4x6 and 6x4 patch images with
    `image_grid_hw`; each grid is the patch grid pixel-shuffled by `downsample_ratio` (0.5)."""
    vision = config.vision_config
    shapes = [(4, 4), (4, 6), (6, 4)]
    width = vision.num_channels * vision.patch_size**2
    pixel_values = torch.randn(sum(h * w for h, w in shapes), width, generator=torch.Generator().manual_seed(0))
    factor = round(1 / config.downsample_ratio)
    return {"pixel_values": pixel_values, "image_grid_hw": torch.tensor(shapes)}, [
        (h // factor, w // factor) for h, w in shapes
    ]


NEMOTRON_OMNI = {
    "image_token_id": 240,  # the default config names none (checkpoints set `img_context_token_id`)
    "vision_hidden_size": 32,
    "projector_hidden_size": 32,
    "audio_config": None,
    "text_config.layers_block_type": ["linear_attention", "full_attention", "moe"],
    "text_config.num_hidden_layers": 3,
}
"""A decoder of one layer of each kind with an attention layer (a cache of Mamba layers only has no length)."""
# --- vq: helpers
VQ_CODES = 16
"""Codebook entries of the tiny VQ-VAEs; their vocabulary ids are FIRST_SPECIAL + 10 + code (suppressed)."""


def vq_vocabulary(code_name: Callable[[int], str], extra: dict[str, int] | None = None) -> dict[str, int]:
    """A VQ family's `vocabulary_map` (name -> id): ``<image>`` at FIRST_SPECIAL (the placeholder the shrunk config
    keeps), `extra` names, and each code `i` under `code_name(i)` at FIRST_SPECIAL + 10 + i."""
    vocabulary = {"<image>": FIRST_SPECIAL, **(extra or {})}
    vocabulary |= {code_name(code): FIRST_SPECIAL + 10 + code for code in range(VQ_CODES)}
    return vocabulary


def chameleon_code(code: int) -> str:
    """Chameleon's spelling of VQ code `code`: ``IMGIMG`` + its digits as letters (0 -> A) + ``Z``."""
    return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"


def vq_images(sizes: list[tuple[int, int]], factor: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """`(images, 3, H, W)` random pixels padded to the largest size (as Emu3's image processor pads), and each
    image's VQ latent grid `(height / factor, width / factor)`."""
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), 3, height, width)
    generator = torch.Generator().manual_seed(0)
    for index, (h, w) in enumerate(sizes):
        pixel_values[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
    return pixel_values, [(h // factor, w // factor) for h, w in sizes]


def chameleon_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Three square 8x8 images (Chameleon's processor crops square); the VQ-VAE's 2 levels halve them: 4x4 codes."""
    pixel_values, shapes = vq_images([(8, 8)] * 3, 2 ** (len(config.vq_config.channel_multiplier) - 1))
    return {"pixel_values": pixel_values}, shapes


def emu3_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Images of 16x16, 16x24 and 24x16 pixels padded to 24x24 with their `image_sizes`; f = 4: 4x4, 4x6, 6x4 codes."""
    sizes = [(16, 16), (16, 24), (24, 16)]
    pixel_values, shapes = vq_images(sizes, 2 ** (len(config.vq_config.channel_multiplier) - 1))
    return {"pixel_values": pixel_values, "image_sizes": torch.tensor(sizes)}, shapes


CHAMELEON_VQ = {
    "embed_dim": 32,
    "num_embeddings": VQ_CODES,
    "latent_channels": 32,
    "base_channels": 32,
    "channel_multiplier": [1, 2],
    "resolution": 8,
    "attn_resolutions": [],
}
EMU3_VQ = {
    "codebook_size": VQ_CODES,
    "temporal_downsample_factor": 1,
    "base_channels": 32,
    "hidden_size": 32,
    "channel_multiplier": [1, 2, 1],
    "attn_resolutions": [],
}


FUYU_NEWLINE = FIRST_SPECIAL + 5
"""The tiny Fuyu's ``|NEWLINE|`` id (not in its config; suppressed like every special id)."""
FUYU_PATCH = 4


def fuyu_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Images of 2x2, 2x3 and 3x2 patches (4 px) as Fuyu's processor gives them: every image's patches row-major,
    flattened, all images concatenated: `(total_patches, 4 * 4 * 3)`."""
    shapes = [(2, 2), (2, 3), (3, 2)]
    generator = torch.Generator().manual_seed(0)
    width = FUYU_PATCH * FUYU_PATCH * config.num_channels
    patches = [torch.randn(h * w, width, generator=generator) for h, w in shapes]
    return {"pixel_values": torch.cat(patches)}, shapes


def fuyu_image_tokens(config: Any, image_id: int, shape: tuple[int, ...]) -> list[int]:
    """One image as Fuyu's processor writes it: each row of placeholders followed by the newline token."""
    rows, cols = shape
    return [*([image_id] * cols + [FUYU_NEWLINE]) * rows]


MINICPM_PATCHES = [(8, 8), (8, 12), (12, 8)]


def minicpm_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """NaViT-packed patches as MiniCPM-V's image processor gives them: every picture's patches row-major in one strip
    `(1, channels, patch, total_patches * patch)`, with `target_sizes` (patch rows, columns) of 8x8, 8x12, 12x8; the
    window merger halves (not in "4x" mode) and the 2x2 merger halves again: 2x2, 2x3, 3x2 (4x4, 4x6, 6x4 in "4x")."""
    patch = config.vision_config.patch_size
    total = sum(h * w for h, w in MINICPM_PATCHES)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, config.vision_config.num_channels, patch, total * patch, generator=generator)
    window = 1 if config.downsample_mode == "4x" else 2  # MiniCPM-OCR defaults to "4x": no window merger
    merge_h, merge_w = config.merge_kernel_size
    shapes = [(h // window // merge_h, w // window // merge_w) for h, w in MINICPM_PATCHES]
    return {"pixel_values": pixel_values, "target_sizes": torch.tensor(MINICPM_PATCHES)}, shapes


MINICPM = {"image_token_id": 240, "vision_config.patch_size": 2, "vision_config.image_size": 32}
# --- inkling (helpers)
MUSE = {"out_hidden_size": 4 * SIZES["hidden_size"]}
"""Muse Glimmer / Spark: the projector reads the pixel-shuffled tower output, merge_size**2 (2 x 2) tower widths;
the config keeps that width in ``out_hidden_size`` instead of deriving it."""


def _random_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """`(3, height, width)` float pixel values on the 0-255 scale, as image processors read an RGB image."""
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


def _rescale_and_normalize(pixels: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """What `rescale_and_normalize` does to `(..., 3, height, width)` pixels: / 255, then per-channel mean and std."""
    shape = (3, 1, 1)
    return (pixels / 255 - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


INKLING_SIZES = ((8, 8), (8, 12), (10, 6))
"""Inkling image sizes (height, width): 2x3, 2x4 and 3x2 patches of 4 px (always one padded column more)."""


def inkling_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Inkling's pixel values as `InklingImageProcessor._preprocess` lays them out (its torchvision backend cannot be
    built here): per image `ceil(height / p)` rows of `width // p + 1` patches, row-major, each padded to `p x p` with
    -1 (0-255 scale) at the bottom/right, rescaled and CLIP-normalised, repeated twice in time and permuted to
    `(patches, 2, p, p, channels)`. The grids are 1-D: one token a patch, `rows * cols` per image."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    patch = config.vision_config.patch_size
    generator = torch.Generator().manual_seed(0)
    patches, counts = [], []
    for height, width in INKLING_SIZES:
        image = _random_image(height, width, generator)
        rows, cols = math.ceil(height / patch), width // patch + 1
        for row in range(rows):
            for col in range(cols):
                piece = image[:, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
                padded = torch.full((3, patch, patch), -1.0)
                padded[:, : piece.shape[1], : piece.shape[2]] = piece
                patches.append(_rescale_and_normalize(padded, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
        counts.append(rows * cols)
    pixel_values = torch.stack(patches)[..., None].repeat(1, 1, 1, 1, 2).permute(0, 4, 2, 3, 1)
    return {"pixel_values": pixel_values}, [(count,) for count in counts]


INKLING = {
    "vision_config.patch_size": 4,
    "text_config.swa_num_attention_heads": 4,
    "text_config.swa_num_key_value_heads": 2,
}

APERTUS_SIZES = ((16, 16), (16, 24), (24, 16))
"""Apertus 1.5 image sizes (height, width), multiples of the tiny VQ tokenizer's downsampling 4 (as its processor
resizes them to): 4x4, 4x6 and 6x4 codes."""
APERTUS_MARKERS = {"boi": 250, "wrapper": 251, "eol": 252, "eoi": 253}
"""Stand-ins for Apertus 1.5's <boi>, image-wrapper, end-of-line and <eoi> tokens (ids in the suppressed range)."""


def apertus_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Apertus 1.5's pixel values as `Apertus1p5ImageProcessor._preprocess` gives them after its resize (torchvision
    backend, not buildable here): normalised to [-1, 1], zero-padded at the bottom/right to the largest image, with the
    true `image_sizes`; each image is a `(height / f, width / f)` grid of codes, f the processor's `spatial_factor`
    (the vision tokenizer's downsampling, `2 ** (len(channel_multiplier) - 1)`)."""
    factor = 2 ** (len(config.vision_config.channel_multiplier) - 1)
    generator = torch.Generator().manual_seed(0)
    height, width = (max(size[axis] for size in APERTUS_SIZES) for axis in (0, 1))
    pixel_values = torch.zeros(len(APERTUS_SIZES), 3, height, width)
    for index, (h, w) in enumerate(APERTUS_SIZES):
        pixel_values[index, :, :h, :w] = _rescale_and_normalize(_random_image(h, w, generator), [0.5] * 3, [0.5] * 3)
    inputs = {"pixel_values": pixel_values, "image_sizes": torch.tensor(APERTUS_SIZES)}
    return inputs, [(h // factor, w // factor) for h, w in APERTUS_SIZES]


def apertus_span(config: Any, image_id: int, shape: tuple[int, ...]) -> list[int]:
    """One image as `Apertus1p5Processor.replace_image_token` writes it: <boi>, the wrapper, `rows` runs of `cols`
    placeholders joined by end-of-line tokens, <eoi> (the textual "H*W" size header left out)."""
    rows, cols = shape
    body = [
        APERTUS_MARKERS["eol"] if cell % (cols + 1) == cols else config.image_token_id
        for cell in range(rows * (cols + 1) - 1)
    ]
    assert image_id == config.image_token_id
    return [APERTUS_MARKERS["boi"], APERTUS_MARKERS["wrapper"], *body, APERTUS_MARKERS["eoi"]]


APERTUS = {
    "vision_config.codebook_size": 16,
    "vision_config.embed_dim": 32,
    "vision_config.latent_channels": 32,
    "vision_config.base_channels": 32,
    "vision_config.channel_multiplier": [1, 1, 2],
    "vision_config.num_res_blocks": 1,
    "vision_config.attn_resolutions": [8],
    "vision_config.resolution": 32,
    "audio_config.codebook_size": 16,
    "audio_config.codebook_dim": 32,
    "audio_config.num_filters": 4,
    "image_token_offset": 100,
    "audio_token_offset": 116,
}
"""A tiny VQ tokenizer (downsampling 4, 16 codes); the visual and audio code ranges moved into the 256-token vocabulary
(the visual range must end where the audio range starts)."""


INKLING_TEACHER = (
    "the teacher's attention drops the learned relative-position logits Inkling's attention passes as `position_bias` "
    "(its teacher-forced forward departs from the model: hidden states differ by ~2e-4 at the tiny size), and the "
    "short convolutions on keys/values mix tokens outside any attention map"
)
INKLING2_TEACHER = (
    "Inkling 2's attention uses attention sinks (the teacher refuses them) and learned relative-position logits "
    "(`position_bias`, not modelled); short convolutions mix tokens outside any attention map"
)

INKLING2_SIZES = ((13, 16), (16, 20), (21, 14))
"""Inkling 2 image sizes (height, width): padded up to 2x2, 2x3 and 3x2 tokens of 8 px (patch 4, merge 2)."""


def inkling2_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Inkling 2's pixel values as `Inkling2ImageProcessor._preprocess` lays them out (torchvision backend, not
    buildable here): each image padded with -1 (0-255 scale) at the bottom/right to whole `side = patch * merge`
    squares, rescaled and normalised to [-1, 1], cut into one `(side, side, channels)` square per image token,
    row-major; `image_grid_thw` is `[1, rows, cols]` in tokens. The grids are those rows and columns."""
    vision = config.vision_config
    side = vision.patch_size * vision.spatial_merge_size
    generator = torch.Generator().manual_seed(0)
    squares, grid_thw = [], []
    for height, width in INKLING2_SIZES:
        rows, cols = math.ceil(height / side), math.ceil(width / side)
        padded = torch.full((3, rows * side, cols * side), -1.0)
        padded[:, :height, :width] = _random_image(height, width, generator)
        image = _rescale_and_normalize(padded, [0.5] * 3, [0.5] * 3)
        squares.append(image.reshape(3, rows, side, cols, side).permute(1, 3, 2, 4, 0).flatten(0, 1))
        grid_thw.append([1, rows, cols])
    inputs = {"pixel_values": torch.cat(squares), "image_grid_thw": torch.tensor(grid_thw)}
    return inputs, [(rows, cols) for _, rows, cols in grid_thw]


INKLING2 = {
    "vision_config.patch_size": 4,
    "text_config.swa_num_attention_heads": 4,
    "text_config.swa_num_key_value_heads": 2,
    "text_config.unpadded_vocab_size": VOCAB,
    "text_config.n_layers_per_attn_res_block": 1,
}
INKLING2_LOOP = INKLING2 | {
    "text_config.loop_layer_index_start": 1,
    "text_config.loop_layer_index_end": 2,
    "text_config.loop_num_passes": 2,
    "text_config.loop_gate_rank": 8,
}


LOCALITY_PATCH_MERGE = {"muse_glimmer": 1, "muse_spark": 1}
"""Flattened-patch families whose image processor lists patches in plain row-major order (the tower regroups them
into merge blocks itself) rather than Qwen's merge-block order: the locality probe decodes them with blocks of 1."""
LOCALITY_PIXEL_COORDINATES: dict[str, Callable[[str, torch.Tensor, dict], torch.Tensor]] = {}
"""Cases whose pixel tensors the locality probe cannot decode by itself: ``decoder(key, tensor, inputs)`` gives
`(elements, 3)`, the (sub-image id, y, x) of every element of ``inputs[key]`` (``tensor``), sub-images numbered in
the order the grids' tiles and images run (see tests/models/test_family_locality.py)."""
INKLING_LOCALITY = {
    "inkling_mm_model": "1-D grids (an image's patch rows are not among the forward's inputs) and (patches, 2, p, p, "
    "channels) pixels the probe does not decode: no 2-D locality to check",
    "apertus1p5": "VQ codes: the image tokens are embeddings of argmax codebook indices, so no gradient reaches the "
    "pixels and the gradient probe has nothing to measure",
}
"""Cases of this block the locality probe cannot check, with why (joined to `LOCALITY_UNCHECKED`)."""


# --- qformer: shared helpers
def prompt_rows(
    entry: TableEntry,
    config: Any,
    counts: list[int],
    shapes: list[tuple[int, ...]] | None = None,
    pixels: dict[str, Any] | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Two prompt rows (`entry.images_per_row` images each, `counts[i]` tokens for image i, words around them) and,
    per row, 1 on the image tokens. Image tokens are the placeholder id, or, with `entry.image_mask_input`, the
    ordinary ids 4, 5, ... the Kosmos-2 processor writes (the mask alone says where the image is); with
    `entry.image_tokens`, the family's own pattern for image i's grid `shapes[i]` (placeholders and separators)."""
    words = torch.randint(3, FIRST_SPECIAL, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    image_id = -1  # no placeholder: the prompt holds ordinary ids (Kosmos-2) or no image token (GIT)
    if entry.image_mask_input is None and not entry.prepended:
        image_id = config_id(config, (f"{entry.media}_token_id", f"{entry.media}_token_index"))
    first, second = entry.images_per_row
    layout = [  # per row: words and images (as image indices) in order
        [words[:2], 0, words[2:5]] if first == 1 else [words[:2], 0, words[2:3], 1, words[3:5]],
        [first, words[5:7], first + 1, words[7:8]] if second == 2 else [words[5:6], first, words[6:8]],
    ]
    rows, marks = [], []
    for pieces in layout:
        row, mark = [BOS], [0]
        for piece in pieces:
            if isinstance(piece, int):
                if entry.image_tokens is not None or entry.image_text is not None:
                    ids = (
                        entry.image_tokens(config, image_id, shapes[piece])
                        if entry.image_tokens is not None
                        else entry.image_text(config, pixels, piece, counts[piece])
                    )
                    row += ids
                    mark += [int(token == image_id) for token in ids]
                    continue
                ids = (
                    [image_id] * counts[piece] if entry.image_mask_input is None else list(range(4, 4 + counts[piece]))
                )
                row += ids
                mark += [1] * len(ids)
            else:
                row += piece
                mark += [0] * len(piece)
        rows.append(row)
        marks.append(mark)
    return rows, marks


def media_encoder(model: torch.nn.Module, media: str = "image") -> Callable[..., Any]:
    """The model's ``get_image_features`` (``get_video_features`` for ``media="video"``): on its base model
    (``model.model``) where it has one, else on the model itself (BLIP-2 and kin keep no base model)."""
    name = f"get_{media}_features"
    for owner in (getattr(model, "model", None), model):
        if owner is not None and callable(getattr(owner, name, None)):
            return getattr(owner, name)
    raise AttributeError(f"{type(model).__name__} has no `{name}`")


def qformer_instructions(config: Any, pixels: dict[str, Any]) -> dict[str, Any]:
    """InstructBLIP's `qformer_input_ids` / `qformer_attention_mask`: one instruction per image (or video)."""
    generator = torch.Generator().manual_seed(2)
    items = pixels["pixel_values"].shape[0]
    ids = torch.randint(3, FIRST_SPECIAL, (items, 5), generator=generator)
    return {"qformer_input_ids": ids, "qformer_attention_mask": torch.ones_like(ids)}


def two_frame_videos(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """InstructBLIP-Video's `pixel_values`: 3 videos of 2 frames, `(videos, frames, channels, size, size)`; each video
    is `frames * num_query_tokens` tokens, one 1-D grid."""
    size = config.vision_config.image_size
    pixel_values = torch.randn(3, 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {"pixel_values": pixel_values}, [(2 * config.num_query_tokens,)] * 3


QFORMER = {
    "num_query_tokens": 4,
    "qformer_config.encoder_hidden_size": 32,
    "text_config.ffn_dim": 37,
    "text_config.word_embed_proj_dim": 32,
}


KOSMOS = {
    "latent_query_num": 4,
    "text_config.layers": 2,
    "text_config.attention_heads": 4,
    "text_config.ffn_dim": 37,
}


def kosmos2_5_patches(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Kosmos-2.5's `flattened_patches` as its image processor lays them out: per image (row, column) indices from 1
    and the patch's pixels, `(images, patches, 2 + patch_embed_hidden_size)`; 4x4 patches for each of 2 images. The
    latents are one 1-D grid of `latent_query_num` tokens each."""
    width = config.vision_config.patch_embed_hidden_size
    rows, cols = torch.meshgrid(torch.arange(1, 5), torch.arange(1, 5), indexing="ij")
    index = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
    generator = torch.Generator().manual_seed(0)
    patches = torch.stack([torch.cat([index, torch.randn(16, width, generator=generator)], -1) for _ in range(2)])
    return {"flattened_patches": patches}, [(config.latent_query_num,)] * 2


def git_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """GIT's `pixel_values`, one image per prompt row; each image is prepended as its CLS token and an
    `(image_size / patch_size)` square of patches. With ``num_image_with_embedding`` frames, a video per row
    `(rows, frames, channels, size, size)`, prepended frame by frame: one `(frames, side, side)` grid."""
    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    frames = config.num_image_with_embedding
    shape = (2, 3, size, size) if frames is None else (2, frames, 3, size, size)
    pixel_values = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    grid = (size // patch, size // patch) if frames is None else (frames, size // patch, size // patch)
    return {"pixel_values": pixel_values}, [grid] * 2


# --- ocr: shared helpers of the coverage helper "ocr" (multi-view images, prompts with markers)
def unified_patches(
    sizes: list[tuple[int, int]], block: int, length: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images cut into `block x block` pixel blocks as Gemma 4 unified's image processor lays them out (its module
    needs torchvision, not installed here): per image the blocks row-major, each flattened `(block, block, 3)`, padded
    to `length` with `(-1, -1)` positions; positions are `(x, y)` in blocks.

    Returns:
        `(images, length, block * block * 3)` pixel values and `(images, length, 2)` positions.
    """
    import numpy as np
    from family_builders import images

    pixel_values = torch.zeros(len(sizes), length, block * block * 3)
    positions = torch.full((len(sizes), length, 2), -1, dtype=torch.long)
    for index, image in enumerate(images(*sizes, seed=seed)):
        array = torch.from_numpy(np.array(image)).float() / 255  # (h, w, 3)
        rows, cols = array.shape[0] // block, array.shape[1] // block
        blocks = array.reshape(rows, block, cols, block, 3).transpose(1, 2).reshape(rows * cols, -1)
        pixel_values[index, : rows * cols] = blocks
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions[index, : rows * cols] = torch.stack([x.flatten(), y.flatten()], dim=-1)
    return pixel_values, positions


def gemma4_unified_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Gemma 4 unified: 16x24, 24x16 and 16x16 images in merged 8 px blocks (patch 4, merge 2), padded to 70."""
    vision = config.vision_config
    block = vision.patch_size * vision.pooling_kernel_size
    sizes = [(16, 24), (24, 16), (16, 16)]
    pixel_values, positions = unified_patches(sizes, block, length=70)
    return {"pixel_values": pixel_values, "image_position_ids": positions}, [
        (h // block, w // block) for h, w in sizes
    ]


def granite4_pixels(config: Any) -> tuple[dict[str, Any], list[list[tuple[str, tuple[int, ...]]]]]:
    """Granite 4 Vision: its (LLaVA-NeXT) image processor on 10x30, 20x12 and 16x16 images (16 px crops); the grids
    from `Granite4VisionProcessor`'s own feature count (base crop at the Q-Former's reduced side, unpadded tiles)."""
    from family_builders import images, make_tokenizer
    from transformers import Granite4VisionProcessor
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    crop = config.vision_config.image_size
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=GRANITE4_PINPOINTS,
    )
    processor = Granite4VisionProcessor(
        image_processor=image_processor,
        tokenizer=make_tokenizer(["<image>"]),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        downsample_rate=config.downsample_rate,
    )
    sizes = [(10, 30), (20, 12), (16, 16)]
    out = image_processor(images=images(*sizes), return_tensors="pt")
    side = int(crop // config.vision_config.patch_size * Fraction(config.downsample_rate))
    shapes = []
    for height, width in sizes:
        best_h, best_w = select_best_resolution([height, width], GRANITE4_PINPOINTS)
        unpadded, rows = processor._get_unpadded_features(height, width, side, side, best_h // crop, best_w // crop)
        shapes.append([("base", (side, side)), ("tiles", (rows, unpadded // rows))])
    return {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}, shapes


GRANITE4_PINPOINTS = [[16, 32], [32, 16], [32, 32]]
GRANITE4 = {
    "vision_config.patch_size": 4,
    "vision_config.image_size": 16,
    "image_grid_pinpoints": GRANITE4_PINPOINTS,
    "downsample_rate": "1/2",
    "deepstack_layer_map": [(1, 0)],
    "spatial_target_layers": [1],
    "qformer_config.encoder_hidden_size": 32,
    "projector_dropout": 0.0,
}


OCR_SIZES = [(24, 72), (20, 24), (64, 28)]
"""Images for Unlimited-OCR: wider than a crop (cropped 3x1), smaller (global view only), taller (cropped 1x2)."""


def ocr_views(config: Any, sizes: list[tuple[int, int]]) -> tuple[dict[str, Any], list[int], list[list[int]]]:
    """DeepSeek-OCR 2's PIL image processor (64 px global views padded square, 32 px crops, 2-6 crops) on
    `OCR_SIZES`; also the crops' `(columns, rows)` as Unlimited-OCR's processor writes `patches_grid` (1, 1 when not
    cropped), from the same tiling function. Returns the pixel inputs, crops per image and the grid."""
    from family_builders import images
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        DeepseekOcr2ImageProcessorPil,
        get_optimal_tiled_canvas,
    )

    processor = DeepseekOcr2ImageProcessorPil(size={"height": 64, "width": 64}, tile_size=32)
    out = processor(images=images(*sizes), return_tensors="pt")
    crops = [int(n) for n in out["num_local_patches"]]
    grid = [
        list(get_optimal_tiled_canvas(size, (32, 32), 2, 6)) if n else [1, 1]
        for size, n in zip(sizes, crops, strict=True)
    ]
    assert [c * r for c, r in grid] == [n or 1 for n in crops]
    pixels = {"pixel_values": out["pixel_values"], "num_local_patches": crops}
    if "pixel_values_local" in out:
        pixels["pixel_values_local"] = out["pixel_values_local"]
    return pixels, crops, grid


def unlimited_ocr_pixels(config: Any) -> tuple[dict[str, Any], list[list[tuple[str, tuple[int, ...]]]]]:
    """Unlimited-OCR: the grids from `UnlimitedOcrProcessor.replace_image_token`'s numbers (q = size // patch /
    downsample 4): crops stitched `(rows * q_local, cols * q_local)`, the global view `(q_global, q_global)`."""
    pixels, crops, grid = ocr_views(config, OCR_SIZES)
    patch = config.vision_config.sam_config.patch_size
    q_global, q_local = math.ceil(64 // patch / 4), math.ceil(32 // patch / 4)
    shapes = []
    for n, (columns, rows) in zip(crops, grid, strict=True):
        tiles = [("tiles", (rows * q_local, columns * q_local))] if n else []
        shapes.append([*tiles, ("base", (q_global, q_global))])
    return pixels | {"patches_grid": grid}, shapes


def deepseek_ocr2_pixels(config: Any) -> tuple[dict[str, Any], list[list[tuple[str, tuple[int, ...]]]]]:
    """DeepSeek-OCR 2: every view (crop or global) gives the 144 queries of its smaller query table (at most 144 SAM
    patches a view here), 1-D; only the first image is cropped (2x1), as every view costs 144 tokens."""
    pixels, crops, _ = ocr_views(config, [(24, 56), (20, 24), (16, 16)])
    return pixels, [[*((f"tile {k}", (144,)) for k in range(n)), ("base", (144,))] for n in crops]


OCR_SAM = {
    "vision_config.sam_config.patch_size": 4,
    "vision_config.sam_config.image_size": 64,
    "vision_config.sam_config.window_size": 4,
    "vision_config.sam_config.global_attn_indexes": [1],
    "vision_config.sam_config.mlp_dim": 64,
    "vision_config.sam_config.output_channels": 16,
    "vision_config.sam_config.downsample_channels": [16, 32],
}
UNLIMITED_OCR = {
    **OCR_SAM,
    "vision_config.encoder_config.image_size": 16,
    "vision_config.encoder_config.patch_size": 4,
    "text_config.mlp_layer_types": ["dense", "sparse"],
}
DEEPSEEK_OCR2 = {**OCR_SAM, "text_config.mlp_layer_types": ["dense", "sparse"], "text_config.num_experts_per_tok": 2}


MOLMO2_SIZES = [(20, 44), (24, 24), (40, 20)]
MOLMO2_COL = 211
"""`<im_col>`: the tiny vocabulary's id for Molmo2's row-end token (the config does not name it)."""


def molmo2_pixels(config: Any) -> tuple[dict[str, Any], list[list[tuple[str, tuple[int, ...]]]]]:
    """Molmo2's own image processor code on `MOLMO2_SIZES` (24 px crops, patch 4, overlap margins 1, pooling 2x2, up
    to 4 crops), with its two torchvision calls (resize, rescale-normalize) replaced by torch equivalents (see
    `molmo2_preprocess`): its crop geometry, `image_token_pooling` and `image_grids` are the processor's. Grids:
    `image_grids` per image."""
    import numpy as np
    from family_builders import images

    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images(*MOLMO2_SIZES)]
    pixels = molmo2_preprocess(tensors, config.vision_config.patch_size)
    shapes = [
        [("base", (low_h, low_w)), ("tiles", (high_h, high_w))]
        for low_h, low_w, high_h, high_w in pixels["image_grids"].tolist()
    ]
    return pixels, shapes


def molmo2_text(config: Any, pixels: dict[str, Any], image: int, features: int) -> list[int]:
    """`Molmo2Processor.replace_image_token`: the low view (`<low_res_im_start>`, rows of `<im_patch>` each ended by
    `<im_col>`, `<im_end>`), then the high view likewise after `<im_start>`."""
    low_h, low_w, high_h, high_w = pixels["image_grids"][image].tolist()
    assert low_h * low_w + high_h * high_w == features
    patch = config.image_patch_id

    def view(start: int, rows: int, cols: int) -> list[int]:
        return [start, *([patch] * cols + [MOLMO2_COL]) * rows, config.image_end_token_id]

    return view(config.low_res_image_start_token_id, low_h, low_w) + view(config.image_start_token_id, high_h, high_w)


def molmo2_token_types(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """`mm_token_type_ids` as Molmo2's processor writes them: 1 on every image token (patches, columns, starts,
    ends), so they share one bidirectional attention block."""
    config = model.config
    ids = [config.image_patch_id, MOLMO2_COL, config.image_start_token_id, config.low_res_image_start_token_id]
    ids.append(config.image_end_token_id)
    return {"mm_token_type_ids": torch.isin(inputs["input_ids"], torch.tensor(ids)).long()}


MOLMO2 = {
    "image_patch_id": 210,
    "vision_config.patch_size": 4,
    "vision_config.image_size": [24, 24],
    "vision_config.num_position_embeddings": 36,
    "adapter_config.vision_feature_layer": [-1, -2],
}


GEMMA4_UNIFIED = {
    "vision_config.patch_size": 4,
    "vision_config.pooling_kernel_size": 2,
    "vision_config.mm_embed_dim": 32,
    "vision_config.output_proj_dims": 32,
    "vision_config.mm_posemb_size": 64,
}


# ---------------------------------------------------------------------------------------------------- the table
def gemma4_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Gemma 4's own image processor (patch 4, pooling 2) on 16x24, 24x16 and 16x16 images, without its resize (at
    its smallest budget, 70 soft tokens, it would upscale them): each grid is the image in 8 px pooled blocks."""
    from family_builders import images
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    patch, kernel = 4, 2
    processor = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=kernel, max_soft_tokens=70)
    sizes = [(16, 24), (24, 16), (16, 16)]
    out = processor(images=images(*sizes), do_resize=False, return_tensors="pt")
    shapes = [(h // (patch * kernel), w // (patch * kernel)) for h, w in sizes]
    assert [h * w for h, w in shapes] == list(out["num_soft_tokens_per_image"])
    return {"pixel_values": out["pixel_values"], "image_position_ids": out["image_position_ids"]}, shapes


GEMMA4 = {
    "vision_config.patch_size": 4,
    "vision_config.pooling_kernel_size": 2,
    "vision_config.position_embedding_size": 64,
}


def naflex_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """SigLIP2 NaFlex inputs as its image processor lays them out: per image its patches row-major, padded to the
    largest, with `spatial_shapes` (patch rows, columns) and `pixel_attention_mask`; 4x4, 4x6 and 6x4 patches."""
    vision = config.vision_config
    shapes = [(4, 4), (4, 6), (6, 4)]
    width = vision.num_channels * vision.patch_size**2
    longest = max(h * w for h, w in shapes)
    pixel_values = torch.zeros(len(shapes), longest, width)
    mask = torch.zeros(len(shapes), longest, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    for index, (h, w) in enumerate(shapes):
        pixel_values[index, : h * w] = torch.randn(h * w, width, generator=generator)
        mask[index, : h * w] = 1
    factor = config.downsample_factor
    inputs = {"pixel_values": pixel_values, "spatial_shapes": torch.tensor(shapes), "pixel_attention_mask": mask}
    return inputs, [(h // factor, w // factor) for h, w in shapes]


def high_res_copy(config: Any, pixels: dict[str, Any]) -> dict[str, Any]:
    """DeepSeek-VL hybrid: the same images at the SAM tower's resolution."""
    size = config.high_res_vision_config.image_size
    images = pixels["pixel_values"]
    return {"high_res_pixel_values": torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear")}


def tile_mask(config: Any, pixels: dict[str, Any]) -> dict[str, Any]:
    """Granite-Docling's `pixel_attention_mask`: every tile real (`(batch, tiles)`)."""
    return {"pixel_attention_mask": torch.ones(pixels["pixel_values"].shape[:2], dtype=torch.bool)}


MISTRAL_LARGE4 = {
    "text_config.qk_rope_head_dim": 4,
    "text_config.head_dim": 4,
    "text_config.qk_nope_head_dim": 4,
    "text_config.qk_head_dim": 8,
    "text_config.v_head_dim": 8,
    "text_config.num_key_value_heads": 4,
    "text_config.index_head_dim": 8,
    "text_config.index_n_heads": 2,
    "text_config.rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
PIXTRAL_PATCH = {"vision_config.patch_size": 4, "vision_config.image_size": 24}
"""Pixtral towers (Mistral Large 4, LightOnOCR) at 4 px patches. The locality probe measures receptive-field
centroids in pixels and lets a row of cells drift by less than 1: at the configs' 14 px patches a 2x2-merged cell is
28 px wide and the merger's unequal weights on its four patches move its centroid by ~1 px (up to 1.05 px apart
across a row, the grid itself right); at 4 px the same wander is ~0.3 px."""


def pixtral_pixels(config: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Images of 2x2, 2x3 and 3x2 merged patches padded at the bottom right into one batch tensor, with their
    `image_sizes`, as `PixtralImageProcessor._pad_for_batching` pads; the tower crops each image's patches back to
    `image_sizes` (`PixtralVisionModel.forward`) and the patch merger unfolds them row-major, so each image's grid is
    `(height / (patch * merge), width / (patch * merge))`."""
    step = config.vision_config.patch_size * config.spatial_merge_size
    sizes = [(2 * step, 2 * step), (2 * step, 3 * step), (3 * step, 2 * step)]
    pixel_values, shapes = vq_images(sizes, step)
    return {"pixel_values": pixel_values, "image_sizes": torch.tensor(sizes)}, shapes


MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
PER_LAYER_ROPE = {
    name: {"rope_type": "default", "rope_theta": 10000.0} for name in ("full_attention", "sliding_attention")
}
HYBRID = "hybrid decoder: its linear-attention / convolution layers have no attention map for the teacher to record"
GLM_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
GLM = {"text_config.rope_parameters": GLM_ROPE}

TABLE: list[TableEntry] = [
    TableEntry("gemma4", config_kwargs={"vision_config": {}}, overrides=GEMMA4, pixels=gemma4_pixels),
    TableEntry(
        "cohere2_vision",
        overrides={"vision_config.patch_size": 2, "vision_config.image_size": 8},
        notes="SigLIP tower 8 px / patch 2 (the locality probe's centroids are in pixels), pixel shuffle; square images",
    ),
    TableEntry("cosmos3_omni", pixels="thw", mrope=True, notes="Qwen3-VL tower; 3 images by image_grid_thw"),
    TableEntry("deepseek_vl", notes="SigLIP tower; square images"),
    TableEntry(
        "deepseek_vl_hybrid",
        extra_pixels=high_res_copy,
        overrides={"high_res_vision_config.global_attn_indexes": [0]},
        notes="SigLIP + SAM towers",
    ),
    TableEntry("granite_docling", pixels="5d", extra_pixels=tile_mask, notes="one tile an image"),
    TableEntry("exaone4_5", pixels="thw", mrope=True, notes="merged patches by image_grid_thw"),
    TableEntry("glm4v", pixels="thw", overrides=GLM, mrope=True, notes="GLM-4.1V; merged patches by image_grid_thw"),
    TableEntry("glm46v", pixels="thw", overrides=GLM, mrope=True, notes="GLM-4.6V"),
    TableEntry("glm_ocr", pixels="thw", overrides=GLM, mrope=True, notes="GLM-OCR"),
    TableEntry("glmga", pixels="thw", overrides=GLM, mrope=True, notes="GLM-4.6V class under another type"),
    TableEntry(
        "glm4v_moe",
        pixels="thw",
        overrides={**GLM, "text_config.partial_rotary_factor": 1.0},
        mrope=True,
        notes="GLM-4.5V MoE",
    ),
    TableEntry("paddleocr_vl", pixels="thw", patch_shape="chw", overrides=GLM, mrope=True),
    TableEntry("got_ocr2", notes="SAM-like tower compressed to one token an image at this size"),
    TableEntry(
        "hunyuan_vl", pixels="thw", overrides=GLM, mrope=True, notes="newline per merged row, begin/end features"
    ),
    TableEntry("hyperclovax_vision_v2", pixels="thw", mrope=True, notes="Qwen2.5-VL tower"),
    TableEntry("ovis2", notes="visual-embedding-table tower; square images"),
    TableEntry("pp_chart2table", notes="GOT-OCR2 model class"),
    TableEntry("qianfan_ocr", notes="InternVL-style tower, one tile an image"),
    TableEntry("video_llava", notes="CLIP towers for images and videos; images here"),
    TableEntry("lfm2_vl", pixels=naflex_pixels, overrides={"vision_config.num_patches": 64}),
    TableEntry("kimi_k25", pixels="thw", patch_shape="chw", overrides=MISTRAL_LARGE4),
    TableEntry(
        "aria",
        overrides={
            "projector_patch_to_query_dict": {16: 4},
            "max_value_projector_patch_to_query_dict": 4,
            "text_config.intermediate_size": 64,
            "text_config.moe_intermediate_size": 16,
        },
        grid=None,
        notes="cross-attention projector with learned queries: 1-D",
    ),
    TableEntry(
        "minimax_m3_vl",
        pixels="thw",
        overrides={
            "text_config.intermediate_size": 64,
            "text_config.dense_intermediate_size": 64,
            "text_config.moe_intermediate_size": 16,
        },
        notes="grouped expert matmuls need 16-byte strides: widths 64 and 16",
    ),
    TableEntry(
        "dots3_note",
        pixels="thw",
        overrides={"vision_config.adapter_in_dim": 32, "vision_config.adapter_out_dim": 32},
        notes="MLA decoder whose value heads are narrower than its key heads (the teacher handles that now)",
    ),
    TableEntry(
        "mistral_large4",
        pixels=pixtral_pixels,
        overrides=MISTRAL_LARGE4 | PIXTRAL_PATCH,
        notes="Pixtral tower (4 px patches, merge 2), images of three sizes padded in one batch; MLA decoder",
    ),
    TableEntry(
        "qwen2_5_omni_thinker",
        pixels="thw",
        mrope=True,
        overrides={"vision_start_token_id": 250, "text_config.rope_parameters": MROPE},
    ),
    TableEntry("qwen3_omni_moe_thinker", pixels="thw", mrope=True, overrides={"vision_start_token_id": 250}),
    TableEntry("video_llama_3", pixels="thw", mrope=False, notes="image_merge_sizes 1"),
    TableEntry("step3p7", overrides={"text_config.sliding_window": 64}),
    TableEntry(
        "lighton_ocr",
        pixels=pixtral_pixels,
        overrides=PIXTRAL_PATCH,
        notes="Pixtral tower (4 px patches, merge 2), images of three sizes padded in one batch",
    ),
    TableEntry("cohere_compass", pixels="thw", mrope=True, overrides={"text_config.rope_parameters": PER_LAYER_ROPE}),
    TableEntry("idefics2", pixels="5d", grid=None, notes="perceiver latents: 1-D"),
    TableEntry("lfm3_vl", pixels="thw", teacher_issue=HYBRID),
    TableEntry(
        "qwen3_5",
        pixels="thw",
        mrope=True,
        teacher_issue="hybrid decoder: Gated DeltaNet layers have no softmax attention for the teacher to record",
        notes="Qwen3.5 dense: hybrid linear/full-attention decoder",
    ),
    TableEntry(
        "qwen3_5_moe",
        pixels="thw",
        mrope=True,
        teacher_issue="hybrid decoder: Gated DeltaNet layers have no softmax attention for the teacher to record",
        notes="Qwen3.5 MoE: hybrid linear/full-attention decoder, 4 experts",
    ),
    # --- qwenlike
    TableEntry("cosmos3_edge", pixels="thw", mrope=True, overrides=HIGH_IDS, notes="packed SigLIP2 tower, merge 2"),
    TableEntry(
        "hy_v4_vl",
        pixels="thw",
        mrope=True,
        overrides=HY_V4,
        notes="newline feature per merged row; hyper-connection MLA decoder, rotary on the 8-wide rope slice",
    ),
    TableEntry("ernie4_5_vl_moe", pixels="thw", mrope=True, overrides=ERNIE, notes="text/vision MoE decoder"),
    TableEntry(
        "qwen4_exp",
        pixels="thw",
        mrope=True,
        overrides=QWEN4_EXP,
        teacher_issue=HYBRID,
        notes="hybrid decoder ending in a hyper-connection mixer (no final norm)",
    ),
    TableEntry(
        "glm5_next",
        pixels="thw",
        overrides=GLM5_NEXT,
        teacher_issue=HYBRID,
        notes="KDA linear attention + DSA-indexed NoPE MLA decoder",
    ),
    # --- timm
    TableEntry(
        "fast_vlm",
        vision_stand_in=vision_stand_in("convnext", hidden_size=32, **CONVNEXT_STAND_IN),
        notes=f"vision tower replaced by a ConvNeXt stand-in (4 x 4 feature map): {NO_TIMM}",
    ),
    TableEntry(
        "gemma3n",
        vision_stand_in=vision_stand_in("convnext", hidden_size=32, **CONVNEXT_STAND_IN),
        config_kwargs={"text_config": GEMMA3N_TEXT},
        overrides={"vision_soft_tokens_per_image": 16},
        notes=f"images only; vision tower replaced by a ConvNeXt stand-in (4 x 4 soft tokens): {NO_TIMM}",
    ),
    TableEntry(
        "perception_lm",
        pixels="5d",
        vision_stand_in=vision_stand_in("clip_vision_model", **CLIP_STAND_IN),
        overrides={"projector_pooling_ratio": 2},
        notes=f"one tile an image; vision tower replaced by a CLIP ViT stand-in (4 x 4 patches pooled to 2 x 2): "
        f"{NO_TIMM}",
    ),
    TableEntry(
        "nemotron_h_omni",
        pixels=nemotron_omni_pixels,
        overrides=NEMOTRON_OMNI,
        teacher_issue="hybrid decoder: the teacher refuses it (decoder layer 0, a NemotronHBlock with a Mamba2 "
        "mixer, has no self-attention module whose attention map it could record)",
        notes="images only (no audio, no video)",
    ),
    # --- vq
    TableEntry("janus", notes="SigLIP tower, square images; text-mode generate() routed to keep logits_processor"),
    TableEntry(
        "chameleon",
        config_kwargs={"vocabulary_map": vq_vocabulary(chameleon_code), "vq_config": CHAMELEON_VQ},
        pixels=chameleon_pixels,
        notes="VQ-VAE codes written over `<image>` placeholders; 4x4 latent grid",
    ),
    TableEntry(
        "emu3",
        config_kwargs={
            "vocabulary_map": vq_vocabulary(
                lambda code: f"<|visual token{code:06d}|>", {"<|extra_200|>": FIRST_SPECIAL + 1}
            ),
            "vq_config": EMU3_VQ,
        },
        pixels=emu3_pixels,
        notes="VQ-VAE codes and an end-of-line token a row over `<image>` placeholders; image_sizes",
    ),
    TableEntry(
        "fuyu",
        overrides={"patch_size": FUYU_PATCH},
        pixels=fuyu_pixels,
        image_tokens=fuyu_image_tokens,
        notes="patches embedded by a linear layer; a newline token after each row of placeholders",
    ),
    *[
        TableEntry(
            model_type,
            config_kwargs={"insert_layer_id": 0},
            overrides=MINICPM,
            pixels=minicpm_pixels,
            mrope=model_type == "minicpmv4_7",
            teacher_issue=HYBRID,
            notes="NaViT-packed patches, window merger after layer 0, 2x2 merger",
        )
        for model_type in ("minicpmv4_6", "minicpmv4_7", "minicpm_ocr")
    ],
    # --- inkling
    TableEntry(
        "muse_glimmer",
        pixels="thw",
        overrides=MUSE,
        notes="flattened (temporal, channel) patches by image_grid_thw, pixel shuffle 2x2",
    ),
    TableEntry("muse_spark", pixels="thw", overrides=MUSE, notes="as muse_glimmer"),
    TableEntry(
        "inkling_mm_model",
        pixels=inkling_pixels,
        overrides=INKLING,
        grid=None,
        teacher_issue=INKLING_TEACHER,
        notes="a patch a token; patch counts per image are not among the forward's inputs: 1-D",
    ),
    TableEntry(
        "inkling2",
        pixels=inkling2_pixels,
        overrides=INKLING2,
        teacher_issue=INKLING2_TEACHER,
        notes="image_grid_thw counted in tokens",
    ),
    TableEntry(
        "inkling2_loop",
        pixels=inkling2_pixels,
        overrides=INKLING2_LOOP,
        teacher_issue=INKLING2_TEACHER,
        notes="as inkling2, one layer looped twice",
    ),
    TableEntry(
        "apertus1p5",
        pixels=apertus_pixels,
        image_tokens=apertus_span,
        overrides=APERTUS,
        notes="VQ codes' embeddings over the placeholders; rows split by end-of-line tokens",
    ),
    # --- qformer
    TableEntry("blip-2", overrides={**QFORMER, "image_token_index": 210}, grid=None, notes="OPT decoder; 4 queries"),
    TableEntry(
        "instructblip",
        overrides={**QFORMER, "image_token_index": 210},
        extra_pixels=qformer_instructions,
        grid=None,
        notes="OPT decoder; instruction-aware Q-Former",
    ),
    TableEntry(
        "instructblipvideo",
        overrides={**QFORMER, "video_token_index": 210},
        pixels=two_frame_videos,
        extra_pixels=qformer_instructions,
        media="video",
        # its forward hands extra kwargs (`position_ids`) to the Q-Former too (transformers 5.24), so the reference
        # forward passes none: OPT derives the same positions from the attention mask
        mrope=True,
        notes="OPT decoder; 2 frames x 4 queries a video",
    ),
    TableEntry(
        "kosmos-2",
        overrides=KOSMOS,
        image_mask_input="image_embeds_position_mask",
        images_per_row=(1, 1),
        grid=None,
        notes="image tokens marked by image_embeds_position_mask; one image a row, as its processor writes",
    ),
    TableEntry(
        "kosmos-2.5",
        overrides={**KOSMOS, "vision_config.patch_embed_hidden_size": 12, "vision_config.max_num_patches": 64},
        pixels=kosmos2_5_patches,
        image_mask_input="image_embeds_position_mask",
        images_per_row=(1, 1),
        notes="flattened patches; image tokens marked by image_embeds_position_mask",
    ),
    TableEntry(
        "git",
        pixels=git_pixels,
        prepended=True,
        images_per_row=(1, 1),
        notes="image features prepended to the text (not in input_ids): CLS + 4x4 patches",
    ),
    TableEntry(
        "git",
        variant="video",
        overrides={"num_image_with_embedding": 2},
        pixels=git_pixels,
        prepended=True,
        media="video",
        images_per_row=(1, 1),
        slow=True,
        notes="2 frames prepended frame by frame",
    ),
    # --- ocr
    TableEntry(
        "gemma4_unified",
        config_kwargs={"vision_config": {}},
        overrides=GEMMA4_UNIFIED,
        pixels=gemma4_unified_pixels,
        notes="encoder-free: one soft token per merged block",
    ),
    TableEntry(
        "granite4_vision",
        overrides=GRANITE4,
        pixels=granite4_pixels,
        notes="LLaVA-NeXT tiles through Window Q-Former downsamplers; deepstack injection",
    ),
    TableEntry(
        "unlimited_ocr",
        overrides=UNLIMITED_OCR,
        pixels=unlimited_ocr_pixels,
        notes="SAM + CLIP towers; stitched crops and global view, newline per row, view separator",
    ),
    TableEntry(
        "deepseek_ocr2",
        overrides=DEEPSEEK_OCR2,
        pixels=deepseek_ocr2_pixels,
        slow=True,
        notes="SAM tower + causal flow encoder: 144 learned queries a view, 1-D (about 400 image tokens a row: slow)",
    ),
    TableEntry(
        "molmo2",
        overrides=MOLMO2,
        pixels=molmo2_pixels,
        image_text=molmo2_text,
        extra_inputs=molmo2_token_types,
        notes="low-res view + overlapping crops pooled 2x2; column and start/end markers in the prompt",
    ),
]


LOCALITY_UNCHECKED = {
    "idefics2": "1-D latents: a perceiver mixes the whole image into every latent, there is no locality to check",
    "aria": "1-D learned queries: every query attends to the whole image, there is no locality to check",
}
"""Table cases the locality test marks as expected failures, with why."""
# --- xattn (cross-attention cases are built in family_builders.py)
LOCALITY_UNCHECKED["idefics"] = (
    "1-D perceiver latents (IDEFICS 1): the resampler mixes the whole image into every latent, there is no locality to "
    "check (idefics-patches, without the resampler, is checked)"
)
# --- vq: locality
LOCALITY_UNCHECKED |= (
    {
        name: "VQ codes: the pixels are quantized by an argmin over the codebook, so no gradient reaches them and the "
        "probe has nothing to measure (the grid is the VQ latent grid by construction of the encoder)"
        for name in ("chameleon", "emu3")
    }
    | {
        "fuyu": "the probe's pixel decoder does not know Fuyu's concatenated, flattened patch lists "
        "`(total_patches, patch * patch * channels)`"
    }
    | {
        name: "the probe's pixel decoder does not know NaViT-packed patch strips and its silencing zeroes the whole "
        "window-attention merger; tests/models/test_minicpm_locality.py checks these grids instead"
        for name in ("minicpmv4_6", "minicpmv4_7", "minicpm_ocr")
    }
)
LOCALITY_UNCHECKED |= INKLING_LOCALITY
# --- qformer
LOCALITY_UNCHECKED |= {
    name: "1-D learned queries (Q-Former / Kosmos latents): every query attends to the whole image, there is no "
    "locality to check"
    for name in ("blip-2", "instructblip", "instructblipvideo", "kosmos-2", "kosmos-2.5")
}
LOCALITY_SLOW = {"qianfan_ocr"}
"""Table cases whose locality check takes minutes (many tiles per image): run with the slow tests."""
# --- qwenlike
EXPANDED_IMAGES_PERMUTED = {
    "glm5_next": "transformers 5.24's Glm5NextForConditionalGeneration._expand_multimodal_outputs repeats each image "
    "instead of each row's group of images, so when generate() expands the rows (beam search, num_return_sequences) "
    "the copies of a two-image row [A, B] get [A, A], [A, B], [B, B]: plain generate() itself decodes other image "
    "features than a forward of the returned sequences",
    "nemotron_h_omni": "transformers 5.24's `_expand_multimodal_outputs` of Nemotron 3 Nano Omni repeats each image of "
    "a row on its own ([A, A, A, B, B, B]) where the copies of a two-image row need [A, B] each: without FastRM, "
    "generate(num_return_sequences=3) gives prefill logits 0.04-0.28 away from one forward on the wrong copies",
    "granite4_vision": "transformers 5.24's `Granite4VisionForConditionalGeneration._expand_multimodal_outputs` "
    "repeats each image of a row on its own ([A, B] -> [A, A, A, B, B, B]) instead of the row's group, so an expanded "
    "two-image row decodes with another image's deepstack features (with the group order fixed the beam test passes)",
}
"""Table cases whose own generate() writes the wrong images into expanded rows (test_modes marks those modes xfail,
not strict: a row whose copies happen to get the right images passes)."""
LOCALITY_PATCH_MERGE["hy_v4_vl"] = 1
"""HY-V4-VL's flattened patches are in row-major `(t, h, w)` order, not Qwen's merge-block order (its image
processor: "Flatten patches in row-major order in comparison to Qwen"; its merger reshapes them to `(h, w)`)."""

# --- ocr
LOCALITY_UNCHECKED |= {
    "granite4_vision": "no probe possible: the image features enter at decoder layers (deepstack injection), the "
    "input embeddings at image tokens are zeros, so their gradient says nothing about the pixels",
    "deepseek_ocr2": "1-D learned queries: every query attends to the whole view, there is no locality to check",
}


# --- locality: loc1
def patch_list_coordinates(
    tensor: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, subs: torch.Tensor
) -> torch.Tensor:
    """`(elements, 3)` (sub-image id, y, x) of a patch list whose leading dims index patches and whose trailing
    `features` elements are one patch's pixels: every element of patch ``i`` gets ``(subs[i], rows[i], cols[i])``,
    in patches (a token's receptive field is a block of whole patches; where inside a patch its gradient falls depends
    on the patch embedding's weights, not on the grid)."""
    per_patch = torch.stack([subs.reshape(-1), rows.reshape(-1), cols.reshape(-1)], dim=1)
    return per_patch.repeat_interleave(tensor.numel() // per_patch.shape[0], dim=0)


def xy_positioned_coordinates(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Gemma 4 / Gemma 4 unified `pixel_values` `(images, max_patches, patch * patch * 3)` with `image_position_ids`
    `(images, max_patches, 2)`, each patch's `(x, y)` in patches, `(-1, -1)` for padding (Gemma 4:
    `Gemma4ImageProcessorPil._preprocess`, "Compute position IDs" with `np.meshgrid(..., indexing="xy")`; unified:
    `patches_merge`, whose merged positions are the min over each kernel of the teacher positions divided by `k`).
    The towers place patches by these positions only (`Gemma4VisionPooler._avg_pool_by_positions`,
    `Gemma4UnifiedVisionEmbedder`'s factorized position embedding), so the decoder reads them too. Padding patches
    (masked to zero by the pooler; their soft tokens dropped) get position 0 and never receive gradient."""
    positions = inputs["image_position_ids"].clamp(min=0)
    images = torch.arange(tensor.shape[0]).view(-1, 1).expand(tensor.shape[:2])
    return patch_list_coordinates(tensor, positions[..., 1], positions[..., 0], images)


def naflex_coordinates(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """LFM2-VL (SigLIP2 NaFlex) `pixel_values` `(images, max_patches, patch * patch * channels)`: each image's
    `spatial_shapes[i] = (h, w)` patches row-major, then padding (`Lfm2VlImageProcessor`'s `convert_image_to_patches`,
    permute `(batch, h, w, p, p, c)`; `Lfm2VlModel.get_image_features` reads patch ``row * w + column``)."""
    index = torch.arange(tensor.shape[1]).view(1, -1)
    widths = inputs["spatial_shapes"][:, 1:2]
    images = torch.arange(tensor.shape[0]).view(-1, 1).expand(tensor.shape[:2])
    return patch_list_coordinates(tensor, index // widths, index % widths, images)


def thw_row_major_coordinates(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Kimi K2.5 `(patches, channels, patch, patch)` patches: per image (or video) its frames' `(h, w)` patches
    row-major (`KimiK25ImageProcessor.patchify`: permute to `[batch, grid_h, grid_w, channel, patch, patch]`;
    `get_vision_temporal_merge_index` reads patch ``row * width + col`` of each frame). The sub-image is the image or
    video: the tower's temporal merge averages a video's frames into each token ("the frame index is dropped: that's
    the pooled axis")."""
    grids = inputs["image_grid_thw" if key == "pixel_values" else "video_grid_thw"].tolist()
    subs, rows, cols = [], [], []
    for image, (t, h, w) in enumerate(grids):
        index = torch.arange(t * h * w) % (h * w)
        subs.append(torch.full_like(index, image))
        rows.append(index // w)
        cols.append(index % w)
    return patch_list_coordinates(tensor, torch.cat(rows), torch.cat(cols), torch.cat(subs))


LOCALITY_PIXEL_COORDINATES |= {
    "gemma4": xy_positioned_coordinates,
    "gemma4_unified": xy_positioned_coordinates,
    "lfm2_vl": naflex_coordinates,
    "kimi_k25": thw_row_major_coordinates,
}


# --- locality: fuyu
def fuyu_patch_coordinates(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """`(elements, 3)` for Fuyu's `(total_patches, patch * patch * channels)`: `FuyuImageProcessor.patchify_image`
    lists an image's patches row-major, and the images are concatenated in prompt order (batch rows, then a row's
    images). Each image's patch rows and columns are read off the prompt as Fuyu's processor writes it: a row of
    placeholders followed by the newline token, the rows of one image back to back. Coordinates in patches."""
    shapes = []
    for ids in inputs["input_ids"].tolist():
        rows: list[int] = []  # column counts of the current image's rows
        previous_end = None
        for position, token in enumerate(ids):
            if token != FUYU_NEWLINE:
                continue
            start = position
            while start > 0 and ids[start - 1] == ids[position - 1] and ids[start - 1] != FUYU_NEWLINE:
                start -= 1
            if rows and start != previous_end + 1:  # not straight after the last row: a new image
                shapes.append((len(rows), rows[0]))
                rows = []
            rows.append(position - start)
            previous_end = position
        if rows:
            shapes.append((len(rows), rows[0]))
    if sum(h * w for h, w in shapes) != tensor.shape[0]:
        raise ValueError(f"the prompt's Fuyu images {shapes} do not account for {tensor.shape[0]} patches")
    return row_major_patch_lists(tensor, shapes)


def row_major_patch_lists(tensor: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """`(elements, 3)` of a patch list `(total_patches, features)` holding image ``i``'s ``shapes[i] = (rows, cols)``
    patches row-major, the images one after another (see [`patch_list_coordinates`])."""
    image, rows, cols = (
        torch.cat(parts)
        for parts in zip(
            *(
                (torch.full((h * w,), index), torch.arange(h * w) // w, torch.arange(h * w) % w)
                for index, (h, w) in enumerate(shapes)
            ),
            strict=True,
        )
    )
    return patch_list_coordinates(tensor, rows, cols, image)


def image_grid_hw_coordinates(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Nemotron 3 Nano Omni's `pixel_values` `(total_patches, features)`: each image's ``image_grid_hw`` patches
    row-major, the images one after another."""
    return row_major_patch_lists(tensor, [tuple(shape) for shape in inputs["image_grid_hw"].tolist()])


LOCALITY_PIXEL_COORDINATES["fuyu"] = fuyu_patch_coordinates
LOCALITY_PIXEL_COORDINATES["nemotron_h_omni"] = image_grid_hw_coordinates
del LOCALITY_UNCHECKED["fuyu"]


def table_cases() -> list[FamilyCase]:
    return [table_case(entry) for entry in TABLE]


# --- locality: loc3
def thw_patch_coordinates(grids: list[list[int]], merges: list[int], elements_per_patch: int) -> torch.Tensor:
    """`(patches * elements_per_patch, 3)`: (sub-image id, patch row, patch column) of every element of a flattened
    patch list, each item `(t, h, w)` of `grids` listing its patches in `(t, h / m, w / m, m, m)` order (`m` its
    entry of `merges`; 1 is plain row-major), sub-images numbered per (item, temporal patch) in order."""
    rows = []
    base = 0
    for (t, h, w), m in zip(grids, merges, strict=True):
        frame, block_y, block_x, inner_y, inner_x = torch.meshgrid(
            *(torch.arange(s) for s in (t, h // m, w // m, m, m)), indexing="ij"
        )
        rows.append(torch.stack([base + frame, block_y * m + inner_y, block_x * m + inner_x], dim=-1).reshape(-1, 3))
        base += t
    return torch.cat(rows).repeat_interleave(elements_per_patch, dim=0)


def paddleocr_vl_pixels(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """PaddleOCR-VL's `(patches, channels, patch, patch)` pixel values: each image's patches row-major, as its image
    processor writes them (transformers 5.24 `PaddleOCRVLImageProcessor.patchify`: ``permute(0, 2, 4, 1, 3, 5)`` to
    `[batch, grid_h, grid_w, channel, patch, patch]`) and its projector reads them (`PaddleOCRProjector.forward`:
    ``reshape(t, h_block, m1, w_block, m2, d).transpose(2, 3)``, merge blocks cut from the row-major grid). Every
    element gets its patch's (row, column), as the probe's own decoder of flattened patches does."""
    grids = inputs["image_grid_thw"].tolist()
    return thw_patch_coordinates(grids, [1] * len(grids), tensor[0].numel())


def video_llama_3_pixels(key: str, tensor: torch.Tensor, inputs: dict) -> torch.Tensor:
    """VideoLLaMA 3's `(patches, channels * patch * patch)` lists: per image (video) its patches in `(t, h / m, w / m,
    m, m)` order with its own merge size `m` from ``image_merge_sizes`` (``video_merge_sizes``), as its image
    processor writes them (transformers 5.24 `VideoLlama3ImageProcessor` patchify: ``permute(0, 2, 5, 3, 6, 1, 4,
    7)`` of `(batch, channel, h / m, m, patch, w / m, m, patch)`) and `VideoLlama3VisionModel.pixel_unshuffle` undoes
    (``view(t, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5)`` back to `(t, h, w)`, then a bilinear resize to
    `(h / m, w / m)`). The probe's default decoder assumes merge 2 for every image; the tested config uses 1."""
    video = key == "pixel_values_videos"
    grids = inputs["video_grid_thw" if video else "image_grid_thw"].tolist()
    merges = inputs["video_merge_sizes" if video else "image_merge_sizes"].tolist()
    return thw_patch_coordinates(grids, merges, tensor[0].numel())


LOCALITY_PIXEL_COORDINATES |= {"paddleocr_vl": paddleocr_vl_pixels, "video_llama_3": video_llama_3_pixels}
LOCALITY_PATCH_MERGE["hunyuan_vl"] = 1
"""HunYuanVL's flattened patches are row-major `(t, h, w)` (its image processor's patchify: ``permute(0, 2, 3, 5, 6,
1, 4, 7)`` of `(batch, channel, h / m, m, patch, w / m, m, patch)`, "Flatten patches in row-major order in comparison
to Qwen"); `HunYuanVLVisionPatchMerger` reshapes them to `(channels, h, w)` and merges with a stride-m convolution
(kernel = stride: each merged cell sees its own m x m patches only)."""


# --- locality: loc4
MOLMO2_OVERLAP = (1, 1)
"""Molmo2's overlap margins (left, right), in patches, as `molmo2_pixels` runs its image processor."""
MOLMO2_POOLING = (2, 2)
"""Molmo2's pooling window (height, width), in patches, as `molmo2_pixels` runs its image processor."""


def molmo2_preprocess(
    tensors: list[torch.Tensor],
    patch_size: int,
    max_crops: int = 4,
    overlap_margins: tuple[int, int] = MOLMO2_OVERLAP,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Molmo2's own image processor code (`Molmo2ImageProcessor._preprocess`, 24 px crops) on `(3, H, W)` images,
    with its two torchvision calls (resize, rescale-normalize) replaced by torch equivalents (a bilinear resize to
    the same size is the identity); `normalize=False` keeps the pixel values as they are."""
    from transformers.image_utils import SizeDict
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor

    class TorchOnly(Molmo2ImageProcessor):
        def resize(self, image, size, resample=None, antialias=True, **kwargs):
            return torch.nn.functional.interpolate(image, size=(size.height, size.width), mode="bilinear")

        def rescale_and_normalize(self, image, do_rescale, rescale_factor, do_normalize, image_mean, image_std):
            image = image.float() * rescale_factor if do_rescale else image.float()
            if do_normalize:
                mean, std = torch.tensor(image_mean).view(-1, 1, 1), torch.tensor(image_std).view(-1, 1, 1)
                image = (image - mean) / std
            return image

    processor = TorchOnly()
    out = processor._preprocess(
        tensors,
        do_resize=True,
        size=SizeDict(height=24, width=24),
        resample=processor.resample,
        do_rescale=normalize,
        rescale_factor=1 / 255,
        do_normalize=normalize,
        image_mean=processor.image_mean,
        image_std=processor.image_std,
        do_convert_rgb=True,
        max_crops=max_crops,
        overlap_margins=list(overlap_margins),
        patch_size=patch_size,
        pooling_size=list(MOLMO2_POOLING),
        disable_grouping=None,
        return_tensors="pt",
    )
    return {key: out[key] for key in ("pixel_values", "image_token_pooling", "image_grids", "image_num_crops")}


def molmo2_crop_coordinates(
    key: str,
    tensor: torch.Tensor,
    inputs: dict,
    overlap_margins: tuple[int, int] = MOLMO2_OVERLAP,
    pooling: tuple[int, int] = MOLMO2_POOLING,
) -> torch.Tensor:
    """Molmo2's `pixel_values` `(crops, patches, patch * patch * 3)`: per image (``image_num_crops`` crops) first
    the low-resolution view (the image resized to one crop), then the overlapping crops of the high-resolution
    canvas, row-major; each crop's patches row-major (transformers 5.24 `Molmo2ImageProcessor`:
    `_image_batch_to_patches_and_grids` puts ``resized`` before ``crops``, `batch_pixels_to_patches` lists a crop's
    `(h / patch, w / patch)` patches row-major). `_build_overlapping_crops` cuts the crops with
    ``canvas.unfold(2, crop, window).unfold(3, crop, window)``, `window = crop - (left + right) * patch` pixels,
    so patch `(r, c)` of crop `(i, j)` is canvas patch `(i * w + r, j * w + c)`, `w` the window in patches (the
    margins a neighbouring crop also covers land on the same canvas patch). Sub-images: the low view `2k`, the canvas
    `2k + 1` of image `k`. The tiling `(tiles_h, tiles_w)` is the one whose canvas (`compute_crop_geometry`:
    ``tiling * window + margins``) pools (`arange_for_pooling`: ``ceil(canvas / pool)``) to the image's
    ``image_grids`` `[low_h, low_w, high_h, high_w]`; the crop layout is read from the pixels' side only, never from
    ``image_token_pooling`` (the order the tokens take, which the probe checks)."""
    side = math.isqrt(tensor.shape[1])
    assert side * side == tensor.shape[1], f"Molmo2 crops of {tensor.shape[1]} patches are not square"
    window = side - sum(overlap_margins)
    rows, cols, subs = [], [], []
    index = torch.arange(side * side)
    crop_r, crop_c = index // side, index % side
    crops = inputs["image_num_crops"].tolist()
    for image, (count, (_, _, high_h, high_w)) in enumerate(zip(crops, inputs["image_grids"].tolist(), strict=True)):
        tilings = [
            (tiles_h, (count - 1) // tiles_h)
            for tiles_h in range(1, count)
            if (count - 1) % tiles_h == 0
            and -(-(tiles_h * window + sum(overlap_margins)) // pooling[0]) == high_h
            and -(-((count - 1) // tiles_h * window + sum(overlap_margins)) // pooling[1]) == high_w
        ]
        assert len(tilings) == 1, (
            f"Molmo2 image {image}: no single tiling of {count - 1} crops gives {high_h}x{high_w}"
        )
        tiles_w = tilings[0][1]
        rows.append(crop_r)
        cols.append(crop_c)
        subs.append(torch.full_like(index, 2 * image))
        for crop in range(count - 1):
            rows.append(crop // tiles_w * window + crop_r)
            cols.append(crop % tiles_w * window + crop_c)
            subs.append(torch.full_like(index, 2 * image + 1))
    return patch_list_coordinates(tensor, torch.cat(rows), torch.cat(cols), torch.cat(subs))


LOCALITY_PIXEL_COORDINATES["molmo2"] = molmo2_crop_coordinates
