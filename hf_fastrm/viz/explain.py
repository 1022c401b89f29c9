"""`explain()`: ask a vision-language model a question about images and write what each answer token looked at."""

from __future__ import annotations

import json
import os
import re
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


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The words of `text` that `tokenizer` does not know: those it turns into its unknown token (``<unk>``).

    A model reads nothing from an unknown token (the shipped toy model knows only the words of its scenes'
    questions), so an answer to a prompt holding some is no answer to the question asked. Words are returned once
    each, in the order they appear; `[]` when the tokenizer has no unknown token (byte-level tokenizers know every
    text).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor: its tokenizer
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is None or not text.strip():
        return []
    found: list[str] = []
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
            if token_id == unk_id and text[start:end] not in found:
                found.append(text[start:end])
        return found
    for word in text.split():  # slow tokenizers give no offsets: word by word
        if unk_id in tokenizer(word, add_special_tokens=False)["input_ids"] and word not in found:
            found.append(word)
    return found


_OVERLAY_FILE = re.compile(r"^(teacher_)?token_\d+_.*\.png$")
"""Names of the overlays `save_token_overlays` writes: the only files a new report may remove from its folder."""


def _files_of_previous_report(output_dir: str | os.PathLike, json_name: str) -> list[str]:
    """The overlay files that the report already in `output_dir` (if any) lists: written by this tool, so a new
    report may remove those it does not replace. Anything else in the folder is never touched."""
    from .report import JSON_FORMAT

    path = os.path.join(output_dir, json_name)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT or not isinstance(data.get("files"), dict):
        return []
    folder = os.path.realpath(output_dir)
    listed = []
    for key in ("overlays", "teacher_overlays"):
        rows = data["files"].get(key) or []
        for name in (name for row in rows if isinstance(row, list) for name in row):
            if not isinstance(name, str) or not _OVERLAY_FILE.match(os.path.basename(name)):
                continue
            file_path = os.path.realpath(os.path.join(folder, name))
            if os.path.dirname(file_path) == folder:  # never outside the report's own folder
                listed.append(file_path)
    return listed


def save_replacing_previous(report: ExplanationReport, output_dir: str | os.PathLike, **save_kwargs: Any) -> Any:
    """`report.save(output_dir)`, then removes the overlays of the report that was there before and that the new one
    did not overwrite (a longer earlier answer's ``token_07_*.png``, another token's name), so that the folder holds
    what its ``report.json`` lists. Only files listed by the earlier ``report.json`` and named as overlays are
    removed; other files in the folder are left alone.

    Returns:
        [`ReportPaths`].
    """
    from .report import JSON_NAME

    previous = _files_of_previous_report(output_dir, save_kwargs.get("json_name", JSON_NAME))
    paths = report.save(output_dir, **save_kwargs)
    kept = {os.path.realpath(path) for row in (*paths.overlays, *paths.teacher_overlays) for path in row}
    for path in previous:
        if path not in kept:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            else:
                logger.info("Removed %s (an overlay of the previous report in this folder).", path)
    return paths


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
    method: str | None = None,
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
        output_dir (`str`, *optional*): where to write the files; nothing is written without it. The overlays of
            an earlier report in that folder that this one does not overwrite are removed (only those its
            ``report.json`` lists), so the folder and the new report agree.
        max_new_tokens (`int`, *optional*, defaults to 32): answer length limit.
        teacher (`bool`, *optional*, defaults to `False`): also compute the teacher's gradient maps for the same
            tokens and show them beside the main maps.
        method (`str`, *optional*): the relevancy method of the main maps, any name registered in
            `hf_fastrm.methods` (``"fastrm"`` with a head, ``"gradient"`` without one by default).
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

    unknown = unknown_words(processor, prompt)
    if unknown:
        logger.warning(
            "The model's tokenizer does not know %s: %s become its unknown token, which says nothing to the model.",
            ", ".join(repr(word) for word in unknown),
            "it" if len(unknown) == 1 else "they",
        )
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
    if method is None:
        method = "fastrm" if head is not None else "gradient"
    logger.info("Generating up to %d tokens with %s maps.", max_new_tokens, method)
    outputs = wrapper.generate(**inputs, max_new_tokens=max_new_tokens, return_relevancy=method, **generate_kwargs)
    teacher_result = None
    if teacher and method != "gradient":
        from ..teacher import gradient_relevancy_for_outputs

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
    report.method = method
    if output_dir is not None:
        save_replacing_previous(report, output_dir, style=style)
    return report
