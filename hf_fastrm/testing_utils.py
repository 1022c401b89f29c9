"""Tiny models built from configs (nothing downloaded), for tests, examples and benchmarks.

Shaped like transformers' own `LlavaModelTester`: hidden 32, 2 layers, image 8 px with 2 px patches.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import FastRMConfig
from .head import FastRMHead

TINY_VOCAB = 99
TINY_IMAGE_TOKEN_ID = 98
TINY_PAD_TOKEN_ID = 0
TINY_BOS_TOKEN_ID = 1
TINY_EOS_TOKEN_ID = 2


def tiny_llava_config(
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    image_size: int = 8,
    patch_size: int = 2,
    vision_feature_select_strategy: str = "default",
    name_or_path: str = "hf-fastrm/tiny-llava",
    **text_overrides: Any,
):
    """A `LlavaConfig` with a CLIP tower and a Llama decoder, `hidden_size` wide and `num_layers` deep."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text_kwargs = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 5,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=TINY_PAD_TOKEN_ID,
        bos_token_id=TINY_BOS_TOKEN_ID,
        eos_token_id=TINY_EOS_TOKEN_ID,
    )
    text_kwargs.update(text_overrides)
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**text_kwargs),
        image_token_index=TINY_IMAGE_TOKEN_ID,
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=-1,
    )
    config._name_or_path = name_or_path
    return config


def tiny_llava(
    seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa", **config_kwargs: Any
):
    """A randomly initialised tiny `LlavaForConditionalGeneration` in eval mode."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_llava_config(**config_kwargs)
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = TINY_PAD_TOKEN_ID
    model.generation_config.eos_token_id = TINY_EOS_TOKEN_ID
    model.generation_config.bos_token_id = TINY_BOS_TOKEN_ID
    return model


def tiny_head_config(model, head_dim: int = 16, **kwargs: Any) -> FastRMConfig:
    """A `FastRMConfig` matching `model` (its text hidden size, name and model type); `kwargs` go to the config."""
    config = model.config
    return FastRMConfig(
        hidden_size=config.get_text_config().hidden_size,
        head_dim=head_dim,
        base_model_name_or_path=config._name_or_path,
        model_type=config.model_type,
        **kwargs,
    )


def tiny_head(model, seed: int = 0, head_dim: int = 16) -> FastRMHead:
    """A randomly initialised head matching `model` (weights scaled up so maps are far from uniform)."""
    torch.manual_seed(seed)
    head = FastRMHead(tiny_head_config(model, head_dim))
    with torch.no_grad():
        head.query.weight.mul_(4.0)
        head.key.weight.mul_(4.0)
    return head.eval()


def tiny_llava_inputs(
    model,
    *,
    batch_size: int = 1,
    num_images: int | list[int] = 1,
    text_lengths: list[int] | None = None,
    seed: int = 0,
    left_pad: bool = True,
) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` and `pixel_values` with each row's images placed among random text tokens.

    Args:
        num_images: images per row (an int for all rows, or one per row).
        text_lengths: text tokens per row (defaults to 5, 7, 9, ...); shorter rows are padded on the left.
    """
    from .architectures import get_adapter

    generator = torch.Generator().manual_seed(seed)
    adapter = get_adapter(model)
    per_image = adapter.tokens_per_image(model.config)[0]
    counts = [num_images] * batch_size if isinstance(num_images, int) else list(num_images)
    text_lengths = text_lengths or [5 + 2 * row for row in range(batch_size)]
    rows = []
    for row in range(batch_size):
        text = torch.randint(3, TINY_IMAGE_TOKEN_ID, (text_lengths[row],), generator=generator).tolist()
        ids = [TINY_BOS_TOKEN_ID]
        for image in range(counts[row]):
            ids += text[image : image + 1] + [TINY_IMAGE_TOKEN_ID] * per_image
        ids += text[counts[row] :]
        rows.append(ids)
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((batch_size, length), TINY_PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    for row, ids in enumerate(rows):
        span = slice(length - len(ids), length) if left_pad else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        attention_mask[row, span] = 1
    vision = model.config.vision_config
    pixel_values = torch.randn(
        sum(counts), 3, vision.image_size, vision.image_size, generator=generator, dtype=torch.float32
    ).to(model.dtype)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


# ---------------------------------------------------------------------------------------------- benchmark shapes
BENCHMARK_PRESETS: dict[str, dict[str, Any]] = {
    # 576 image tokens (336 px, 14 px patches) on a mid-size language model: CPU benchmarks.
    "cpu-mid": {
        "vision": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
        "text": dict(
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=32064,
        ),
        "dtype": torch.float32,
    },
    # LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B (random weights: cost does not depend on the values).
    "llava-7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        "text": dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
        ),
        "dtype": torch.bfloat16,
    },
}


