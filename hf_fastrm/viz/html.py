"""A self-contained HTML page for one [`ExplanationReport`]: no network, images inline, choose a token to see its map.

Everything the page needs is inside the file: the pictures are base64 ``data:`` URIs, the CSS and the script are
inline, and a Content-Security-Policy forbids any other source, so the page opens offline, from an e-mail or a CI
artifact, and shows the same thing everywhere.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from typing import TYPE_CHECKING

from PIL import Image

from ..utils.io import atomic_write_text
from .overlay import OverlayStyle, colormap_css_gradient, image_bytes

if TYPE_CHECKING:
    from .report import ExplanationReport

_METHOD_LABELS = {
    "fastrm": "FastRM head",
    "gradient": "gradient relevancy (teacher)",
    "attention": "raw attention (last layer, mean of heads)",
    "rollout": "attention rollout",
    "lvlm-interpret": "LVLM-Interpret's gradient relevancy",
}
_CAPTIONS = {
    "fastrm": "FastRM",
    "gradient": "Gradient relevancy",
    "attention": "Raw attention",
    "rollout": "Attention rollout",
    "lvlm-interpret": "LVLM-Interpret relevancy",
    "teacher": "Teacher (gradient relevancy)",
}

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --accent: #2457d6; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       background: #f6f7fb; }
main { max-width: 1180px; margin: 0 auto; }
h1 { font-size: 20px; margin: 0 0 4px; }
.ids { color: var(--muted); font-size: 13px; margin: 0 0 16px; word-break: break-all; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; margin-bottom: 14px; }
.label { display: inline-block; min-width: 90px; color: var(--muted); font-size: 12px; text-transform: uppercase;
         letter-spacing: .04em; }
.qa div { margin: 2px 0; }
#answer { font-weight: 600; }
#tokens { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0; }
.token { font: inherit; font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 14px;
         border: 2px solid transparent; border-radius: 7px; padding: 3px 8px 2px; cursor: pointer; color: #111;
         display: inline-flex; flex-direction: column; align-items: center; line-height: 1.2; }
.token small { font-size: 11px; color: #333; }
.token.special { border-style: dashed; border-color: #9aa3b5; }
.token[aria-pressed="true"] { border-color: var(--accent); border-style: solid; box-shadow: 0 0 0 2px #2457d633; }
.token.image-only { background: #eef1f6; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; align-items: center; color: var(--muted); font-size: 12px; }
.bar { display: inline-block; width: 140px; height: 10px; border-radius: 3px; vertical-align: middle;
       margin: 0 6px; border: 1px solid var(--line); }
#panels { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 13px; margin-bottom: 6px; }
.view { display: block; max-width: 100%; height: auto; border-radius: 6px; border: 1px solid var(--line);
        image-rendering: auto; }
#selection { font-size: 14px; margin-top: 10px; }
#selection b { font-family: ui-monospace, Menlo, monospace; }
"""

_SCRIPT = """
(function () {
  "use strict";
  const report = JSON.parse(document.getElementById("report-data").textContent);
  const buttons = Array.from(document.querySelectorAll("#tokens .token"));
  const views = Array.from(document.querySelectorAll("img.view"));
  const selection = document.getElementById("selection");

  function formatConfidence(value) {
    return value === null ? "n/a" : value.toFixed(3);
  }

  function select(index) {
    for (const view of views) {
      const method = view.dataset.method;
      const image = Number(view.dataset.image);
      const grid = Number(view.dataset.grid);
      view.src = index < 0 ? report.images[image] : report.overlays[method][index][grid];
      view.dataset.token = String(index);
    }
    for (const button of buttons) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
    }
    document.body.dataset.selectedToken = String(index);
    if (index < 0) {
      selection.textContent = "Showing the image without a map.";
      return;
    }
    const token = report.tokens[index];
    let text = "Token " + index + ": \\u201c" + token.text + "\\u201d, confidence " + formatConfidence(token.confidence);
    if (report.hasTeacher) {
      text += " (teacher " + formatConfidence(token.teacherConfidence) + ")";
    }
    if (token.special) {
      text += " \\u2014 special token, not counted in the sequence confidence";
    }
    selection.textContent = text;
  }

  for (const button of buttons) {
    button.addEventListener("click", function () { select(Number(button.dataset.index)); });
  }
  document.addEventListener("keydown", function (event) {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") { return; }
    const current = Number(document.body.dataset.selectedToken);
    const step = event.key === "ArrowRight" ? 1 : -1;
    const next = Math.min(report.tokens.length - 1, Math.max(-1, current + step));
    select(next);
    const button = buttons.find(function (b) { return Number(b.dataset.index) === next; });
    if (button) { button.focus(); }
  });
  select(report.initialToken);
})();
"""


