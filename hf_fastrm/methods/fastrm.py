"""``"fastrm"``: the distilled head, inside `generate()` (a logits processor) or after it (one forward)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..head import FastRMHead
from ..outputs import FastRMResult
from .base import RelevancyMethod, register_method, sequences_of
from .forward import forced_sequence, unwrap_model


@register_method
class FastRM(RelevancyMethod):
    r"""FastRM (arXiv 2412.01487): a LayerNorm and one attention head from each token's last hidden state to the
    image tokens' last hidden states, distilled from gradient maps.

    Inside `generate()` it runs as [`FastRMLogitsProcessor`] (``streams = True``); [`FastRM.attribute`] runs it
    after the fact on one forward of the returned sequences (the same maps up to the float differences between
    cached decoding and a full forward).

    Args:
        head ([`FastRMHead`]): a head trained for the model.
        check_base_model (`bool`, *optional*, defaults to `True`): see [`FastRMHead.check_compatible`].
    """

    name = "fastrm"
    streams = True

    def __init__(self, head: FastRMHead | None = None, check_base_model: bool = True) -> None:
        if not isinstance(head, FastRMHead):
            raise ValueError(
                "The 'fastrm' relevancy method needs a head: get_method('fastrm', head=FastRMHead.from_pretrained(...))"
                f", got {type(head).__name__}."
            )
        self.head = head
        self.check_base_model = check_base_model

    def logits_processor(self, model: nn.Module) -> Any:
        from ..processor import FastRMLogitsProcessor

        return FastRMLogitsProcessor(model, self.head, check_base_model=self.check_base_model)

    @torch.no_grad()
    def attribute(
        self, model: nn.Module, inputs: dict[str, Any], outputs_or_sequences: Any, **options: Any
    ) -> FastRMResult:
        model = unwrap_model(model)
        self.head.check_compatible(model.config, check_base_model=self.check_base_model)
        forced = forced_sequence(model, inputs, sequences_of(outputs_or_sequences), cross_attention=True, **options)
        norm = forced.adapter.final_norm(model)
        recorded: dict[str, torch.Tensor] = {}

        def keep_last_hidden(module: nn.Module, args: tuple, output: Any) -> None:
            recorded["hidden"] = output[0] if isinstance(output, tuple) else output

        handles = [norm.register_forward_hook(keep_last_hidden)]
        source = forced.adapter.image_state_source(model)
        if source is not None:  # cross-attention families: the image tokens are the cross-attention image states
            module, read = source

            def keep_image_states(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
                states = read(args, kwargs)
                if states is not None:
                    recorded["image_states"] = states

            handles.append(module.register_forward_pre_hook(keep_image_states, with_kwargs=True))
        try:
            forced.forward()
        finally:
            for handle in handles:
                handle.remove()
        hidden = recorded["hidden"]  # (batch, length, hidden)
        head_device = next(self.head.parameters()).device
        cross = any(layout.cross_attention for layout in forced.layouts)
        image_states, _ = _image_states(
            recorded["image_states"].to(hidden.device) if cross else hidden, forced.layouts
        )
        keys = self.head.image_keys(image_states.to(head_device))
        token_states = hidden[:, forced.chosen_positions.to(hidden.device)].to(head_device)
        relevancy = self.head.relevance_from_keys(token_states, keys)  # (batch, steps, image_tokens)
        return forced.result(relevancy, self.name, over_positions=False)


def _image_states(hidden: torch.Tensor, layouts: list) -> tuple[torch.Tensor, torch.Tensor]:
    from ..results import image_slots

    index, mask = image_slots(layouts, hidden.device)
    width = hidden.shape[-1]
    return hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, width)), mask