BENCHMARK_TINY_WIDTHS: dict[str, dict[str, Any]] = {
    # A preset's code path (dtype, construction on the device, 576 image tokens) at a size a CPU runs in seconds.
    "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    "text": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=32064,
    ),
}


def benchmark_llava(
    preset: str, device: str = "cpu", *, num_layers: int | None = None, tiny: bool = False, seed: int = 0
):
    """A random `LlavaForConditionalGeneration` of a benchmark shape (``"cpu-mid"`` or ``"llava-7b"``), built
    directly on `device` in the preset's dtype (fast initialisation), with 576 image tokens per image.

    `num_layers` overrides the language model's depth and `tiny` swaps in `BENCHMARK_TINY_WIDTHS` (keeping the
    preset's dtype and image size), to try the code path of a big preset on a small machine.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    spec = BENCHMARK_PRESETS[preset]
    if tiny:
        spec = dict(BENCHMARK_TINY_WIDTHS, dtype=spec["dtype"])
    text = dict(spec["text"], max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if num_layers is not None:
        text["num_hidden_layers"] = num_layers
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=768, **spec["vision"]),
        text_config=LlamaConfig(**text),
        image_token_index=32000,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    config._name_or_path = f"hf-fastrm/random-{preset}"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(spec["dtype"])
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def benchmark_inputs(model, *, text_tokens: int = 41, batch_size: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """One 336 px image (576 image tokens) and `text_tokens` text tokens per row, on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    text = torch.randint(3, 31999, (batch_size, text_tokens), generator=generator)
    image = torch.full((batch_size, side * side), config.image_token_id)
    input_ids = torch.cat([text[:, :1].fill_(1), image, text[:, 1:]], dim=1)
    pixel_values = torch.randn(
        batch_size, 3, config.vision_config.image_size, config.vision_config.image_size, generator=generator
    )
    device = next(model.parameters()).device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixel_values.to(device=device, dtype=model.dtype),
    }


def random_head(model, head_dim: int = 256, seed: int = 0, head_type: str = "fastrm") -> FastRMHead:
    """A random head of the paper's shape (k=256) for `model`, on the model's device (float32); `head_type`
    ``"question_aware"`` gives the question-aware kind (`FastRMConfig`)."""
    torch.manual_seed(seed)
    config = model.config
    head = FastRMHead(
        FastRMConfig(
            hidden_size=config.get_text_config().hidden_size,
            head_dim=head_dim,
            base_model_name_or_path=config._name_or_path,
            model_type=config.model_type,
            head_type=head_type,
        )
    )
    return head.to(next(model.parameters()).device).eval()


TINY_WORDS: tuple[str, ...] = (
    "what", "colour", "shape", "is", "the", "a", "of", "in", "on", "which", "side", "corner", "object", "circle",
    "square", "triangle", "cross", "red", "green", "blue", "yellow", "purple", "left", "right", "top", "bottom",
    "none", "image", "describe", "?", ".", ",",
)  # fmt: skip
"""Words of the tiny tokenizer (ids 3, 4, ...); the remaining ids up to the image token are ``w<id>``."""


def tiny_llava_processor(
    image_size: int = 8,
    patch_size: int = 2,
    chat_template: str | None = None,
    *,
    vocab_size: int = TINY_VOCAB,
    image_token_id: int = TINY_IMAGE_TOKEN_ID,
    words: tuple[str, ...] = TINY_WORDS,
):
    """A `LlavaProcessor` for [`tiny_llava`] (or any random LLaVA): a word-level tokenizer over `vocab_size` ids
    (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, then `words`, then filler words ``w<id>``, and ``<image>`` at
    `image_token_id`) and a CLIP image processor (PIL backend) that resizes and centre-crops to `image_size`. Built
    offline; `save_pretrained` / `AutoProcessor` round-trip it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    try:
        from transformers import CLIPImageProcessorPil as image_processor_class
    except ImportError:  # transformers releases without separate image-processor backends
        from transformers import CLIPImageProcessor as image_processor_class

    vocab = {word: index for index, word in enumerate(["<pad>", "<s>", "</s>", *words])}
    vocab.update({f"w{index}": index for index in range(len(vocab), vocab_size) if index != image_token_id})
    vocab["<image>"] = image_token_id
    unknown = f"w{image_token_id - 1}"
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token=unknown,
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    image_processor = image_processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