def _data_uri(image: Image.Image, image_format: str) -> str:
    mime = "image/png" if image_format == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(image_bytes(image, image_format)).decode("ascii")


def _confidence_colour(value: float) -> str:
    """Red (0) through yellow to green (1), light enough for dark text; grey when there is no confidence."""
    if value is None or not math.isfinite(value):
        return "#e3e6ec"
    return f"hsl({round(120 * min(max(value, 0.0), 1.0))}, 75%, 78%)"


def _display_text(text: str) -> str:
    """A token's text made visible: spaces as middle dots at the edges, newlines as a return sign."""
    if text == "":
        return "\u2205"
    shown = text.replace("\n", "\u23ce").replace("\t", "\u21e5")
    stripped = shown.strip(" ")
    if not stripped:
        return "\u00b7" * len(shown)
    leading = len(shown) - len(shown.lstrip(" "))
    trailing = len(shown) - len(shown.rstrip(" "))
    return "\u00b7" * leading + stripped + "\u00b7" * trailing


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def render_html_report(
    report: ExplanationReport,
    path: str | os.PathLike,
    *,
    style: OverlayStyle | None = None,
    title: str | None = None,
    image_format: str = "auto",
) -> str:
    """Writes a self-contained HTML page for `report` (atomic) and returns its path.

    The page shows the question and answer, the answer's tokens coloured by confidence (red: spread map, green:
    focused), the sequence confidence and, per image, the map of the chosen token over the image (the teacher's
    beside it when the report has one). Clicking a token (or the arrow keys) switches between precomputed overlays;
    the shown overlay is in each image's ``src`` and its token index in ``data-token``.

    Args:
        report ([`ExplanationReport`]): with its images.
        path (`str`): where to write the page.
        style ([`OverlayStyle`], *optional*): colour map, opacity and display size of the overlays.
        title (`str`, *optional*): the page heading (defaults to "FastRM explanation").
        image_format (`str`, *optional*, defaults to ``"auto"``): ``"PNG"``, ``"JPEG"``, or ``"auto"``: PNG for
            pictures up to 300x300 pixels (synthetic scenes), JPEG above (photos: a tenth of the size).
    """
    if not report.images:
        raise ValueError("The report holds no images (read back from JSON?): the HTML page needs them.")
    style = style or OverlayStyle()
    bases = [style.base(image) for image in report.images]
    if image_format == "auto":
        image_format = "PNG" if max(b.size[0] * b.size[1] for b in bases) <= 300 * 300 else "JPEG"
    image_format = image_format.upper()
    if image_format not in ("PNG", "JPEG"):
        raise ValueError(f"`image_format` must be 'PNG', 'JPEG' or 'auto', got {image_format!r}.")

    main = (
        report.method if report.method != "teacher" else "main"
    )  # any registered method; "teacher" is the side panel
    methods = [(main, report.maps)]
    if report.has_teacher:
        methods.append(("teacher", report.teacher_maps))
    drawn = report.drawn_grids
    if not drawn:
        raise ValueError("None of the report's grids lies over an image (videos only): nothing to draw.")
    overlays = {
        method: [
            [
                _data_uri(style.draw(report.images[report.grid_images[grid]], maps[grid][index]), image_format)
                for grid in drawn
            ]
            for index in range(report.num_tokens)
        ]
        for method, maps in methods
    }
    initial = next((i for i, special in enumerate(report.special) if not special), 0 if report.num_tokens else -1)
    teacher_confidence = report.teacher_confidence.tolist() if report.has_teacher else [None] * report.num_tokens
    data = {
        "tokens": [
            {
                "text": text,
                "special": special,
                "confidence": _finite(confidence),
                "teacherConfidence": _finite(teacher),
            }
            for text, special, confidence, teacher in zip(
                report.tokens, report.special, report.confidence.tolist(), teacher_confidence, strict=True
            )
        ],
        "images": [_data_uri(base, image_format) for base in bases],
        "overlays": overlays,
        "hasTeacher": report.has_teacher,
        "initialToken": initial,
    }
    # "<" escaped so no token text can close the script element.
    data_json = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")

    esc = html.escape
    heading = title or "FastRM explanation"
    ids = [f"model: {report.model_id or 'unknown'}"]
    if report.head:
        head_name = report.head.get("id") or f"trained for {report.head.get('base_model') or 'an unnamed model'}"
        ids.append(f"head: {head_name}")
    ids.append(f"maps: {_METHOD_LABELS.get(report.method, report.method)}")
    sequence = _finite(report.sequence_confidence)
    sequence_text = "n/a" if sequence is None else f"{sequence:.3f}"
    if report.has_teacher:
        teacher_sequence = _finite(report.teacher_sequence_confidence)
        sequence_text += f" (teacher {'n/a' if teacher_sequence is None else f'{teacher_sequence:.3f}'})"

    token_buttons = [
        '<button type="button" class="token image-only" data-index="-1" aria-pressed="false">image</button>'
    ]
    for index, (text, special, confidence) in enumerate(
        zip(report.tokens, report.special, report.confidence.tolist(), strict=True)
    ):
        value = _finite(confidence)
        label = "n/a" if value is None else f"{value:.2f}"
        token_buttons.append(
            f'<button type="button" class="token{" special" if special else ""}" data-index="{index}" '
            f'aria-pressed="false" style="background: {_confidence_colour(value)}" '
            f'title="token {index} (id {report.token_ids[index]}): confidence {label}">'
            f"{esc(_display_text(text))}<small>{label}</small></button>"
        )

    panels = []
    captions = {**_CAPTIONS, main: _CAPTIONS.get(main, main)}
    for slot, grid_index in enumerate(drawn):
        image_index = report.grid_images[grid_index]
        for method, _ in methods:
            source = overlays[method][initial][slot] if initial >= 0 else data["images"][image_index]
            caption = captions[method] + (f" \u00b7 {report.grid_labels[grid_index]}" if len(drawn) > 1 else "")
            panels.append(
                f'<figure><figcaption>{esc(caption)}</figcaption><img class="view" id="view-{method}-{slot}" '
                f'data-method="{method}" data-grid="{slot}" data-image="{image_index}" data-token="{initial}" '
                f'alt="{esc(caption)} relevancy map" src="{source}"></figure>'
            )

    extra = ""
    truth = report.metadata.get("expected_answer")
    if truth is not None:
        extra = f'<div><span class="label">Expected</span> {esc(str(truth))}</div>'

    ids_text = esc(" \u00b7 ".join(ids))
    tokens_html = "".join(token_buttons)
    panels_html = "".join(panels)
    scale_note = " (min-max per map)" if style.normalize else ""
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="hf_fastrm">
<title>{esc(heading)}: {esc(report.answer)}</title>
<style>{_CSS}</style>
</head>
<body data-selected-token="{initial}">
<main>
<h1>{esc(heading)}</h1>
<p class="ids">{ids_text}</p>
<section class="card qa">
<div><span class="label">Question</span> <span id="question">{esc(report.prompt)}</span></div>
<div><span class="label">Answer</span> <span id="answer">{esc(report.answer)}</span></div>
{extra}
<div><span class="label">Confidence</span> <span id="sequence-confidence">{esc(sequence_text)}</span>
 <span class="legend-inline">(mean over the answer's non-special tokens)</span></div>
</section>
<section class="card">
<div class="label">Answer tokens: click one to see its map (arrow keys move)</div>
<div id="tokens" role="toolbar" aria-label="answer tokens">{tokens_html}</div>
<div class="legend">
<span>token confidence 0<span class="bar" style="background: linear-gradient(to right, hsl(0, 75%, 78%), hsl(60, 75%, 78%), hsl(120, 75%, 78%))"></span>1</span>
<span>relevance low<span class="bar" style="background: {colormap_css_gradient(style.colormap)}"></span>high{scale_note}</span>
</div>
</section>
<section class="card">
<div id="panels">{panels_html}</div>
<div id="selection" aria-live="polite"></div>
</section>
</main>
<script type="application/json" id="report-data">{data_json}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""
    path = os.fspath(path)
    atomic_write_text(path, page)
    return path
