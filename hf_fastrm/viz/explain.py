"""`explain()`: ask a vision-language model a question about images and write what each answer token looked at."""

from __future__ import annotations

import os
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers.utils import logging

from ..architectures.llava import LlavaAdapter
from ..head import FastRMHead
from ..wrapper import FastRMWrapper
from .report import ExplanationReport, OverlayStyle

logger = logging.get_logger(__name__)


def build_prompt(processor: Any, prompt: str, num_images: int, *, chat_template: bool | None = None) -> str:
    """The text to give `processor` for `prompt` about `num_images` images.

    A prompt that already holds the processor's image token is used as it is. Otherwise, with a chat template (the
    processor's, when ``chat_template`` is `None` and it has one), one user turn with the images then the text;
    without one, the image tokens, a newline and the text.
    """
    image_token = getattr(processor, "image_token", None)
    if image_token and image_token in prompt:
        return prompt
    use_template = bool(getattr(processor, "chat_template", None)) if chat_template is None else chat_template
    if use_template:
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if not image_token:
        raise ValueError(
            f"{type(processor).__name__} has neither a chat template nor an `image_token`: put the model's image "
            "placeholder into the prompt yourself."
        )
    return image_token * num_images + "\n" + prompt


def _size_entry(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def model_view(image: Image.Image, image_processor: Any) -> Image.Image:
    """The region of `image` that the model sees, so a map covering the model's patch grid lines up with it.

    CLIP-style processors (LLaVA 1.5) resize the shorter side and crop the centre; LLaVA's own processor may first
    pad to a square. Any-resolution processors (LLaVA-NeXT tiles: ``image_grid_pinpoints``) and dynamic-resolution
    ones (Qwen2-VL, ...) keep the whole image.
    """
    image = image.convert("RGB")
    if image_processor is None or getattr(image_processor, "image_grid_pinpoints", None):
        return image
    if LlavaAdapter.pads_to_square(image_processor):
        side = max(image.size)
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        background = tuple(round(255 * float(channel)) for channel in mean)
        padded = Image.new("RGB", (side, side), background)
        padded.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
        image = padded
    if not getattr(image_processor, "do_center_crop", False):
        return image
    crop = getattr(image_processor, "crop_size", None)
    crop_height, crop_width = _size_entry(crop, "height"), _size_entry(crop, "width")
    if not crop_height or not crop_width:
        return image
    width, height = image.size
    scale_x = scale_y = 1.0
    if getattr(image_processor, "do_resize", True):
        size = getattr(image_processor, "size", None)
        shortest = _size_entry(size, "shortest_edge")
        fixed_height, fixed_width = _size_entry(size, "height"), _size_entry(size, "width")
        if shortest:
            scale_x = scale_y = shortest / min(width, height)
        elif fixed_height and fixed_width:
            scale_x, scale_y = fixed_width / width, fixed_height / height
    view_width, view_height = min(width, crop_width / scale_x), min(height, crop_height / scale_y)
    left, top = (width - view_width) / 2, (height - view_height) / 2
    return image.crop((round(left), round(top), round(left + view_width), round(top + view_height)))


def _head_summary(head: FastRMHead | None, head_id: str | None) -> dict[str, Any] | None:
    if head is None:
        return None
    config = head.config
    return {
        "id": head_id,
        "base_model": config.base_model_name_or_path,
        "hidden_size": config.hidden_size,
        "head_dim": config.head_dim,
    }


def explain(
    model: nn.Module | FastRMWrapper,
    processor: Any,
    images: Image.Image | list[Image.Image],
    prompt: str,
    *,
    head: FastRMHead | None = None,
    output_dir: str | os.PathLike | None = None,
    max_new_tokens: int = 32,
    teacher: bool = False,
    chat_template: bool | None = None,
    model_id: str | None = None,
    head_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    style: OverlayStyle | None = None,
    check_base_model: bool = True,
    **generate_kwargs: Any,
) -> ExplanationReport:
    """Answers `prompt` about `images` and explains every answer token.

    Runs `FastRMWrapper.generate(..., return_relevancy=True)` (greedy unless `generate_kwargs` say otherwise),
    decodes the answer token by token, and, with `output_dir`, writes a PNG overlay per token, `report.html` and
    `report.json` there. Works for every registered model family: the maps come from `out.relevancy_maps()`.

    Args:
        model (`PreTrainedModel` or [`FastRMWrapper`]): the vision-language model (a wrapper brings its head).
        processor: its `AutoProcessor` (tokenizer and image processor).
        images (`PIL.Image.Image` or a list of them): the images the prompt is about.
        prompt (`str`): the question; the processor's chat template (if any) and image tokens are added.
        head ([`FastRMHead`], *optional*): the head; without one (and without a wrapper's), the maps are the
            teacher's gradient maps.
        output_dir (`str`, *optional*): where to write the files; nothing is written without it.
        max_new_tokens (`int`, *optional*, defaults to 32): answer length limit.
        teacher (`bool`, *optional*, defaults to `False`): also compute the teacher's gradient maps for the same
            tokens and show them beside the head's.
        chat_template (`bool`, *optional*): force (`True`) or skip (`False`) the chat template; by default it is used
            when the processor has one.
        model_id, head_id (`str`, *optional*): names written into the reports (default: the model's
            `name_or_path`).
        metadata (`dict`, *optional*): kept in the JSON (e.g. the true answer of a synthetic scene).
        style ([`OverlayStyle`], *optional*): how the maps are drawn.
        generate_kwargs: passed to `generate()`.

    Returns:
        [`ExplanationReport`]: the answer, tokens, maps and confidence, with `outputs` (the `generate()` output) and
        `paths` (when written).

    Example:

    ```python
    >>> from hf_fastrm.viz import explain
    >>> report = explain(model, processor, image, "What colour is the circle?", head=head, output_dir="out")
    >>> report.answer, report.confidence, report.paths.html
    ```
    """
    if isinstance(model, FastRMWrapper):
        wrapper = model
        if head is not None and head is not wrapper.head:
            wrapper = FastRMWrapper(wrapper.model, head, check_base_model=check_base_model)
    else:
        wrapper = FastRMWrapper(model, head, check_base_model=check_base_model)
    base_model = wrapper.model
    head = wrapper.head
    image_list = [images] if isinstance(images, Image.Image) else list(images)
    if not image_list:
        raise ValueError("`explain` needs at least one image.")
    image_list = [image.convert("RGB") for image in image_list]

    text = build_prompt(processor, prompt, len(image_list), chat_template=chat_template)
    inputs = processor(images=image_list, text=text, return_tensors="pt")
    device = next(base_model.parameters()).device
    dtype = getattr(base_model, "dtype", None)
    inputs = {
        key: (
            value.to(device=device, dtype=dtype)
            if torch.is_floating_point(value) and dtype is not None
            else value.to(device)
        )
        if isinstance(value, torch.Tensor)
        else value
        for key, value in inputs.items()
    }
    generate_kwargs.setdefault("do_sample", False)
    method = True if head is not None else "gradient"
    logger.info("Generating up to %d tokens with %s maps.", max_new_tokens, "FastRM" if head else "gradient")
    outputs = wrapper.generate(**inputs, max_new_tokens=max_new_tokens, return_relevancy=method, **generate_kwargs)
    teacher_result = None
    if teacher and head is not None:
        try:
            from ..teacher import gradient_relevancy_for_outputs
        except ImportError as error:  # pragma: no cover - the teacher ships with the package
            raise ImportError(f"The teacher (hf_fastrm.teacher) is not available: {error}") from error
        logger.info("Computing the teacher's gradient maps for the same tokens.")
        teacher_result = gradient_relevancy_for_outputs(base_model, outputs, inputs)

    image_processor = getattr(processor, "image_processor", None)
    report = ExplanationReport.from_outputs(
        outputs,
        getattr(processor, "tokenizer", processor),
        prompt=prompt,
        prompt_length=int(inputs["input_ids"].shape[1]),
        images=[model_view(image, image_processor) for image in image_list],
        teacher=teacher_result,
        model_id=model_id or getattr(base_model.config, "_name_or_path", None) or type(base_model).__name__,
        head=_head_summary(head, head_id),
        metadata={"max_new_tokens": max_new_tokens, **(metadata or {})},
    )
    report.method = "fastrm" if head is not None else "gradient"
    if output_dir is not None:
        report.save(output_dir, style=style)
    return report
