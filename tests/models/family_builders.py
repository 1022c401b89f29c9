"""One tiny-config builder per model family, shaped like transformers' `ModelTester` classes.

Every builder returns a [`FamilyCase`]: a randomly initialised model (hidden 32, 2 layers, a tiny vision tower),
the inputs its real processor (built offline with a hand-made word-level tokenizer) gives for several images of
several sizes, and the grids those inputs must produce, computed from the processor's side (its own token-count
formulas, `image_grid_thw`, row/column counts) rather than from the adapter under test. Where a processor cannot be
built here (video processors need torchvision; Llama 4's image processor too), the builder lays the special tokens
out exactly as the processor's `replace_*_token` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = 0, 1, 2
WORDS = (
    "hello",
    "what",
    "is",
    "in",
    "this",
    "picture",
    "describe",
    "the",
    "left",
    "one",
    "and",
    "video",
    "\n",
    "\n\n",
)
WORDS += (" ", ":", "Frame", "1", "2", "3", "4", "_", "<", ">")


@dataclass
class FamilyCase:
    """A tiny model of one family with processor-made inputs and the grids they must give.

    Attributes:
        name: the pytest id.
        build: `() -> (model, inputs)`; inputs are what the processor returned (tensors), padded on the left.
        expected_grids: per batch row, `(label, grid shape)` of each grid in prompt order.
        mrope: the model computes its own (multimodal) position ids: the reference forward passes none.
        teacher_issue: why the gradient teacher is known to fail on this family (the test is then an xfail).
        slow: mark the case slow (kept out of the default run).
        notes: what the case covers.
        new_token_type: the `token_type_ids` value of generated tokens in the reference forward (PaliGemma: 1,
            the suffix; elsewhere 0, text).
        repeat_inputs: per-token prompt inputs `(batch, prompt_len, ...)` that generated tokens take from the prompt's
            last position in the reference forward (Mllama's `cross_attention_mask`, as its generation rule does).
        image_states: cross-attention families (layouts with ``source="cross_attention"``): `(model) -> (hook
            module, reader)`, the test's own reading of the image states the cross-attention layers attend to,
            `reader(args, kwargs) -> (batch, image_states, hidden)` from a forward pre-hook on the module; the
            layout's positions index them instead of the sequence.
        image_mask_input: the processor output that marks the image tokens with 1 (Kosmos-2's
            ``image_embeds_position_mask``), for a family without placeholder ids; `None`: the placeholder ids do.
    """

    name: str
    build: Callable[[], tuple[torch.nn.Module, dict[str, Any]]]
    expected_grids: list[list[tuple[str, tuple[int, ...]]]]
    mrope: bool = False
    teacher_issue: str | None = None
    slow: bool = False
    notes: str = ""
    new_token_type: int = 0
    repeat_inputs: tuple[str, ...] = ()
    image_states: Callable[[torch.nn.Module], tuple[torch.nn.Module, Callable[[tuple, dict], torch.Tensor]]] | None = (
        None
    )
    image_mask_input: str | None = None


# ---------------------------------------------------------------------------------------------------- helpers
def make_tokenizer(special_tokens: list[str], attributes: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that keeps newlines and spaces as tokens and every special token whole."""
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
    for token in [*special_tokens, *WORDS]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+| +|\w+|[^\w\s]"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=attributes or {},
        padding_side="left",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(special_tokens)}, replace_extra_special_tokens=False
    )
    return tokenizer


def image_only(processor_cls: type) -> type:
    """`processor_cls` without its video processor: video processors need torchvision, which this environment lacks.
    Videos are then laid out by hand, as the processor's `replace_video_token` does."""

    class ImageOnlyProcessor(processor_cls):
        @classmethod
        def get_attributes(cls):
            return [name for name in super().get_attributes() if name != "video_processor"]

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = processor_cls.__name__
    return ImageOnlyProcessor


