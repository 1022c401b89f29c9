"""What FastRM returns: relevancy maps and confidence per generated token, and views per image grid."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.utils import (
    GenerateBeamDecoderOnlyOutput,
    GenerateBeamEncoderDecoderOutput,
    GenerateDecoderOnlyOutput,
    GenerateEncoderDecoderOutput,
)
from transformers.utils import logging

from .architectures.base import RowImageLayout

logger = logging.get_logger(__name__)


class RelevancyMixin:
    """Methods shared by [`FastRMResult`] and the `generate()` outputs carrying relevancy.

    Fields (set by the subclasses):
        relevancy (`torch.FloatTensor` of shape `(batch, new_tokens, image_tokens)`): relevance in [0, 1] of each
            image token (in prompt order, all images of the row) for each generated token. NaN for padding image
            slots (rows with fewer image tokens) and for tokens after a row's end of sequence.
        confidence (`torch.FloatTensor` of shape `(batch, new_tokens)`): 1 - normalised entropy of each map; NaN
            where `token_mask` is False.
        sequence_confidence (`torch.FloatTensor` of shape `(batch,)`): mean confidence over the generated,
            non-special tokens of each row; NaN for a row whose generated tokens are all special (for example an
            answer that is only the end-of-sequence token), which is logged as a warning.
        token_mask (`torch.BoolTensor` of shape `(batch, new_tokens)`): True for tokens that were generated (up to
            and including the row's end-of-sequence token). A row that a stopping criterion ended without an
            end-of-sequence token continues with generate()'s pad filler, which counts here and is marked in
            `special_token_mask`.
        special_token_mask (`torch.BoolTensor` of shape `(batch, new_tokens)`): True for generated special tokens
            (end of sequence, pad, bos; left out of `sequence_confidence`). The rule is in `hf_fastrm.results`.
        image_token_mask (`torch.BoolTensor` of shape `(batch, image_tokens)`): True for real image tokens.
        image_layouts (`list[RowImageLayout]`): per row, the image tokens' positions and each image's grid.
    """

    relevancy: torch.Tensor | None
    image_layouts: list[RowImageLayout] | None

    def relevancy_maps(self, batch_index: int | None = None) -> list[list[torch.Tensor]] | list[torch.Tensor]:
        """Maps reshaped onto each image's patch grid, ready to overlay.

        Args:
            batch_index (`int`, *optional*): a single row; all rows when omitted.

        Returns:
            For one row, a list with one `torch.Tensor` of shape `(new_tokens, height, width)` per image (NaN in
            cells no token covers); for all rows, a list of such lists. A grid whose 2-D patch layout the adapter
            cannot know (the generic adapter's 1-D layout) gives a `(new_tokens, image_tokens)` map in prompt order,
            with a warning saying so.
        """
        if self.relevancy is None or self.image_layouts is None:
            raise ValueError("No relevancy was computed: call generate(..., return_relevancy=True).")
        rows = range(len(self.image_layouts)) if batch_index is None else [batch_index]
        maps = []
        for row in rows:
            row_maps = []
            for grid in self.image_layouts[row].image_grids:
                if grid.dim() == 1:
                    logger.warning_once(
                        "No 2-D patch grid is known for this model's image tokens (generic adapter, 1-D layout): "
                        "relevancy_maps() returns (new_tokens, image_tokens) maps in prompt order, not images. "
                        "Register an adapter that knows the family's grid to get 2-D maps."
                    )
                grid = grid.to(self.relevancy.device)
                picked = self.relevancy[row][:, grid.clamp(min=0)]
                row_maps.append(picked.masked_fill(grid < 0, math.nan))
            maps.append(row_maps)
        return maps[0] if batch_index is not None else maps

    # ------------------------------------------------------------------ notebook display (hf_fastrm.viz.notebook)
    def _repr_html_(self) -> str:
        """Jupyter: per row, each token's confidence and its map on the patch grids (no image: see `show`)."""
        from .viz.notebook import result_html

        return result_html(self)

    def show(self, images: Any, processor: Any, **kwargs: Any) -> Any:
        """An [`ExplanationReport`] of one row with its image (renders inline in Jupyter; `.save(folder)` writes the
        HTML/JSON report). See `hf_fastrm.viz.notebook.show` for the arguments."""
        from .viz.notebook import show

        return show(self, images, processor, **kwargs)

    def plot(self, batch_index: int = 0, **kwargs: Any) -> Any:
        """The row's token maps with matplotlib (a `Figure`); see `hf_fastrm.viz.notebook.plot`."""
        from .viz.notebook import plot

        return plot(self, batch_index, **kwargs)


@dataclass
class FastRMResult(RelevancyMixin):
    """Relevancy and confidence of one `generate()` call (see [`RelevancyMixin`] for the fields)."""

    relevancy: torch.Tensor
    confidence: torch.Tensor
    sequence_confidence: torch.Tensor
    token_mask: torch.Tensor
    image_token_mask: torch.Tensor
    image_layouts: list[RowImageLayout] = field(default_factory=list)
    method: str = "fastrm"
    """The registered name of the method that made the maps (``"fastrm"``, ``"gradient"``, ... see
    `hf_fastrm.methods.available_methods()`)."""
    special_token_mask: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> FastRMResult:
        return FastRMResult(
            relevancy=self.relevancy.to(device),
            confidence=self.confidence.to(device),
            sequence_confidence=self.sequence_confidence.to(device),
            token_mask=self.token_mask.to(device),
            image_token_mask=self.image_token_mask.to(device),
            image_layouts=self.image_layouts,
            method=self.method,
            special_token_mask=None if self.special_token_mask is None else self.special_token_mask.to(device),
        )


@dataclass
class FastRMGenerateDecoderOnlyOutput(GenerateDecoderOnlyOutput, RelevancyMixin):
    """[`~transformers.generation.GenerateDecoderOnlyOutput`] plus FastRM's fields (see [`RelevancyMixin`])."""

    relevancy: torch.FloatTensor | None = None
    confidence: torch.FloatTensor | None = None
    sequence_confidence: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    image_layouts: list[RowImageLayout] | None = None
    special_token_mask: torch.BoolTensor | None = None
    method: str | None = None


@dataclass
class FastRMGenerateBeamDecoderOnlyOutput(GenerateBeamDecoderOnlyOutput, RelevancyMixin):
    """[`~transformers.generation.GenerateBeamDecoderOnlyOutput`] plus FastRM's fields; maps follow the
    returned beams through `beam_indices`."""

    relevancy: torch.FloatTensor | None = None
    confidence: torch.FloatTensor | None = None
    sequence_confidence: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    image_layouts: list[RowImageLayout] | None = None
    special_token_mask: torch.BoolTensor | None = None
    method: str | None = None


@dataclass
class FastRMGenerateEncoderDecoderOutput(GenerateEncoderDecoderOutput, RelevancyMixin):
    """[`~transformers.generation.GenerateEncoderDecoderOutput`] plus FastRM's fields (encoder-decoder families:
    the maps are over the image tokens of the encoder's input)."""

    relevancy: torch.FloatTensor | None = None
    confidence: torch.FloatTensor | None = None
    sequence_confidence: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    image_layouts: list[RowImageLayout] | None = None
    special_token_mask: torch.BoolTensor | None = None
    method: str | None = None


@dataclass
class FastRMGenerateBeamEncoderDecoderOutput(GenerateBeamEncoderDecoderOutput, RelevancyMixin):
    """[`~transformers.generation.GenerateBeamEncoderDecoderOutput`] plus FastRM's fields; maps follow the
    returned beams through `beam_indices`."""

    relevancy: torch.FloatTensor | None = None
    confidence: torch.FloatTensor | None = None
    sequence_confidence: torch.FloatTensor | None = None
    token_mask: torch.BoolTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    image_layouts: list[RowImageLayout] | None = None
    special_token_mask: torch.BoolTensor | None = None
    method: str | None = None


GENERATE_OUTPUTS = (
    GenerateDecoderOnlyOutput,
    GenerateBeamDecoderOnlyOutput,
    GenerateEncoderDecoderOutput,
    GenerateBeamEncoderDecoderOutput,
)
"""The dict outputs of `generate()` that FastRM reads (decoder-only and encoder-decoder, sampling and beams)."""
BEAM_OUTPUTS = (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput)


def attach_result(outputs: Any, result: FastRMResult):
    """Returns `outputs` (one of [`GENERATE_OUTPUTS`]) as the matching FastRM output class carrying `result`'s
    fields."""
    if isinstance(outputs, GenerateBeamEncoderDecoderOutput):
        cls = FastRMGenerateBeamEncoderDecoderOutput
    elif isinstance(outputs, GenerateEncoderDecoderOutput):
        cls = FastRMGenerateEncoderDecoderOutput
    elif isinstance(outputs, GenerateBeamDecoderOnlyOutput):
        cls = FastRMGenerateBeamDecoderOnlyOutput
    else:
        cls = FastRMGenerateDecoderOnlyOutput
    fields = {key: getattr(outputs, key) for key in outputs.__dataclass_fields__}
    return cls(
        **fields,
        relevancy=result.relevancy,
        confidence=result.confidence,
        sequence_confidence=result.sequence_confidence,
        token_mask=result.token_mask,
        image_token_mask=result.image_token_mask,
        image_layouts=result.image_layouts,
        special_token_mask=result.special_token_mask,
        method=result.method,
    )
