"""Janus: SigLIP image features written over the image placeholder tokens (a square grid, the generic rules), and a
`generate()` that drops `logits_processor` in text mode.

``JanusForConditionalGeneration.generate(inputs, attention_mask, logits_processor, **kwargs)`` (transformers 5.24)
takes `logits_processor` as a named argument, but in text mode (``generation_mode="text"``, the default) it calls
``GenerationMixin.generate(inputs=..., attention_mask=..., generation_config=..., guidance_scale=None,
**model_kwargs)`` without it: a FastRM processor handed to it never runs. While a FastRM tap is attached, the
adapter wraps the instance's `generate` (restored when the tap detaches) so that a text-mode call given logits
processors makes that same call with them added. Calls without logits processors, and image generation, go to
Janus's own `generate` unchanged; the tokens are those of plain `generate()` (FastRM's processor leaves the scores
as they are).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from .generic import PlaceholderAdapter

SQUARE = "one square grid per image (token count confirmed by the vision config's image and patch size)"


class JanusAdapter(PlaceholderAdapter):
    """``JanusForConditionalGeneration``: the generic layout, and text-mode `generate()` keeping `logits_processor`."""

    family = "Janus"

    def __init__(self) -> None:
        super().__init__(
            ("janus",),
            family=self.family,
            grid_description=SQUARE,
            tested_configs=(
                "janus: SigLIP tower, square images; text-mode generate() given FastRM's logits processor (its "
                "own generate() drops `logits_processor` in text mode: the tap routes it on)",
            ),
        )

    def method_wrappers(self, model: nn.Module) -> dict[str, Callable[[Callable], Callable]]:
        return {"generate": functools.partial(_text_mode_with_logits_processor, model)}


def _text_mode_with_logits_processor(model: nn.Module, original: Callable) -> Callable:
    """Wraps Janus's bound `generate`: in text mode with logits processors, the call its text mode makes, with them."""
    owner = next(cls for cls in type(model).__mro__ if cls.__dict__.get("generate") is original.__func__)
    base_generate = super(owner, model).generate  # what Janus's text mode calls (`super().generate`)

    @functools.wraps(original)
    def generate(inputs: Any = None, attention_mask: Any = None, logits_processor: Any = None, **kwargs: Any) -> Any:
        if not logits_processor or kwargs.get("generation_mode", "text") != "text":
            return original(inputs, attention_mask=attention_mask, logits_processor=logits_processor, **kwargs)
        kwargs.pop("generation_mode", None)
        generation_config, model_kwargs = model._prepare_generation_config(
            kwargs.pop("generation_config", None), **kwargs
        )
        return base_generate(
            inputs=inputs,
            attention_mask=attention_mask,
            generation_config=generation_config,
            guidance_scale=None,
            logits_processor=logits_processor,
            **model_kwargs,
        )

    return generate
