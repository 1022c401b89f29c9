"""Qwen4-Exp: Qwen-VL image layout, but a text decoder that ends in a hyper-connection mixer instead of a final norm.

``Qwen4ExpTextModel`` keeps ``hc_count`` residual streams through its layers and collapses them at the end with
``hyper_connection_mixer`` (a ``Qwen4ExpTextGatedResidual`` built without its combine branch, so it returns one
`(batch, seq, hidden)` tensor); that output is the model's ``last_hidden_state``, what ``lm_head`` reads. There is no
``norm`` module, so the generic adapter finds no decoder; the image layout is the generic ``image_grid_thw`` one.
"""

from __future__ import annotations

from torch import nn

from .generic import PlaceholderAdapter

MIXER = "hyper_connection_mixer"


class Qwen4ExpAdapter(PlaceholderAdapter):
    """``Qwen4ExpForConditionalGeneration``: the tap reads the hyper-connection mixer's output."""

    family = "Qwen4-Exp"
    grid_description = (
        "one (h/merge, w/merge) grid per image from `image_grid_thw`; video (t, h/merge, w/merge) from "
        "`video_grid_thw`; last hidden states read at the decoder's `hyper_connection_mixer` (it has no final norm)"
    )

    def __init__(self) -> None:
        super().__init__(
            ("qwen4_exp",),
            family=self.family,
            grid_description=self.grid_description,
            teacher_support="no: hybrid decoder (Gated DeltaNet linear-attention layers have no attention map to "
            "record)",
            tested_configs=(
                "qwen4_exp: image_grid_thw 1x4x4, 1x4x6, 1x6x4 (merge 2); hybrid Gated DeltaNet / QSA-indexed "
                "attention decoder with 4 hyper-connection streams",
            ),
        )

    def language_model(self, model: nn.Module) -> nn.Module:
        language_model = getattr(getattr(model, "model", model), "language_model", None)
        if not isinstance(getattr(language_model, MIXER, None), nn.Module):
            raise ValueError(
                f"Cannot find the text decoder of {type(model).__name__}: expected `model.model.language_model` with a "
                f"`{MIXER}` (Qwen4-Exp's last module before `lm_head`)."
            )
        return language_model

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The hyper-connection mixer: its output, `(batch, seq, hidden)`, is the last hidden state."""
        return getattr(self.language_model(model), MIXER)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers
