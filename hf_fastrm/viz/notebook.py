"""Inline display in Jupyter: `_repr_html_` for reports and results, and matplotlib plots.

- An [`ExplanationReport`] (what `hf_fastrm.viz.explain` returns) holds the image: it renders as the HTML report
  does (question, answer, tokens coloured by confidence, the chosen token's map over the image; click a token). The
  fragment has no script (notebook front ends drop or distrust scripts in outputs): token choice is pure CSS.
- A [`FastRMResult`] or a `generate(..., return_relevancy=True)` output holds no image and no tokenizer: it renders
  each row's per-token confidence and maps on the patch grids; ``.show(images, processor)`` makes a report with the
  image.
- ``.plot(...)`` draws maps with matplotlib, imported only when called.
"""

from __future__ import annotations

import html
import itertools
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from .html import _confidence_colour, _data_uri, _display_text
from .overlay import colormap_css_gradient, heatmap_rgba
from .report import ExplanationReport, OverlayStyle

_ids = itertools.count()

_NOTEBOOK_CSS = """
.fastrm-nb { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --accent: #2457d6; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: #fff; border: 1px solid var(--line);
  border-radius: 10px; padding: 12px 14px; max-width: 980px; }
.fastrm-nb .fastrm-nb-label { display: inline-block; min-width: 84px; color: var(--muted); font-size: 11px;
  text-transform: uppercase; letter-spacing: .04em; }
.fastrm-nb input.fastrm-nb-radio { display: none; }
.fastrm-nb .fastrm-nb-tokens { display: flex; flex-wrap: wrap; gap: 5px; margin: 8px 0; }
.fastrm-nb .fastrm-nb-token { font-family: ui-monospace, Menlo, monospace; font-size: 13px; color: #111;
  border: 2px solid transparent; border-radius: 7px; padding: 2px 7px 1px; cursor: pointer; display: inline-flex;
  flex-direction: column; align-items: center; line-height: 1.2; }
.fastrm-nb .fastrm-nb-token small { font-size: 10px; color: #333; }
.fastrm-nb .fastrm-nb-token.special { border-style: dashed; border-color: #9aa3b5; }
.fastrm-nb .fastrm-nb-panel { display: none; gap: 14px; flex-wrap: wrap; }
.fastrm-nb figure { margin: 0; }
.fastrm-nb figcaption { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.fastrm-nb img { display: block; border-radius: 6px; border: 1px solid var(--line); max-width: 100%; height: auto; }
.fastrm-nb .fastrm-nb-legend { color: var(--muted); font-size: 11px; margin-top: 6px; }
.fastrm-nb .fastrm-nb-scale { display: inline-block; width: 110px; height: 9px; border-radius: 3px;
  vertical-align: middle; margin: 0 5px; border: 1px solid var(--line); }
.fastrm-nb table { border-collapse: collapse; margin: 6px 0; }
.fastrm-nb td { padding: 2px 4px; text-align: center; vertical-align: top; font-size: 11px; }
.fastrm-nb td img { image-rendering: pixelated; }
"""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.2f}"


