"""The embedded default: a tiny LLaVA trained on synthetic scenes whose true layout is known, shipped in the package.

- `hf_fastrm.toy.scenes`: the seeded scene generator and its questions (`draw_scene`, `ask_question`,
  `make_examples`).
- `hf_fastrm.toy.modeling`: the tokenizer, processor and config of the model, and the prompt format.
- `hf_fastrm.toy.train`: the reproducible training script (``python -m hf_fastrm.toy.train``).

Example:

```python
>>> from hf_fastrm.toy import load_default_model, load_default_processor
>>> from hf_fastrm.toy.modeling import format_prompt
>>> from hf_fastrm.toy.scenes import make_examples
>>> model, processor = load_default_model(), load_default_processor()
>>> scene, question = make_examples(1, seed="docs")[0]
>>> inputs = processor(images=scene.image, text=format_prompt(question.text), return_tensors="pt")
>>> out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
```
"""

from __future__ import annotations

import os
from typing import Any

import torch

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL_DIR = os.path.join(ASSETS_DIR, "model")
"""The shipped toy model: weights (safetensors), config, generation config, tokenizer, processor, model card."""

DEFAULT_HEAD_DIR = os.path.join(ASSETS_DIR, "head")
"""The FastRM head distilled for the shipped model."""

QUESTION_AWARE_HEAD_DIR = os.path.join(ASSETS_DIR, "head-question-aware")
"""A question-aware head for the shipped model (outside the paper's design; not the default, see
docs/faithfulness.md). Load it with ``FastRMHead.from_pretrained(QUESTION_AWARE_HEAD_DIR)``."""

_MODEL_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json")


def default_model_available() -> bool:
    """Whether the shipped toy model's files are present (they are in every released package)."""
    return all(os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, name)) for name in _MODEL_FILES)


def _require_default_model() -> None:
    missing = [name for name in _MODEL_FILES if not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, name))]
    if missing:
        raise FileNotFoundError(
            f"The default toy model is missing from {DEFAULT_MODEL_DIR} (no {', '.join(missing)}). Reinstall "
            "hf_fastrm from a release or a full clone, or train it: `python -m hf_fastrm.toy.train --device cuda` "
            "(about two minutes on one GPU) writes it there."
        )


def load_default_model(dtype: torch.dtype = torch.float32, device: str | torch.device | None = None, **kwargs: Any):
    """The shipped `LlavaForConditionalGeneration`, in eval mode.

    Args:
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): the weights' dtype.
        device (`str` or `torch.device`, *optional*): where to put it (CPU when None).
        kwargs: passed to `from_pretrained` (e.g. ``attn_implementation="eager"``).

    Raises:
        `FileNotFoundError`: the assets are missing (the message says how to get them).
    """
    from transformers import LlavaForConditionalGeneration

    _require_default_model()
    model = LlavaForConditionalGeneration.from_pretrained(DEFAULT_MODEL_DIR, dtype=dtype, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_default_processor():
    """The shipped model's `LlavaProcessor` (CLIP image processor, word-level tokenizer padding on the left).

    Raises:
        `FileNotFoundError`: the assets are missing (the message says how to get them).
    """
    from transformers import LlavaProcessor

    _require_default_model()
    return LlavaProcessor.from_pretrained(DEFAULT_MODEL_DIR)


def load_default_head(device: str | torch.device | None = None):
    """The FastRM head distilled for the shipped model (`DEFAULT_HEAD_DIR`), in eval mode.

    Raises:
        `FileNotFoundError`: the head is missing (the message says how to build it).
    """
    from ..constants import CONFIG_NAME, WEIGHTS_NAME
    from ..head import FastRMHead

    missing = [
        name for name in (CONFIG_NAME, WEIGHTS_NAME) if not os.path.isfile(os.path.join(DEFAULT_HEAD_DIR, name))
    ]
    if missing:
        raise FileNotFoundError(
            f"The default FastRM head is missing from {DEFAULT_HEAD_DIR} (no {', '.join(missing)}). Reinstall "
            "hf_fastrm from a release or a full clone, or distil it: `python -m hf_fastrm.toy.build_head` (a few "
            "minutes on a CPU) writes it there."
        )
    head = FastRMHead.from_pretrained(DEFAULT_HEAD_DIR)
    if device is not None:
        head = head.to(device)
    return head.eval()


__all__ = [
    "DEFAULT_HEAD_DIR",
    "DEFAULT_MODEL_DIR",
    "QUESTION_AWARE_HEAD_DIR",
    "default_model_available",
    "load_default_head",
    "load_default_model",
    "load_default_processor",
]
