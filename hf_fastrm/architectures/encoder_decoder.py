"""Encoder-decoder families whose image tokens live in the ENCODER's sequence (Florence-2, T5Gemma 2).

The text decoder never holds an image token: it cross-attends to the encoder's last hidden states, some of which
are image features written over placeholder tokens of the encoder's input (``config.image_token_id``). So the FastRM
head reads, for each generated token, the decoder's last hidden state (its final norm's output, what ``lm_head``
reads) against the encoder's last hidden states at the image placeholder positions:

* layouts: positions in the encoder's input ids (the prompt given to ``generate()``), found as in
  [`PlaceholderAdapter`]; grids from the family's vision tower;
* keys: [`EncoderDecoderAdapter.image_key_states`] returns ``encoder_outputs.last_hidden_state`` of the prefill's
  forward (``generate()`` runs the encoder once, before decoding, and hands its outputs to every step);
* query: the decoder's final-norm output of each step, as for decoder-only families.

The gradient teacher for these families follows Chefer et al. 2021's encoder-decoder rules
(`hf_fastrm.teacher.encoder_decoder`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .base import RowImageLayout
from .generic import NORM_NAMES, PlaceholderAdapter, _attribute_path
from .grids import MediaPlan, assign_media, merge_rows, token_positions

DECODER_PATHS = (
    "model.language_model.decoder",
    "model.decoder",
    "decoder",
    "decoder.transformer",
    "decoder.model.decoder",
    "model.text_decoder",
)
"""Where transformers keeps the text decoder of an encoder-decoder model (Florence-2: a BART model under
``model.language_model``; T5Gemma 2: ``model.decoder``; VisionEncoderDecoder: its decoder's stack, e.g. GPT-2's
``decoder.transformer``)."""
ENCODER_STACKS = ("text_model", "language_model", "encoder")
"""Where an encoder keeps its layers when not on itself (T5Gemma 2: ``text_model``; Pix2Struct: ``encoder``)."""
STACK_NAMES = ("layers", "layer", "h", "blocks")
SELF_ATTENTION_NAMES = ("self_attn", "self_attention", "attention", "attn")
CROSS_ATTENTION_NAMES = ("encoder_attn", "cross_attn", "crossattention", "encoder_decoder_attention")
"""Attribute spellings of a decoder layer's cross-attention module (BART: ``encoder_attn``; Pix2Struct:
``encoder_decoder_attention``)."""


def stack_layers(module: nn.Module) -> nn.ModuleList | None:
    """The layers of a transformer stack (``layers``, ``layer``, ``h`` or ``blocks``), on it or on its ``encoder``."""
    for holder in (module, getattr(module, "encoder", None)):
        for name in STACK_NAMES:
            layers = getattr(holder, name, None) if isinstance(holder, nn.Module) else None
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    return None


def attention_core(module: nn.Module) -> nn.Module:
    """The module that calls the attention function: wrappers (``Pix2StructTextLayerSelfAttention``, ``ViTAttention``)
    hold it as ``.attention``."""
    while isinstance(getattr(module, "attention", None), nn.Module):
        module = module.attention
    return module


class EncoderDecoderAdapter(PlaceholderAdapter):
    """An adapter for encoder-decoder models with image placeholder tokens in the encoder's input.

    The layout rules are [`PlaceholderAdapter`]'s, applied to the encoder's input ids; the language model of the
    teacher and the tap is the text decoder; the image key states are the encoder's last hidden states.
    """

    is_encoder_decoder = True
    family = "encoder-decoder, images in the encoder"
    teacher_support = "yes (Chefer et al.'s encoder-decoder rules)"
    teacher_refusal: str | None = None
    """Why the gradient teacher cannot explain this family (it raises `NotImplementedError` with it), or None."""

    # ------------------------------------------------------------------ modules
    def encoder(self, model: nn.Module) -> nn.Module:
        """The text encoder whose input holds the image placeholder tokens: ``model.get_encoder()``, or its text
        model when that wraps one (T5Gemma 2: ``encoder.text_model``); the module holding the encoder's layers."""
        get_encoder = getattr(model, "get_encoder", None)
        encoder = get_encoder() if callable(get_encoder) else None
        if isinstance(encoder, nn.Module) and stack_layers(encoder) is None:
            encoder = next(
                (getattr(encoder, name) for name in ENCODER_STACKS if _attribute_path(encoder, name) is not None),
                encoder,
            )
        if not isinstance(encoder, nn.Module) or stack_layers(encoder) is None:
            raise ValueError(
                f"Cannot find the encoder of {type(model).__name__} (`get_encoder()` with `.layers`). Subclass "
                "`EncoderDecoderAdapter` and override `encoder` for this family."
            )
        return encoder

    def encoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The encoder's layers, first to last."""
        return stack_layers(self.encoder(model))

    def language_model(self, model: nn.Module) -> nn.Module:
        """The text decoder (its layers hold the self- and cross-attention the teacher records)."""
        for path in DECODER_PATHS:
            module = _attribute_path(model, path)
            if module is not None and stack_layers(module) is not None:
                return module
        raise ValueError(
            f"Cannot find the text decoder of {type(model).__name__}: none of "
            f"{', '.join('model.' + p for p in DECODER_PATHS)} has layers. Override `language_model`."
        )

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The decoder's final norm; for post-norm decoders without one (BART), the last layer's output norm."""
        decoder = self.language_model(model)
        for name in ("layer_norm", *NORM_NAMES):
            norm = getattr(decoder, name, None)
            if isinstance(norm, nn.Module):
                return norm
        norm = getattr(stack_layers(decoder)[-1], "final_layer_norm", None)
        if not isinstance(norm, nn.Module):
            raise ValueError(
                f"Cannot find the final norm of {type(decoder).__name__} (a `norm`/`layer_norm`, or the last layer's "
                "`final_layer_norm`). Override `final_norm`."
            )
        return norm

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return stack_layers(self.language_model(model))

    def attention_modules(self, model: nn.Module) -> dict[tuple[str, int], nn.Module]:
        """Every attention module the teacher's rules use, keyed ``("encoder", i)``, ``("self", i)``, ``("cross", i)``
        (no ``"cross"`` key for a layer whose self-attention also attends to the encoder, T5Gemma 2's merged
        attention)."""
        modules: dict[tuple[str, int], nn.Module] = {}
        for stack, layers in (("encoder", self.encoder_layers(model)), ("self", self.decoder_layers(model))):
            for index, layer in enumerate(layers):
                found = next((getattr(layer, n) for n in SELF_ATTENTION_NAMES if _is_module(layer, n)), None)
                if found is None:
                    raise ValueError(
                        f"{'Encoder' if stack == 'encoder' else 'Decoder'} layer {index} ({type(layer).__name__}) has "
                        f"no self-attention module ({' / '.join(SELF_ATTENTION_NAMES)}); override `attention_modules`."
                    )
                modules[(stack, index)] = attention_core(found)
                cross = next((getattr(layer, n) for n in CROSS_ATTENTION_NAMES if _is_module(layer, n)), None)
                if stack == "self" and cross is not None:
                    modules[("cross", index)] = attention_core(cross)
        return modules

    # ------------------------------------------------------------------ layout
    def encoder_layout(self, config: Any, prompt: dict[str, Any]) -> list[RowImageLayout]:
        """Per prompt row, the image positions in the ENCODER's sequence and each image's grid.

        Args:
            config: the model's `PretrainedConfig`.
            prompt (`dict`): what the encoder was given (``input_ids``, ``pixel_values``, ``attention_mask``,
                ``flattened_patches``, ...), one row per prompt.
        """
        input_ids = prompt.get("input_ids")
        if input_ids is None:
            raise ValueError(
                "FastRM needs the prompt's `input_ids` to find the image tokens in the encoder's input, but generate() "
                "was called without them (`inputs_embeds` only?). Pass the processor's `input_ids` and pixel values."
            )
        self.check_required_inputs(config, input_ids, prompt)
        return self.image_layout(config, input_ids, prompt)

    # ------------------------------------------------------------------ keys
    def image_key_states(
        self, model: nn.Module, decoder_states: torch.Tensor, forward_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """`(rows, encoder_seq, hidden)`: the encoder's last hidden states the prefill's forward received
        (``encoder_outputs``, expanded by ``generate()`` for beams and return sequences like the decoder's rows)."""
        encoder_outputs = forward_kwargs.get("encoder_outputs")
        if encoder_outputs is None:
            raise ValueError(
                "FastRM reads the encoder's states of an encoder-decoder model from the `encoder_outputs` generate() "
                "passes to the decoder; this forward got none. Call the model's generate() with the processor's "
                "`input_ids` and pixel values."
            )
        states = getattr(encoder_outputs, "last_hidden_state", None)
        return states if states is not None else encoder_outputs[0]


def _is_module(owner: nn.Module, name: str) -> bool:
    return isinstance(getattr(owner, name, None), nn.Module)


def _conv_output(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Florence2Adapter(EncoderDecoderAdapter):
    """``Florence2ForConditionalGeneration``: a DaViT tower, a BART encoder-decoder.

    Each image gives ``1 + h * w`` features written over placeholder tokens of the encoder's input: first the mean
    of all patch features (a global token, in no grid cell), then the last stage's ``h x w`` patch features in
    row-major order (``Florence2MultiModalProjector``). ``h, w`` follow from the pixel values' size through the
    tower's strided convolutions (``patch_size``, ``patch_stride``, ``patch_padding`` per stage).
    """

    family = "Florence-2"
    grid_description = (
        "encoder positions of the image placeholders; per image a global token then an (h, w) grid, h and w from "
        "the pixel size through the DaViT stages' strided convolutions"
    )

    def __init__(self) -> None:
        super().__init__(
            ("florence2",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "florence2: tiny DaViT (1 stage, stride 4) + BART (2+2 layers); two prompts with 16x24 px images (a "
                "global token, then a 4x6 grid); tests/models/test_encoder_decoder.py",
            ),
        )

    def patch_grid(self, config: Any, height: int, width: int) -> tuple[int, int]:
        """The last vision stage's `(rows, cols)` for an image of `height x width` pixels."""
        vision = config.vision_config
        for kernel, stride, padding in zip(vision.patch_size, vision.patch_stride, vision.patch_padding, strict=True):
            height, width = _conv_output(height, kernel, stride, padding), _conv_output(width, kernel, stride, padding)
        return height, width

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        pixel_values = model_kwargs.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            return super().image_layout(config, input_ids, model_kwargs)
        rows, cols = self.patch_grid(config, int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        grid = torch.arange(1, 1 + rows * cols).view(rows, cols)  # offset 0 is the global token
        positions = token_positions(input_ids, self.image_token_id(config))
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(1 + rows * cols, [("", grid)]),
            kind="image",
            num_items=int(pixel_values.shape[0]),
            family=self.family,
        )
        return merge_rows(positions, grids)


class T5Gemma2Adapter(EncoderDecoderAdapter):
    """``T5Gemma2ForConditionalGeneration``: a SigLIP tower pooled to ``mm_tokens_per_image`` soft tokens (a square
    grid, as Gemma 3) written over placeholder tokens of the encoder's input; the decoder's merged attention attends
    to its own tokens and the encoder's states in one softmax."""

    family = "T5Gemma 2"
    grid_description = (
        "encoder positions of the image placeholders; per image a square grid of mm_tokens_per_image soft tokens "
        "(pooled SigLIP patches, row-major)"
    )

    def __init__(self) -> None:
        super().__init__(
            ("t5gemma2",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "t5gemma2: tiny SigLIP (image 16, patch 4, pooled to 2x2) + 2+2 layers (GQA, sliding and full); rows "
                "with two images and one; tests/models/test_encoder_decoder.py",
            ),
        )

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        tokens = int(config.encoder.mm_tokens_per_image)
        side = math.isqrt(tokens)
        if side * side != tokens:
            return super().image_layout(config, input_ids, model_kwargs)
        grid = torch.arange(tokens).view(side, side)
        positions = token_positions(input_ids, self.image_token_id(config))
        pixel_values = model_kwargs.get("pixel_values")
        num_items = int(pixel_values.shape[0]) if isinstance(pixel_values, torch.Tensor) else None
        grids = assign_media(
            positions,
            lambda item, row: MediaPlan(tokens, [("", grid)]),
            kind="image",
            num_items=num_items,
            family=self.family,
        )
        return merge_rows(positions, grids)


class Pix2StructAdapter(EncoderDecoderAdapter):
    """``Pix2StructForConditionalGeneration``: the encoder reads ``flattened_patches``, each row a list of patches
    whose first two values are the patch's 1-based row and column (0 for padding); every encoder state is one patch.

    The layout is exact: each real patch is the cell its row and column say (the processor lists them row-major, but
    the cell comes from the ids, not from that order); padding patches belong to no image.
    """

    family = "Pix2Struct"
    grid_description = (
        "every encoder state is an image patch; one (rows, cols) grid per image from the row and column ids in "
        "`flattened_patches`"
    )

    def __init__(self) -> None:
        super().__init__(
            ("pix2struct",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "pix2struct: tiny vision encoder and T5-style text decoder (2+2 layers, relative position bias); "
                "3x4 and 2x5 patch grids in 16 padded patch slots; tests/models/test_encoder_decoder.py",
            ),
        )

    def encoder_layout(self, config: Any, prompt: dict[str, Any]) -> list[RowImageLayout]:
        patches = prompt.get("flattened_patches")
        if not isinstance(patches, torch.Tensor) or patches.dim() != 3 or patches.shape[-1] < 3:
            raise ValueError(
                "Pix2Struct reads the image from `flattened_patches` `(batch, max_patches, 2 + patch_values)`, which "
                "generate() was not given. Pass what its processor returned: `model.generate(**processor(images=image, "
                "return_tensors='pt'), ...)`."
            )
        layouts = []
        for row_patches in patches:
            rows, cols = row_patches[:, 0].round().long(), row_patches[:, 1].round().long()
            real = (rows > 0) & (cols > 0)
            positions = real.nonzero().flatten().cpu()
            height, width = int(rows[real].max()), int(cols[real].max())
            grid = torch.full((height, width), -1, dtype=torch.long)
            grid[rows[real].cpu() - 1, cols[real].cpu() - 1] = torch.arange(positions.numel())
            layouts.append(RowImageLayout(positions, [grid], ["image 0"]))
        return layouts


class VisionEncoderDecoderAdapter(EncoderDecoderAdapter):
    """``VisionEncoderDecoderModel``: any vision encoder, any text decoder with cross-attention. Every encoder state
    is the image's: for ViT-like encoders (``vit``: a CLS token, ``deit``: CLS and distillation tokens) the leading
    tokens, then the ``(height / patch, width / patch)`` patch grid in row-major order.

    When the encoder and decoder widths differ (and the decoder's cross-attention does not take the encoder's width
    itself), the model projects the encoder's states (``enc_to_dec_proj``) before the decoder reads them: the head's
    keys are those projected states, what the cross-attention reads.
    """

    family = "VisionEncoderDecoder"
    grid_description = (
        "every encoder state is the image's; ViT-like encoders (vit, deit): the leading CLS/distillation tokens, "
        "then an (H / patch, W / patch) grid from the pixel size; other encoders refused"
    )
    LEADING_TOKENS: ClassVar[dict[str, int]] = {"vit": 1, "deit": 2}
    """Encoder model types served, and how many non-patch tokens precede their patches."""

    def __init__(self) -> None:
        super().__init__(
            ("vision-encoder-decoder",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "vision-encoder-decoder: tiny ViT encoder (width 24, CLS + 4x4 patches) + GPT-2 decoder with "
                "cross-attention (width 32, so the encoder's states go through enc_to_dec_proj); "
                "tests/models/test_encoder_decoder.py",
            ),
        )

    def encoder_layout(self, config: Any, prompt: dict[str, Any]) -> list[RowImageLayout]:
        encoder_type = getattr(config.encoder, "model_type", None)
        if encoder_type not in self.LEADING_TOKENS:
            raise ValueError(
                f"FastRM's VisionEncoderDecoder adapter knows the token layout of {sorted(self.LEADING_TOKENS)} "
                f"encoders, not {encoder_type!r}. Register an adapter (subclass `VisionEncoderDecoderAdapter` and "
                "override `encoder_layout`)."
            )
        pixel_values = prompt.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise ValueError(
                "The VisionEncoderDecoder model reads the image from `pixel_values` `(batch, channels, height, "
                "width)`, which generate() was not given. Pass what its processor returned."
            )
        patch = config.encoder.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        rows, cols = int(pixel_values.shape[-2]) // patch_h, int(pixel_values.shape[-1]) // patch_w
        leading = self.LEADING_TOKENS[encoder_type]
        grid = torch.arange(leading, leading + rows * cols).view(rows, cols)
        positions = torch.arange(leading + rows * cols)
        return [RowImageLayout(positions, [grid], ["image 0"]) for _ in range(pixel_values.shape[0])]

    def image_key_states(
        self, model: nn.Module, decoder_states: torch.Tensor, forward_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The encoder's last hidden states as the decoder's cross-attention reads them (after ``enc_to_dec_proj``
        where the model has one)."""
        states = super().image_key_states(model, decoder_states, forward_kwargs)
        projection = getattr(model, "enc_to_dec_proj", None)
        return projection(states) if isinstance(projection, nn.Module) else states


class PPFormulaNetAdapter(EncoderDecoderAdapter):
    """``PPFormulaNetForConditionalGeneration``: a SAM-style ViT encoder whose patch features (``(H / patch, W /
    patch)``) two stride-2 convolutions pool into the states the decoder cross-attends to (the encoder output's
    ``pooler_output``, ``PPFormulaNetMultiModalProjector``), flattened row-major. The keys are those pooled states,
    one grid cell each.
    """

    family = "PP-FormulaNet"
    grid_description = (
        "every pooled encoder state (`pooler_output`) is the image's; one (H / patch / 4, W / patch / 4) grid "
        "(two stride-2 convolutions, rounded up)"
    )
    teacher_support = (
        "no: the decoder cross-attends to conv-pooled encoder features; Chefer et al.'s rules have no rule through "
        "the projector's convolutions (the encoder's attention is over the unpooled patches)"
    )
    teacher_refusal = teacher_support

    def __init__(self) -> None:
        super().__init__(
            ("pp_formulanet",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support=self.teacher_support,
            tested_configs=(
                "pp_formulanet: tiny SAM-style encoder (patch 8, 64x64 px, window and global attention) + mBART "
                "decoder (2 layers), 2x2 pooled grid; tests/models/test_encoder_decoder.py",
            ),
        )

    def encoder_layout(self, config: Any, prompt: dict[str, Any]) -> list[RowImageLayout]:
        pixel_values = prompt.get("pixel_values")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise ValueError(
                "PP-FormulaNet reads the image from `pixel_values` `(batch, channels, height, width)`, which "
                "generate() was not given. Pass what its processor returned."
            )
        patch = config.vision_config.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        rows, cols = int(pixel_values.shape[-2]) // patch_h, int(pixel_values.shape[-1]) // patch_w
        for _ in range(2):  # the projector's two convolutions: kernel 3, stride 2, padding 1
            rows, cols = _conv_output(rows, 3, 2, 1), _conv_output(cols, 3, 2, 1)
        grid = torch.arange(rows * cols).view(rows, cols)
        return [RowImageLayout(torch.arange(rows * cols), [grid], ["image 0"]) for _ in range(pixel_values.shape[0])]

    def image_key_states(
        self, model: nn.Module, decoder_states: torch.Tensor, forward_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The pooled encoder states the decoder cross-attends to (``encoder_outputs.pooler_output``)."""
        encoder_outputs = forward_kwargs.get("encoder_outputs")
        pooled = getattr(encoder_outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError(
                "PP-FormulaNet's decoder reads the encoder's `pooler_output`, which the forward's `encoder_outputs` "
                "lack. Call the model's generate() with the processor's pixel values."
            )
        return pooled


ENCODER_DECODER_FAMILIES: tuple[EncoderDecoderAdapter, ...] = (
    Florence2Adapter(),
    T5Gemma2Adapter(),
    Pix2StructAdapter(),
    VisionEncoderDecoderAdapter(),
    PPFormulaNetAdapter(),
)