def report_html(report: ExplanationReport, style: OverlayStyle | None = None, max_tokens: int = 64) -> str:
    """An HTML fragment for `report`, in the HTML report's look: question, answer, confidence, token chips (colour:
    confidence) and, for the chosen token (click a chip; CSS only, no script), its map over each image, the
    teacher's beside it when the report has one. Without images: the chips alone."""
    style = style or OverlayStyle(min_size=192, max_size=320)
    uid = f"fastrm-nb-{next(_ids)}"
    esc = html.escape
    count = min(report.num_tokens, max_tokens)
    methods = [("FastRM" if report.method == "fastrm" else "Gradient relevancy", report.maps)]
    if report.has_teacher:
        methods.append(("Teacher (gradient relevancy)", report.teacher_maps))
    drawn = report.drawn_grids if report.images else []
    initial = next((i for i in range(count) if not report.special[i]), 0)
    radios, chips, panels, rules = [], [], [], []
    for index in range(count):
        text, special, confidence = report.tokens[index], report.special[index], float(report.confidence[index])
        checked = " checked" if index == initial else ""
        radios.append(f'<input type="radio" class="fastrm-nb-radio" name="{uid}" id="{uid}-t{index}"{checked}>')
        chips.append(
            f'<label for="{uid}-t{index}" class="fastrm-nb-token{" special" if special else ""}" '
            f'style="background: {_confidence_colour(confidence)}" title="token {index} (id {report.token_ids[index]})'
            f': confidence {_fmt(confidence)}">{esc(_display_text(text))}<small>{_fmt(confidence)}</small></label>'
        )
        rules.append(
            f"#{uid}-t{index}:checked ~ .fastrm-nb-panels .fastrm-nb-p{index} {{ display: flex; }}\n"
            f"#{uid}-t{index}:checked ~ .fastrm-nb-tokens label[for={uid}-t{index}] "
            "{ border-color: var(--accent); box-shadow: 0 0 0 2px #2457d633; }"
        )
        if drawn:
            figures = []
            for caption, maps in methods:
                for grid in drawn:
                    image = report.images[report.grid_images[grid]]
                    label = caption + (f" \u00b7 {report.grid_labels[grid]}" if len(drawn) > 1 else "")
                    figures.append(
                        f"<figure><figcaption>{esc(label)} \u00b7 \u201c{esc(text.strip())}\u201d</figcaption>"
                        f'<img alt="{esc(label)} map of token {index}" '
                        f'src="{_data_uri(style.draw(image, maps[grid][index]), "PNG")}"></figure>'
                    )
            panels.append(f'<div class="fastrm-nb-panel fastrm-nb-p{index}">{"".join(figures)}</div>')
    more = f" (first {count} of {report.num_tokens} tokens shown)" if count < report.num_tokens else ""
    sequence = _fmt(report.sequence_confidence)
    if report.has_teacher:
        sequence += f" (teacher {_fmt(report.teacher_sequence_confidence)})"
    css = _NOTEBOOK_CSS.replace(".fastrm-nb ", f"#{uid} ").replace(".fastrm-nb {", f"#{uid} {{")
    return (
        f'<div class="fastrm-nb" id="{uid}"><style>{css}\n{chr(10).join(rules)}</style>'
        f'<div><span class="fastrm-nb-label">Question</span> {esc(report.prompt)}</div>'
        f'<div><span class="fastrm-nb-label">Answer</span> <b>{esc(report.answer)}</b></div>'
        f'<div><span class="fastrm-nb-label">Confidence</span> {esc(sequence)} '
        f"<small>(mean over the answer's non-special tokens){esc(more)}</small></div>"
        f"{''.join(radios)}"
        f'<div class="fastrm-nb-tokens">{"".join(chips)}</div>'
        f'<div class="fastrm-nb-panels">{"".join(panels)}</div>'
        f'<div class="fastrm-nb-legend">click a token to see its map \u00b7 confidence 0<span class="fastrm-nb-scale" '
        'style="background: linear-gradient(to right, hsl(0, 75%, 78%), hsl(60, 75%, 78%), hsl(120, 75%, 78%))">'
        f'</span>1 \u00b7 relevance low<span class="fastrm-nb-scale" style="background: '
        f'{colormap_css_gradient(style.colormap)}"></span>high</div></div>'
    )


def result_html(result: Any, max_rows: int = 4, max_tokens: int = 32, cell: int = 12) -> str:
    """An HTML fragment for a [`FastRMResult`] or a FastRM `generate()` output (no image, no tokenizer): per row,
    the sequence confidence and, per token (its id when the output has `sequences`), its confidence and its map on
    each patch grid (a small heat map, NaN transparent)."""
    uid = f"fastrm-nb-{next(_ids)}"
    css = _NOTEBOOK_CSS.replace(".fastrm-nb ", f"#{uid} ").replace(".fastrm-nb {", f"#{uid} {{")
    relevancy = result.relevancy
    if relevancy is None:
        return f"<pre>{html.escape(object.__repr__(result))}</pre>"
    rows, steps = relevancy.shape[0], relevancy.shape[1]
    sequences = getattr(result, "sequences", None)
    method = getattr(result, "method", None) or "fastrm"
    parts = [
        f'<div class="fastrm-nb" id="{uid}"><style>{css}</style><div><b>{type(result).__name__}</b> '
        f"\u00b7 {rows} rows \u00d7 {steps} new tokens \u00d7 {relevancy.shape[2]} image tokens \u00b7 maps: "
        f"{html.escape(method)} \u00b7 <code>.show(images, processor)</code> draws them over the image</div>"
    ]
    for row in range(min(rows, max_rows)):
        count = min(int(result.token_mask[row].sum()), max_tokens)
        grids = result.relevancy_maps(row)
        ids = sequences[row, sequences.shape[1] - steps :].tolist() if sequences is not None else None
        heads, cells = [], []
        for index in range(count):
            confidence = float(result.confidence[row, index])
            label = f"id {ids[index]}" if ids is not None else f"#{index}"
            heads.append(
                f'<td style="background: {_confidence_colour(confidence)}">{label}<br>{_fmt(confidence)}</td>'
            )
            pictures = []
            for grid in grids:
                grid_map = grid[index].detach().float().cpu()
                if grid_map.dim() != 2:
                    continue
                size = (grid_map.shape[1] * cell, grid_map.shape[0] * cell)
                picture = heatmap_rgba(grid_map, size, alpha=1.0)
                pictures.append(f'<img alt="map" src="{_data_uri(picture, "PNG")}">')
            cells.append(f"<td>{''.join(pictures)}</td>")
        more = f" (first {count} tokens)" if count < int(result.token_mask[row].sum()) else ""
        parts.append(
            f"<div>row {row}: sequence confidence {_fmt(float(result.sequence_confidence[row]))}{more}</div>"
            f"<table><tr>{''.join(heads)}</tr><tr>{''.join(cells)}</tr></table>"
        )
    if rows > max_rows:
        parts.append(f"<div>\u2026 {rows - max_rows} more rows</div>")
    parts.append("</div>")
    return "".join(parts)


