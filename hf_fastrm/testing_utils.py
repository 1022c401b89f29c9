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


def tiny_head(model, seed: int = 0, head_dim: int = 16) -> FastRMHead:
    """A randomly initialised head matching `model` (weights scaled up so maps are far from uniform)."""
    torch.manual_seed(seed)
    config = model.config
    head = FastRMHead(
        FastRMConfig(
            hidden_size=config.get_text_config().hidden_size,
            head_dim=head_dim,
            base_model_name_or_path=config._name_or_path,
            model_type=config.model_type,
        )
    )
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
