"""The toy model's pieces, built from parameters (nothing downloaded): word-level tokenizer, CLIP image processor,
`LlavaProcessor`, `LlavaConfig`, and the prompt format.

Prompt format: the processor turns ``"<image> what colour is the circle ?"`` into ``<s>``, 36 ``<image>`` tokens
(48 px image, 8 px patches) and the question's words; the model answers with the answer's words, then ``</s>``::

    <s> <image> x 36 what colour is the circle ?  ->  red </s>

Training (`hf_fastrm.toy.train`) builds token ids the same way (`encode_example`), and a test checks the two agree.
"""

from __future__ import annotations

from typing import Any

from .scenes import DEFAULT_IMAGE_SIZE, vocabulary

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN)
"""Special tokens, ids 0-4 in this order; the question and answer words follow, sorted."""

DEFAULT_PATCH_SIZE = 8

PROMPT_TEMPLATE = IMAGE_TOKEN + " {question}"
"""Text passed to the processor with one image; the answer follows the prompt's last token directly."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + " ' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if not loop.last -%}{{ ' ' }}{%- endif -%}"
    "{%- endfor -%}"
)
"""A user turn ``[image, text]`` renders as `PROMPT_TEMPLATE` does, so generic `apply_chat_template` code works."""

# OpenAI CLIP's normalisation, the CLIP image processor's default.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def format_prompt(question: str) -> str:
    """The processor text for one image and `question` (see `PROMPT_TEMPLATE`)."""
    return PROMPT_TEMPLATE.format(question=question)


def build_tokenizer():
    """A word-level `PreTrainedTokenizerFast`: the special tokens, then every word of `scenes.vocabulary()`.

    Lower-cases and splits on white space and punctuation; adds ``<s>`` in front; pads on the left (for batched
    generation). ``tokenizer.image_token`` is ``"<image>"``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *vocabulary()))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bos_id = vocab[BOS_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != SPECIAL_TOKENS.index(IMAGE_TOKEN):
        raise RuntimeError("The toy tokenizer did not keep its special token ids; check the tokenizers version.")
    return tokenizer


def build_image_processor(image_size: int = DEFAULT_IMAGE_SIZE):
    """A CLIP image processor (PIL backend: same pixels with or without torchvision) for `image_size` px inputs.

    Any image is resized (shortest edge) and centre-cropped to `image_size`, scaled to [0, 1] and normalised with
    CLIP's mean and standard deviation; a scene already `image_size` px square passes through unresized.
    """
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers releases without separate backends
        from transformers import CLIPImageProcessor as processor_class

    return processor_class(
        do_resize=True,
        size={"shortest_edge": image_size},
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def build_processor(image_size: int = DEFAULT_IMAGE_SIZE, patch_size: int = DEFAULT_PATCH_SIZE):
    """The `LlavaProcessor`: expands each ``<image>`` to ``(image_size / patch_size)^2`` tokens (the CLIP tower's
    CLS feature is dropped, ``vision_feature_select_strategy="default"``)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=build_image_processor(image_size),
        tokenizer=build_tokenizer(),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
    vision_width: int = 96,
    vision_layers: int = 3,
    text_width: int = 128,
    text_layers: int = 3,
    num_heads: int = 4,
    name_or_path: str = "hf_fastrm/toy-llava",
) -> Any:
    """The `LlavaConfig` of the toy model: a small CLIP tower and a small Llama decoder over the toy vocabulary."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab_size = len(SPECIAL_TOKENS) + len(vocabulary())
    vision = CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=2 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        projection_dim=vision_width,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=128,
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=SPECIAL_TOKENS.index(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    config._name_or_path = name_or_path
    return config


def image_tokens_per_image(config: Any) -> int:
    """Image tokens one image takes in the prompt (patches; CLS dropped)."""
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2