def show(
    result: Any,
    images: Image.Image | list[Image.Image],
    processor: Any,
    *,
    sequences: torch.Tensor | None = None,
    prompt: str = "",
    batch_index: int = 0,
    prompt_length: int | None = None,
) -> ExplanationReport:
    """An [`ExplanationReport`] of one row of `result` with its images (it renders inline and can `save()`).

    Args:
        result: a [`FastRMResult`] (then `sequences` is needed) or a FastRM `generate()` output.
        images: the row's images as given to the processor.
        processor: the model's processor (its tokenizer decodes the tokens; its image processor gives the region
            the model saw), or a tokenizer.
        sequences (`torch.LongTensor`, *optional*): the generated sequences (default: ``result.sequences``).
        prompt (`str`, *optional*): the question, shown above the answer.
        prompt_length (`int`, *optional*): defaults to ``sequences.shape[1] - new_tokens``.
    """
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    from ..outputs import attach_result
    from .explain import model_view

    sequences = sequences if sequences is not None else getattr(result, "sequences", None)
    if sequences is None:
        raise ValueError(
            "`show` needs the generated sequences: pass sequences=out.sequences (or generate()'s output)."
        )
    outputs = result if hasattr(result, "sequences") else attach_result(GenerateDecoderOnlyOutput(sequences), result)
    image_list = [images] if isinstance(images, Image.Image) else list(images)
    image_processor = getattr(processor, "image_processor", None)
    start = sequences.shape[1] - result.relevancy.shape[1] if prompt_length is None else prompt_length
    report = ExplanationReport.from_outputs(
        outputs,
        getattr(processor, "tokenizer", processor),
        prompt=prompt,
        prompt_length=start,
        images=[model_view(image, image_processor) for image in image_list],
        batch_index=batch_index,
    )
    report.method = getattr(result, "method", None) or "fastrm"
    return report


def plot(
    source: Any,
    batch_index: int = 0,
    *,
    tokens: list[int] | None = None,
    image: Image.Image | None = None,
    grid: int = 0,
    max_tokens: int = 12,
    colormap: str = "jet",
    columns: int = 6,
    teacher: bool = False,
):
    """Draws token maps with matplotlib (imported here, never at package import): one panel per token, the map over
    `image` when given (or over the report's image), titled with the token (or its index) and its confidence.

    Args:
        source: an [`ExplanationReport`], a [`FastRMResult`] or a FastRM `generate()` output.
        batch_index (`int`): the row (results and outputs).
        tokens (`list[int]`, *optional*): which tokens (default: the first `max_tokens`).
        image (`PIL.Image.Image`, *optional*): draw the maps over it (results and outputs; a report uses its own).
        grid (`int`): which patch grid (image) to draw.
        teacher (`bool`): a report's teacher maps instead of the head's.

    Returns:
        `matplotlib.figure.Figure`.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot() needs matplotlib: pip install matplotlib (or hf_fastrm[notebook]).") from error
    from .overlay import overlay

    if isinstance(source, ExplanationReport):
        maps = (source.teacher_maps if teacher else source.maps)[grid]
        confidence = (source.teacher_confidence if teacher else source.confidence).tolist()
        names = [_display_text(text) for text in source.tokens]
        if image is None and source.images:
            image = source.images[source.grid_images[grid]]
    else:
        maps = source.relevancy_maps(batch_index)[grid]
        count = int(source.token_mask[batch_index].sum())
        maps = maps[:count]
        confidence = source.confidence[batch_index, :count].tolist()
        names = [f"#{index}" for index in range(count)]
    chosen = list(range(min(len(names), max_tokens))) if tokens is None else list(tokens)
    if not chosen:
        raise ValueError("No token to plot.")
    columns = max(1, min(columns, len(chosen)))
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, chosen, strict=False):
        grid_map = maps[index].detach().float().cpu()
        if image is not None:
            axis.imshow(overlay(image, grid_map, colormap=colormap, min_size=192))
        else:
            axis.imshow(np.asarray(grid_map), cmap=colormap, interpolation="nearest")
        axis.set_title(f"{names[index]}\n{_fmt(confidence[index])}", fontsize=9)
    figure.tight_layout()
    return figure