def images(*sizes: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """Random RGB images of the given (height, width)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def llama_text(vocab_size: int, **overrides: Any):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def clip_vision(image_size: int = 8, patch_size: int = 2):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )


def siglip_vision(image_size: int = 8, patch_size: int = 2, **overrides: Any):
    from transformers import SiglipVisionConfig

    kwargs = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    kwargs.update(overrides)
    return SiglipVisionConfig(**kwargs)


def finish(model: torch.nn.Module, name: str, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    """Eval mode, generation ids set, a stable `_name_or_path` for the head's check, and the special tokens
    suppressed in generation (a random tiny model would otherwise write image tokens, which a teacher-forced
    forward then takes for images)."""
    model.eval()
    model.generation_config.suppress_tokens = [i for i in tokenizer.all_special_ids if i not in (PAD, BOS, EOS)] + [
        i for i in range(len(tokenizer), model.config.get_text_config().vocab_size)
    ]
    model.config._name_or_path = f"hf-fastrm/tiny-{name}"
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    return model


def tensors(batch: Any) -> dict[str, Any]:
    return {key: value for key, value in dict(batch).items() if value is not None}


def left_pad(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` from token lists, padded on the left."""
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pixtral_tokens(tokenizer, image_size, patch: int) -> list[str]:
    """`PixtralProcessor.replace_image_token`: rows of [IMG] each ended by [IMG_BREAK], the last by [IMG_END]."""
    height, width = (int(v) // patch for v in image_size)
    tokens = (["[IMG]"] * width + ["[IMG_BREAK]"]) * height
    tokens[-1] = "[IMG_END]"
    return tokens


# ---------------------------------------------------------------------------------------------------- LLaVA
def llava_case() -> FamilyCase:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    def build():
        tokenizer = make_tokenizer(["<image>"])
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}),
            tokenizer=tokenizer,
            patch_size=2,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        config = LlavaConfig(
            vision_config=clip_vision(),
            text_config=llama_text(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-1,
        )
        torch.manual_seed(0)
        model = finish(LlavaForConditionalGeneration(config), "llava", tokenizer)
        batch = processor(
            images=[images((8, 8)), images((12, 9), (9, 12), seed=1)],
            text=["hello <image> what is this", "<image> the left one and <image> describe"],
            return_tensors="pt",
            padding=True,
        )
        return model, tensors(batch)

    return FamilyCase("llava", build, [[("image 0", (4, 4))], [("image 0", (4, 4)), ("image 1", (4, 4))]])


def llava_pixtral_case() -> FamilyCase:
    """pixtral-12b's layout: a LLaVA model with a Pixtral tower, variable image sizes and [IMG_BREAK] rows."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    sizes = [(16, 8), (8, 12), (12, 16)]

    def build():
        tokenizer = make_tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
        image_processor = PixtralImageProcessorPil(size={"longest_edge": 16}, patch_size={"height": 4, "width": 4})
        vision = PixtralVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=16,
            patch_size=4,
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=llama_text(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
        torch.manual_seed(0)
        model = finish(LlavaForConditionalGeneration(config), "llava-pixtral", tokenizer)
        pixel = image_processor(images=images(*sizes), return_tensors="pt")
        ids = tokenizer.convert_tokens_to_ids
        prompts = [["hello", *pixtral_tokens(tokenizer, pixel["image_sizes"][0], 4), "what"]]
        prompts.append([*pixtral_tokens(tokenizer, pixel["image_sizes"][1], 4), "and"])
        prompts[1] += pixtral_tokens(tokenizer, pixel["image_sizes"][2], 4)
        inputs = left_pad([[BOS, *ids(prompt)] for prompt in prompts])
        return model, inputs | {"pixel_values": pixel["pixel_values"], "image_sizes": pixel["image_sizes"]}

    # (16, 8) -> 4 x 2 patches; (8, 12) -> 2 x 3; (12, 16) -> 3 x 4 (longest edge 16, patch 4)
    return FamilyCase(
        "llava-pixtral",
        build,
        [[("image 0", (4, 2))], [("image 0", (2, 3)), ("image 1", (3, 4))]],
        notes="Pixtral tower in LlavaForConditionalGeneration (pixtral-12b)",
    )


def vipllava_case() -> FamilyCase:
    from transformers import LlavaProcessor, VipLlavaConfig, VipLlavaForConditionalGeneration
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    def build():
        tokenizer = make_tokenizer(["<image>"])
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}),
            tokenizer=tokenizer,
            patch_size=2,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        config = VipLlavaConfig(
            vision_config=clip_vision(),
            text_config=llama_text(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layers=[-2, -1],
            projector_layernorm_eps=1e-5,
        )
        torch.manual_seed(0)
        model = finish(VipLlavaForConditionalGeneration(config), "vipllava", tokenizer)
        batch = processor(
            images=[images((8, 8), (10, 6))], text=["<image> and <image> what is this"], return_tensors="pt"
        )
        return model, tensors(batch)

    return FamilyCase("vipllava", build, [[("image 0", (4, 4)), ("image 1", (4, 4))]])


# ---------------------------------------------------------------------------------------------------- LLaVA-NeXT
PINPOINTS = [[8, 16], [16, 8], [16, 16], [8, 24]]


def _llava_next_processor(tokenizer, processor_cls, image_processor_cls, **kwargs):
    image_processor = image_processor_cls(
        size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, image_grid_pinpoints=PINPOINTS
    )
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)


def _next_tile_shape(processor, height: int, width: int) -> tuple[int, int]:
    """The tiles grid the processor's own token count implies: (rows, cols) of the unpadded view."""
    from transformers.image_processing_utils import select_best_resolution

    best_h, best_w = select_best_resolution([height, width], PINPOINTS)
    side = 4
    unpadded, newlines = processor._get_unpadded_features(height, width, side, side, best_h // 8, best_w // 8)
    return newlines, unpadded // newlines


def llava_next_case() -> FamilyCase:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = make_tokenizer(["<image>"])
    processor = _llava_next_processor(
        tokenizer,
        LlavaNextProcessor,
        LlavaNextImageProcessorPil,
        patch_size=2,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    sizes = [(10, 30), (20, 12), (16, 16)]

    def build():
        config = LlavaNextConfig(
            vision_config=clip_vision(),
            text_config=llama_text(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-1,
        )
        torch.manual_seed(0)
        model = finish(LlavaNextForConditionalGeneration(config), "llava_next", tokenizer)
        batch = processor(
            images=[images(sizes[0]), images(*sizes[1:], seed=1)],
            text=["hello <image> what is this", "<image> the left one and <image> describe"],
            return_tensors="pt",
            padding=True,
        )
        return model, tensors(batch)

    def image_grids(local: int, size: tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"image {local} base", (4, 4)), (f"image {local} tiles", _next_tile_shape(processor, *size))]

    expected = [image_grids(0, sizes[0]), image_grids(0, sizes[1]) + image_grids(1, sizes[2])]
    return FamilyCase("llava_next", build, expected)


def llava_next_video_case() -> FamilyCase:
    """Images through the processor; a video's tokens laid out as `LlavaNextVideoProcessor.replace_video_token`."""
    from transformers import LlavaNextProcessor, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = make_tokenizer(["<image>", "<video>"])
    processor = _llava_next_processor(
        tokenizer,
        LlavaNextProcessor,
        LlavaNextImageProcessorPil,
        patch_size=2,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    frames = 3

    def build():
        video_id = tokenizer.convert_tokens_to_ids("<video>")
        config = LlavaNextVideoConfig(
            vision_config=clip_vision(),
            text_config=llama_text(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=video_id,
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-1,
            spatial_pool_stride=2,
        )
        torch.manual_seed(0)
        model = finish(LlavaNextVideoForConditionalGeneration(config), "llava_next_video", tokenizer)
        per_video = (4 // 2) ** 2 * frames  # (side / stride)^2 per frame, as replace_video_token's count // 4
        batch = processor(images=images((10, 30)), text=["<image> what is in this"], return_tensors="pt")
        ids = [*[video_id] * per_video, *batch["input_ids"][0].tolist()]
        inputs = tensors(batch) | left_pad([ids])
        inputs["pixel_values_videos"] = torch.randn(1, frames, 3, 8, 8)
        return model, inputs

    expected = [
        [("video 0", (frames, 2, 2)), ("image 0 base", (4, 4)), ("image 0 tiles", _next_tile_shape(processor, 10, 30))]
    ]
    return FamilyCase("llava_next_video", build, expected)


def llava_onevision_case(video: bool = False) -> FamilyCase:
    """Row 0: one image (tiled, anyres_max_1 so the tiles grid gets shrunk); row 1: two images (base grids only)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = make_tokenizer(["<image>", "<video>"])
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 8, "width": 8}, crop_size={"height": 8, "width": 8}, image_grid_pinpoints=PINPOINTS
    )
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1",
    )
    frames = 2

    def build():
        video_id = tokenizer.convert_tokens_to_ids("<video>")
        config = LlavaOnevisionConfig(
            vision_config=siglip_vision(),
            text_config=llama_text(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=video_id,
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_1",
        )
        torch.manual_seed(0)
        model = finish(LlavaOnevisionForConditionalGeneration(config), "llava_onevision", tokenizer)
        batch = processor(
            images=[images((10, 30)), images((8, 8), (12, 6), seed=1)],
            text=["hello <image> what is this", "<image> and <image> describe"],
            return_tensors="pt",
            padding=True,
        )
        inputs = tensors(batch)
        if video:
            # replace_video_token: frames * ceil(side / 2)^2 + 1 newline, all <video>
            per_video = frames * math.ceil(4 / 2) ** 2 + 1
            rows = [
                [video_id] * per_video + row[mask.bool()].tolist()
                for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
            ]
            inputs |= left_pad(rows)
            inputs["pixel_values_videos"] = torch.randn(2, frames, 3, 8, 8)
        return model, inputs

    unpadded, newlines = processor._get_unpadded_features(10, 30, 4, 4, 1, 3)
    tiles = (newlines, unpadded // newlines)
    rows = [
        [("image 0 base", (4, 4)), ("image 0 tiles", tiles)],
        [("image 0", (4, 4)), ("image 1", (4, 4))],
    ]
    if video:
        rows = [[("video 0", (frames, 2, 2)), *rows[0]], [("video 0", (frames, 2, 2)), *rows[1]]]
    return FamilyCase("llava_onevision-video" if video else "llava_onevision", build, rows)


# ---------------------------------------------------------------------------------------------------- Qwen-VL
QWEN_SPECIALS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]


def _qwen_config(model_type: str, tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    common = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
    )
    vision = dict(depth=2, num_heads=4, in_channels=3, patch_size=2, spatial_merge_size=2, temporal_patch_size=2)
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig(text_config=text, vision_config=vision | {"embed_dim": 32, "hidden_size": 32}, **common)
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision |= {"hidden_size": 32, "intermediate_size": 37, "out_hidden_size": 32, "window_size": 8}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision | {"fullatt_block_indexes": [1]}, **common)
    if model_type == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeConfig as Qwen3VLConfig

        text |= {"moe_intermediate_size": 16, "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1}
    else:
        from transformers import Qwen3VLConfig

    text |= {"head_dim": 8, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e4}}
    vision |= {"hidden_size": 32, "intermediate_size": 37, "out_hidden_size": 32, "num_position_embeddings": 16}
    return Qwen3VLConfig(text_config=text, vision_config=vision | {"deepstack_visual_indexes": [0]}, **common)


def qwen_case(model_type: str, video: bool = False) -> FamilyCase:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL through `Qwen2VLProcessor` (image sizes snapped to 4 px: patch 2, merge 2).

    Row 0 has one image, row 1 two images of other sizes; with `video`, row 1 also has a 4-frame video (laid out as
    the family's processor does: one block for Qwen2/2.5-VL, a timestamp and a block per frame group for Qwen3-VL).
    """
    from transformers import AutoModelForImageTextToText, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    sizes = [(8, 12), (16, 8), (12, 12)]
    video_thw = (2, 4, 6)  # 4 frames / temporal patch 2, 8 x 12 px

    def build():
        tokenizer = make_tokenizer(QWEN_SPECIALS)
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": 16, "longest_edge": 1024}, patch_size=2, merge_size=2, temporal_patch_size=2
        )
        processor = image_only(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tokenizer)
        torch.manual_seed(0)
        model = finish(
            AutoModelForImageTextToText.from_config(_qwen_config(model_type, tokenizer)), model_type, tokenizer
        )
        block = "<|vision_start|><|image_pad|><|vision_end|>"
        batch = processor(
            images=[images(sizes[0]), images(*sizes[1:], seed=1)],
            text=[f"hello {block} what is this", f"{block} the left one and {block} describe"],
            return_tensors="pt",
            padding=True,
        )
        inputs = tensors(batch)
        if video:
            ids = tokenizer.convert_tokens_to_ids
            frames, height, width = video_thw
            per_frame = height * width // 4
            if model_type == "qwen3_vl":
                tokens = []
                for frame in range(frames):
                    tokens += ["<", str(frame + 1), ">", "<|vision_start|>", *["<|video_pad|>"] * per_frame]
                    tokens.append("<|vision_end|>")
            else:
                tokens = ["<|vision_start|>", *["<|video_pad|>"] * (frames * per_frame), "<|vision_end|>"]
            rows = [
                row[mask.bool()].tolist()
                for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
            ]
            rows[1] = ids(tokens) + rows[1]
            inputs |= left_pad(rows)
            inputs["pixel_values_videos"] = torch.randn(frames * height * width, 3 * 2 * 2 * 2)
            inputs["video_grid_thw"] = torch.tensor([video_thw])
            token_types = torch.zeros_like(inputs["input_ids"])
            token_types[inputs["input_ids"] == ids("<|image_pad|>")] = 1
            token_types[inputs["input_ids"] == ids("<|video_pad|>")] = 2
            inputs["mm_token_type_ids"] = token_types
        return model, inputs

    def grid(height: int, width: int) -> tuple[int, int]:  # image_grid_thw // merge
        return height // 4, width // 4

    rows = [[("image 0", grid(*sizes[0]))], [("image 0", grid(*sizes[1])), ("image 1", grid(*sizes[2]))]]
    if video:
        rows[1].insert(0, ("video 0", (video_thw[0], video_thw[1] // 2, video_thw[2] // 2)))
    return FamilyCase(f"{model_type}-video" if video else model_type, build, rows, mrope=True)


# ---------------------------------------------------------------------------------------------------- Idefics3 / SmolVLM
IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
IDEFICS_SPECIALS += [f"<row_{r + 1}_col_{c + 1}>" for r in range(6) for c in range(6)]


def idefics3_case(model_type: str = "idefics3") -> FamilyCase:
    """Crops of 8 px (tower 8 px, patch 2, scale factor 2: 4 tokens a crop on a 2 x 2 grid), longest edge 16 px.

    Idefics3 goes through `Idefics3Processor` (row 0: a 16 x 10 and a 6 x 6 image, row 1: 10 x 24 and 24 x 8, all
    split). SmolVLM's processor needs `num2words`, so its text is built with the processor module's own
    `get_image_prompt_string`: row 0 split images, row 1 two unsplit images (as SmolVLM writes video frames).
    """
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    processor_kwargs = dict(size={"longest_edge": 16}, max_image_size={"longest_edge": 8}, do_image_splitting=True)
    image_processor_cls = Idefics3ImageProcessorPil if model_type == "idefics3" else SmolVLMImageProcessorPil
    sizes = [[(16, 10), (6, 6)], [(10, 24), (24, 8)]]
    pictures = [images(*row, seed=i) for i, row in enumerate(sizes)]
    split = [True, model_type == "idefics3"]
    pixel_rows = [
        image_processor_cls(**(processor_kwargs | {"do_image_splitting": do_split}))(
            images=[row], return_row_col_info=True
        )
        for row, do_split in zip(pictures, split, strict=True)
    ]
    splits = [list(zip(p["rows"][0], p["cols"][0], strict=True)) for p in pixel_rows]

    def build():
        from transformers import AutoModelForImageTextToText

        tokenizer = make_tokenizer(IDEFICS_SPECIALS)
        ids = tokenizer.convert_tokens_to_ids
        vision = dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=8,
            patch_size=2,
        )
        text = ["hello <image> what is this <image>", "<image> the left one and <image> describe"]
        if model_type == "idefics3":
            from transformers import Idefics3Config, Idefics3Processor

            config = Idefics3Config(
                vision_config=vision,
                text_config=llama_text(len(tokenizer)),
                scale_factor=2,
                image_token_id=ids("<image>"),
            )
            processor = Idefics3Processor(Idefics3ImageProcessorPil(**processor_kwargs), tokenizer, image_seq_len=4)
            inputs = tensors(processor(images=pictures, text=text, return_tensors="pt", padding=True))
        else:
            from transformers import SmolVLMConfig
            from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

            config = SmolVLMConfig(
                vision_config=vision,
                text_config=llama_text(len(tokenizer)),
                scale_factor=2,
                image_token_id=ids("<image>"),
            )
            prompts = []
            for prompt, (rows, cols) in zip(text, [zip(*row, strict=True) for row in splits], strict=True):
                parts = prompt.split("<image>")
                expanded = parts[0]
                for rows_, cols_, part in zip(rows, cols, parts[1:], strict=True):
                    expanded += get_image_prompt_string(
                        rows_, cols_, 4, "<fake_token_around_image>", "<image>", "<global-img>"
                    )
                    expanded += part
                prompts.append(expanded)
            inputs = tensors(tokenizer(prompts, return_tensors="pt", padding=True))
            # pad the rows' sub-image lists to one tensor with all-zero images, as the image processor does
            per_row = [torch.as_tensor(np.asarray(p["pixel_values"][0])) for p in pixel_rows]
            masks = [torch.as_tensor(np.asarray(p["pixel_attention_mask"][0])) for p in pixel_rows]
            most = max(len(row) for row in per_row)
            inputs["pixel_values"] = torch.stack(
                [torch.cat([row, row.new_zeros(most - len(row), *row.shape[1:])]) for row in per_row]
            )
            inputs["pixel_attention_mask"] = torch.stack(
                [torch.cat([mask, mask.new_zeros(most - len(mask), *mask.shape[1:])]) for mask in masks]
            )
        torch.manual_seed(0)
        model = finish(AutoModelForImageTextToText.from_config(config), model_type, tokenizer)
        return model, inputs

    def image_grids(local: int, rows: int, cols: int) -> list[tuple[str, tuple[int, ...]]]:
        if rows == cols == 0:
            return [(f"image {local}", (2, 2))]
        return [(f"image {local} tiles", (2 * rows, 2 * cols)), (f"image {local} global", (2, 2))]

    expected = [[g for i, rc in enumerate(row) for g in image_grids(i, *rc)] for row in splits]
    return FamilyCase(model_type, build, expected, notes=f"rows x cols per image: {splits}")


# ---------------------------------------------------------------------------------------------------- Gemma 3 / PaliGemma
def gemma_text(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return kwargs | overrides


def gemma3_case() -> FamilyCase:
    """Images 8 px (patch 2, 4 x 4 patches pooled to mm_tokens_per_image = 4, a 2 x 2 grid) through
    `Gemma3Processor` with pan-and-scan on: a 8 x 24 image gets crops, each one more block."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    pan_and_scan = dict(
        do_pan_and_scan=True,
        pan_and_scan_min_crop_size=4,
        pan_and_scan_max_num_crops=3,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": 8, "width": 8})
    pictures = [images((8, 24)), images((8, 8), (10, 9), seed=1)]
    num_crops = [list(image_processor(images=[row], **pan_and_scan)["num_crops"]) for row in pictures]

    def build():
        specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
        tokenizer = make_tokenizer(
            specials,
            {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        )
        ids = tokenizer.convert_tokens_to_ids
        processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4)
        config = Gemma3Config(
            text_config=gemma_text(len(tokenizer), sliding_window=8),
            vision_config=siglip_vision(),
            mm_tokens_per_image=4,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
        )
        torch.manual_seed(0)
        model = finish(Gemma3ForConditionalGeneration(config), "gemma3", tokenizer)
        with torch.no_grad():  # initialised to zeros: image tokens would all look alike
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
        batch = processor(
            images=pictures,
            text=["hello <start_of_image> what is this", "<start_of_image> and <start_of_image> describe"],
            return_tensors="pt",
            padding=True,
            **pan_and_scan,
        )
        return model, tensors(batch)

    blocks = [sum(1 + int(n) for n in row) for row in num_crops]
    expected = [[(f"image {i}", (2, 2)) for i in range(count)] for count in blocks]
    return FamilyCase("gemma3", build, expected, notes=f"pan-and-scan crops per image: {num_crops}")


def paligemma_case() -> FamilyCase:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    def build():
        tokenizer = make_tokenizer(["<image>"], {"image_token": "<image>"})
        image_processor = SiglipImageProcessorPil(size={"height": 8, "width": 8})
        image_processor.image_seq_length = 16
        processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
        config = PaliGemmaConfig(
            text_config=gemma_text(len(tokenizer)),
            vision_config=siglip_vision(),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            projection_dim=32,
        )
        torch.manual_seed(0)
        model = finish(PaliGemmaForConditionalGeneration(config), "paligemma", tokenizer)
        batch = processor(
            images=[images((8, 8)), images((12, 9), (9, 12), seed=1)],
            text=["what is this", "describe the left one"],
            return_tensors="pt",
            padding=True,
        )
        return model, tensors(batch)

    expected = [[("image 0", (4, 4))], [("image 0", (4, 4)), ("image 1", (4, 4))]]
    return FamilyCase("paligemma", build, expected, new_token_type=1)


# ---------------------------------------------------------------------------------------------------- Mistral 3
def mistral3_case() -> FamilyCase:
    """Pixtral tower (patch 2) with spatial merge 2: a token per 4 x 4 px. `PixtralProcessor` needs torchvision, so
    the image processor runs alone and the tokens are laid out as its `replace_image_token` does."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    sizes = [(16, 8), (8, 12), (12, 16)]

    def build():
        tokenizer = make_tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
        image_processor = PixtralImageProcessorPil(size={"longest_edge": 16}, patch_size={"height": 4, "width": 4})
        vision = PixtralVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=16,
            patch_size=2,
        )
        text = dict(
            model_type="mistral",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
        config = Mistral3Config(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
            spatial_merge_size=2,
            vision_feature_layer=-1,
        )
        torch.manual_seed(0)
        model = finish(Mistral3ForConditionalGeneration(config), "mistral3", tokenizer)
        pixel = image_processor(images=images(*sizes), return_tensors="pt")
        ids = tokenizer.convert_tokens_to_ids
        prompts = [["hello", *pixtral_tokens(tokenizer, pixel["image_sizes"][0], 4), "what"]]
        prompts.append([*pixtral_tokens(tokenizer, pixel["image_sizes"][1], 4), "and"])
        prompts[1] += pixtral_tokens(tokenizer, pixel["image_sizes"][2], 4)
        inputs = left_pad([[BOS, *ids(prompt)] for prompt in prompts])
        return model, inputs | {"pixel_values": pixel["pixel_values"], "image_sizes": pixel["image_sizes"]}

    # image_sizes after the 16 px longest-edge resize (multiples of 4): (16, 8), (8, 12), (12, 16)
    return FamilyCase("mistral3", build, [[("image 0", (4, 2))], [("image 0", (2, 3)), ("image 1", (3, 4))]])


# ---------------------------------------------------------------------------------------------------- InternVL / Aya
def _got_ocr2_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 8, "width": 8}, crop_to_patches=True, min_patches=1, max_patches=4)


def _num_tiles(image_processor, pictures) -> list[list[int]]:
    """Tiles per image (thumbnail included) as the image processor reports them (`num_patches`)."""
    counts = image_processor(images=[image for row in pictures for image in row], crop_to_patches=True)["num_patches"]
    counts, out = list(counts), []
    for row in pictures:
        out.append([int(counts.pop(0)) for _ in row])
    return out


def internvl_case() -> FamilyCase:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor

    image_processor = _got_ocr2_processor()
    pictures = [images((8, 20)), images((8, 8), (16, 8), seed=1)]
    tiles = _num_tiles(image_processor, pictures)

    def build():
        specials = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
        attributes = {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        }
        tokenizer = make_tokenizer(specials, attributes)
        processor = image_only(InternVLProcessor)(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4
        )
        vision = dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=[8, 8],
            patch_size=[2, 2],
        )
        text = dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
        config = InternVLConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
            downsample_ratio=0.5,
        )
        torch.manual_seed(0)
        model = finish(InternVLForConditionalGeneration(config), "internvl", tokenizer)
        batch = processor(
            images=pictures,
            text=["hello <IMG_CONTEXT> what is this", "<IMG_CONTEXT> and <IMG_CONTEXT> describe"],
            return_tensors="pt",
            padding=True,
        )
        return model, tensors(batch)

    def image_grids(local: int, count: int) -> list[tuple[str, tuple[int, ...]]]:
        if count == 1:
            return [(f"image {local}", (2, 2))]
        return [(f"image {local} tile {t}", (2, 2)) for t in range(count - 1)] + [(f"image {local} thumbnail", (2, 2))]

    expected = [[g for i, n in enumerate(row) for g in image_grids(i, n)] for row in tiles]
    return FamilyCase("internvl", build, expected, notes=f"tiles per image (thumbnail included): {tiles}")


def aya_vision_case() -> FamilyCase:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor

    image_processor = _got_ocr2_processor()
    pictures = [images((8, 20)), images((8, 8), (16, 8), seed=1)]
    tiles = _num_tiles(image_processor, pictures)

    def build():
        specials = [
            "<image>",
            "<|START_OF_IMG|>",
            "<|END_OF_IMG|>",
            "<|IMG_PATCH|>",
            "<|IMG_LINE_BREAK|>",
            "TILE",
            "TILE_GLOBAL",
        ]
        tokenizer = make_tokenizer(specials)
        processor = AyaVisionProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=2, img_size=8, downsample_factor=2
        )
        text = dict(
            model_type="cohere2",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            sliding_window=8,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
        config = AyaVisionConfig(
            vision_config=siglip_vision(),
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
            downsample_factor=2,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        torch.manual_seed(0)
        model = finish(AyaVisionForConditionalGeneration(config), "aya_vision", tokenizer)
        batch = processor(
            images=pictures,
            text=["hello <image> what is this", "<image> and <image> describe"],
            return_tensors="pt",
            padding=True,
        )
        return model, tensors(batch)

    def image_grids(local: int, count: int) -> list[tuple[str, tuple[int, ...]]]:
        if count == 1:
            return [(f"image {local}", (2, 2))]
        return [(f"image {local} tile {t}", (2, 2)) for t in range(count - 1)] + [(f"image {local} global", (2, 2))]

    expected = [[g for i, n in enumerate(row) for g in image_grids(i, n)] for row in tiles]
    return FamilyCase("aya_vision", build, expected, notes=f"tiles per image (global included): {tiles}")


# ---------------------------------------------------------------------------------------------------- Llama 4
def llama4_case() -> FamilyCase:
    """Chunks of 8 px (patch 2, pixel shuffle 0.5: 4 tokens on a 2 x 2 grid). `Llama4ImageProcessor` needs
    torchvision, so pixel values are random chunks and the text comes from `Llama4Processor._prompt_split_image`."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4Processor

    aspect_ratios = [[(1, 2)], [(1, 1), (2, 1), (2, 2)]]
    specials = ["<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>"]
    specials.append("<|tile_y_separator|>")

    def build():
        tokenizer = make_tokenizer(specials)
        ids = tokenizer.convert_tokens_to_ids
        vision = dict(
            hidden_size=32,
            intermediate_size=128,  # = hidden / pixel_shuffle_ratio**2: the projector MLP's input width
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=8,
            patch_size=2,
            pixel_shuffle_ratio=0.5,
            projector_input_dim=32,
            projector_output_dim=32,
            vision_output_dim=32,
        )
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            intermediate_size_mlp=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=2,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            attention_chunk_size=64,
            max_position_embeddings=1024,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
        )
        config = Llama4Config(
            vision_config=vision,
            text_config=text,
            image_token_index=ids("<|patch|>"),
            boi_token_index=ids("<|image_start|>"),
            eoi_token_index=ids("<|image_end|>"),
        )
        torch.manual_seed(0)
        model = finish(Llama4ForConditionalGeneration(config), "llama4", tokenizer)
        rows = []
        for row, ratios in enumerate(aspect_ratios):
            text = "hello " if row == 0 else ""
            for ratio in ratios:
                text += Llama4Processor._prompt_split_image(None, ratio, 4) + " and "
            rows.append([BOS, *tokenizer(text, add_special_tokens=False)["input_ids"]])
        chunks = sum(h * w + (1 if h * w > 1 else 0) for ratios in aspect_ratios for h, w in ratios)
        return model, left_pad(rows) | {"pixel_values": torch.randn(chunks, 3, 8, 8)}

    def image_grids(local: int, height: int, width: int) -> list[tuple[str, tuple[int, ...]]]:
        if height * width == 1:
            return [(f"image {local}", (2, 2))]
        return [(f"image {local} tiles", (2 * height, 2 * width)), (f"image {local} global", (2, 2))]

    expected = [[g for i, ratio in enumerate(row) for g in image_grids(i, *ratio)] for row in aspect_ratios]
    return FamilyCase("llama4", build, expected)


# ---------------------------------------------------------------------------------------------------- Mllama (cross-attention)
def mllama_case() -> FamilyCase:
    """Llama 3.2 Vision: 2 text layers (self-attention, then cross-attention), tiles of 8 px with 2 px patches (a
    class token and 4 x 4 patches a tile), up to 4 tiles an image, through `MllamaProcessor` with the PIL image
    processor. Row 0: a 16 x 8 image (2 x 1 tiles) after padding; row 1: an 8 x 8 (1 x 1) and an 8 x 16 (1 x 2)
    image. Images of whole tiles, so the tile arrangement is (height / 8, width / 8) and each image a
    (4 * tile rows, 4 * tile cols) grid, from the image sizes alone.

    Transformers initialises the cross-attention gates to 0 (the image would not reach the text); they are set to 1
    here, as a trained checkpoint's are non-zero.
    """
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    sizes = [[(16, 8)], [(8, 8), (8, 16)]]
    text = ["<|image|> what is this picture", "hello <|image|> the left one and <|image|> describe"]

    def build():
        tokenizer = make_tokenizer(["<|image|>"])
        processor = MllamaProcessor(
            MllamaImageProcessorPil(size={"height": 8, "width": 8}, max_image_tiles=4), tokenizer
        )
        pictures = [images(*row, seed=i) for i, row in enumerate(sizes)]
        inputs = tensors(processor(images=pictures, text=text, return_tensors="pt", padding=True))
        config = MllamaConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                cross_attention_layers=[1],
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=1024,
                pad_token_id=PAD,
                bos_token_id=BOS,
                eos_token_id=EOS,
            ),
            vision_config=dict(
                image_size=8,
                patch_size=2,
                hidden_size=16,
                intermediate_size=37,
                num_hidden_layers=2,
                num_global_layers=1,
                num_attention_heads=4,
                intermediate_layers_indices=[0],
                vision_output_dim=32,
                max_num_tiles=4,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
        )
        torch.manual_seed(0)
        model = MllamaForConditionalGeneration(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                    param.fill_(1.0)
        return finish(model, "mllama", tokenizer), inputs

    def image_states(model: torch.nn.Module):
        language_model = model.model.language_model

        def read(args: tuple, kwargs: dict) -> torch.Tensor:
            states = kwargs["cross_attention_states"]  # (batch * images * tiles, 1 + 16 patches, hidden)
            return states.reshape(kwargs["input_ids"].shape[0], -1, states.shape[-1])

        return language_model, read

    expected = [[(f"image {i}", (4 * (h // 8), 4 * (w // 8))) for i, (h, w) in enumerate(row)] for row in sizes]
    return FamilyCase(
        "mllama",
        build,
        expected,
        repeat_inputs=("cross_attention_mask",),
        image_states=image_states,
        notes="cross-attention: image tokens are the cross-attention states",
    )


# ---------------------------------------------------------------------------------------------------- IDEFICS (cross-attention)
def idefics_case(resampler: bool = True) -> FamilyCase:
    """IDEFICS 1: 2 decoder layers with a gated cross-attention block before each (interval 1), a vision tower on
    8 px images with 2 px patches, through `IdeficsProcessor` with the PIL image processor (which resizes every image
    to 8 x 8). Row 0: one image after padding; row 1: two images. With the perceiver (3 latents an image) each image
    is one 1-D grid of its latents; without it (`idefics-patches`) one 4 x 4 grid of its patches.

    Transformers initialises the cross-attention gates (``alpha_cross_attn``, ``alpha_dense``) to 0; they are set to
    1 here, as a trained checkpoint's are non-zero.
    """
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsProcessor
    from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

    sizes = [[(16, 8)], [(8, 8), (8, 16)]]
    latents = 3

    def build():
        tokenizer = make_tokenizer(["<image>", "<fake_token_around_image>"])
        processor = IdeficsProcessor(IdeficsImageProcessorPil(image_size=8), tokenizer, image_size=8)
        pictures = [images(*row, seed=i) for i, row in enumerate(sizes)]
        prompts = [
            ["hello", pictures[0][0], "what is this picture"],
            [pictures[1][0], "the left one and", pictures[1][1], "describe"],
        ]
        inputs = tensors(processor(text=prompts, return_tensors="pt", padding=True))
        config = IdeficsConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            cross_layer_interval=1,
            use_resampler=resampler,
            max_position_embeddings=1024,
            pad_token_id=PAD,
            bos_token_id=BOS,
            eos_token_id=EOS,
            vision_config=dict(
                embed_dim=24,
                image_size=8,
                patch_size=2,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
            ),
            perceiver_config=dict(
                use_resampler=resampler,
                resampler_n_latents=latents,
                resampler_depth=1,
                resampler_n_heads=2,
                resampler_head_dim=8,
            ),
        )
        torch.manual_seed(0)
        model = IdeficsForVisionText2Text(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("alpha_cross_attn", "alpha_dense")):
                    param.fill_(1.0)
        return finish(model, "idefics", tokenizer), inputs

    def image_states(model: torch.nn.Module):
        block = model.model.gated_cross_attn_layers[0]

        def read(args: tuple, kwargs: dict) -> torch.Tensor:
            # the block is called as (hidden, mask, image_hidden_states, ...); vision width, through its key projection
            return block.cross_attn.k_proj(args[2] if len(args) > 2 else kwargs["image_hidden_states"])

        return block, read

    grid = (latents,) if resampler else (4, 4)
    expected = [[(f"image {i}", grid) for i in range(len(row))] for row in sizes]
    return FamilyCase(
        "idefics" if resampler else "idefics-patches",
        build,
        expected,
        repeat_inputs=("image_attention_mask",),
        image_states=image_states,
        notes="cross-attention to perceiver latents" if resampler else "cross-attention to vision patches",
    )
