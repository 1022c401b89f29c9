"""What the demo does, without Gradio: check the inputs, stream an answer with its maps, compute the teacher's maps,
write the reports, and render the viewer's HTML. `hf_fastrm.demo.app` puts a Gradio page around it."""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers.utils import logging

from ..head import FastRMHead
from ..outputs import attach_result
from ..processor import FastRMLogitsProcessor
from ..streaming import FastRMStreamer, StreamedToken
from ..viz.explain import build_prompt, model_view
from ..viz.html import _confidence_colour, _display_text
from ..viz.overlay import colormap_css_gradient
from ..viz.report import ExplanationReport, OverlayStyle

logger = logging.get_logger(__name__)

DEFAULT_THRESHOLD = 0.3
"""Tokens whose map confidence is below this are flagged as weakly grounded (the demo's slider starts here)."""


class DemoInputError(ValueError):
    """A problem with what the user gave (no image, unreadable image, empty question, no head): shown in the page."""


@dataclass
class DemoToken:
    """One answer token as the viewer shows it: text, confidence and the overlay picture of each method."""

    index: int
    token_id: int
    text: str
    confidence: float
    special: bool
    overlays: dict[str, list[str]] = field(default_factory=dict)  # method -> one data URI per drawn grid
    teacher_confidence: float | None = None


@dataclass
class DemoAnswer:
    """The state of one question: the image, the streamed tokens, and (when finished) the report."""

    question: str
    images: list[Image.Image]
    base_uris: list[str]
    tokens: list[DemoToken] = field(default_factory=list)
    finished: bool = False
    report: ExplanationReport | None = None
    inputs: dict[str, Any] | None = None
    outputs: Any = None
    report_files: list[str] = field(default_factory=list)
    expected_answer: str | None = None
    elapsed: float | None = None

    @property
    def answer_text(self) -> str:
        return "".join(token.text for token in self.tokens if not token.special).strip()

    @property
    def sequence_confidence(self) -> float | None:
        values = [t.confidence for t in self.tokens if not t.special and math.isfinite(t.confidence)]
        return sum(values) / len(values) if values else None

    @property
    def has_teacher(self) -> bool:
        return bool(self.tokens) and all("teacher" in token.overlays for token in self.tokens)


def _data_uri(image: Image.Image, image_format: str) -> str:
    """`image` as a ``data:`` URI, encoded for speed (the report's files use the smaller, slower encoding)."""
    buffer = io.BytesIO()
    if image_format == "PNG":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    mime = "image/png" if image_format == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def read_image(path: str | os.PathLike | None) -> Image.Image:
    """The uploaded file as an RGB image, or a [`DemoInputError`] saying what is wrong with it."""
    if not path:
        raise DemoInputError("No image: upload one, or choose a drawn scene.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        name = os.path.basename(os.fspath(path))
        raise DemoInputError(f"{name!r} is not an image this demo can read ({type(error).__name__}).") from error


class DemoEngine:
    """One model, its processor and head, serving the demo's questions one at a time.

    Args:
        model (`PreTrainedModel`): a supported vision-language model.
        processor: its `AutoProcessor`.
        head ([`FastRMHead`], *optional*): its head; without one, asking gives a message in the page.
        model_id, head_id (`str`): names shown in the page and written into the reports.
        max_new_tokens (`int`, *optional*, defaults to 16): answer length limit.
        token_delay (`float`, *optional*, defaults to 0): seconds between two shown tokens (the shipped model answers
            in milliseconds; a short pause lets one watch the answer stream).
        style ([`OverlayStyle`], *optional*): how the maps are drawn.
        prompt_builder (*optional*): ``fn(question) -> text`` for the processor (defaults to the chat template or
            the image token, as `hf_fastrm.viz.explain` does).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        head: FastRMHead | None,
        *,
        model_id: str = "model",
        head_id: str | None = None,
        max_new_tokens: int = 16,
        token_delay: float = 0.0,
        style: OverlayStyle | None = None,
        prompt_builder: Any = None,
        check_base_model: bool = True,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.head = head
        self.model_id = model_id
        self.head_id = head_id
        self.max_new_tokens = max_new_tokens
        self.token_delay = token_delay
        self.style = style or OverlayStyle()
        self.prompt_builder = prompt_builder
        self.check_base_model = check_base_model
        self._lock = threading.Lock()  # one generation at a time: the processor's hooks sit on the shared model

    # ------------------------------------------------------------------ inputs
    def _inputs(self, image: Image.Image, question: str) -> dict[str, Any]:
        text = (
            self.prompt_builder(question)
            if self.prompt_builder is not None
            else build_prompt(self.processor, question, 1)
        )
        inputs = self.processor(images=[image], text=text, return_tensors="pt")
        device = next(self.model.parameters()).device
        dtype = getattr(self.model, "dtype", None)
        return {
            key: (value.to(device=device, dtype=dtype) if torch.is_floating_point(value) else value.to(device))
            if isinstance(value, torch.Tensor)
            else value
            for key, value in inputs.items()
        }

    def _check(self, image: Image.Image | None, question: str | None) -> str:
        if self.head is None:
            raise DemoInputError(
                f"This model ({self.model_id}) has no FastRM head, so there are no maps to stream. Restart the demo "
                "with --head (a head folder or Hub id trained for this model)."
            )
        if image is None:
            raise DemoInputError("No image: upload one, or choose a drawn scene.")
        question = (question or "").strip()
        if not question:
            raise DemoInputError("The question is empty: type a question about the image.")
        return question

    # ------------------------------------------------------------------ answering
    def answer(self, image: Image.Image | None, question: str | None, expected_answer: str | None = None):
        """Streams the answer: yields the same [`DemoAnswer`] after each new token, then once more finished (with
        its report files). Raises [`DemoInputError`] for bad input."""
        question = self._check(image, question)
        view = model_view(image, getattr(self.processor, "image_processor", None))
        state = DemoAnswer(
            question=question,
            images=[view],
            base_uris=[_data_uri(self.style.base(view), self._format(view))],
            expected_answer=expected_answer,
        )
        inputs = self._inputs(image, question)
        started = time.perf_counter()
        with (
            self._lock,
            FastRMLogitsProcessor(self.model, self.head, check_base_model=self.check_base_model) as fastrm,
        ):
            streamer = FastRMStreamer(fastrm, self.tokenizer, timeout=600)
            thread = streamer.run_in_thread(
                self.model.generate,
                **inputs,
                logits_processor=[fastrm],
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
            )
            shown = 0
            try:
                for token in streamer:
                    if token.row != 0:
                        continue
                    state.tokens.append(self._demo_token(token, view))
                    if shown and self.token_delay > 0:
                        time.sleep(self.token_delay)
                    shown += 1
                    yield state
            finally:  # also when the page goes away mid-answer: the model is free (and unhooked) only after this
                thread.join()
            outputs = attach_result(streamer.output, fastrm.result_for(streamer.output))
            streamer.close()
        state.elapsed = time.perf_counter() - started
        state.inputs, state.outputs = inputs, outputs
        state.report = ExplanationReport.from_outputs(
            outputs,
            self.tokenizer,
            prompt=question,
            prompt_length=int(inputs["input_ids"].shape[1]),
            images=[view],
            model_id=self.model_id,
            head={"id": self.head_id, "base_model": self.head.config.base_model_name_or_path},
            metadata={"max_new_tokens": self.max_new_tokens, "expected_answer": expected_answer},
        )
        state.finished = True
        self.write_reports(state)
        yield state

    def _format(self, image: Image.Image) -> str:
        width, height = self.style.base(image).size
        return "PNG" if width * height <= 300 * 300 else "JPEG"

    def _demo_token(self, token: StreamedToken, view: Image.Image) -> DemoToken:
        overlay = [_data_uri(self.style.draw(view, grid), self._format(view)) for grid in token.maps[:1]]
        return DemoToken(
            index=token.index,
            token_id=token.token_id,
            text=token.text,
            confidence=token.confidence,
            special=token.special,
            overlays={"fastrm": overlay},
        )

    def compare_with_teacher(self, state: DemoAnswer | None) -> DemoAnswer:
        """Adds the teacher's exact gradient maps for the same tokens (one backward pass per token)."""
        if state is None or not state.finished or state.report is None:
            raise DemoInputError("Ask a question first: the gradient maps explain a finished answer.")
        if state.has_teacher:
            return state
        from ..teacher import gradient_relevancy_for_outputs

        with self._lock:
            teacher = gradient_relevancy_for_outputs(self.model, state.outputs, state.inputs)
        report = state.report
        report.teacher_maps = [grid[: report.num_tokens].detach().float().cpu() for grid in teacher.relevancy_maps(0)]
        report.teacher_confidence = teacher.confidence[0, : report.num_tokens].detach().float().cpu()
        report.teacher_sequence_confidence = float(teacher.sequence_confidence[0])
        view = state.images[0]
        for token in state.tokens:
            token.overlays["teacher"] = [
                _data_uri(self.style.draw(view, report.teacher_maps[0][token.index]), self._format(view))
            ]
            token.teacher_confidence = float(report.teacher_confidence[token.index])
        self.write_reports(state)
        return state

    def write_reports(self, state: DemoAnswer) -> list[str]:
        """Writes report.html and report.json of a finished answer into a new temporary folder."""
        folder = tempfile.mkdtemp(prefix="hf-fastrm-demo-")
        paths = state.report.save(folder, style=self.style, title="FastRM demo")
        state.report_files = [paths.html, paths.json]
        return state.report_files


# ---------------------------------------------------------------------------------------------------- the viewer
VIEWER_CSS = """
.fastrm-viewer { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --accent: #2457d6; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
.fastrm-viewer .fastrm-qa div { margin: 2px 0; }
.fastrm-viewer .fastrm-label { display: inline-block; min-width: 90px; color: var(--muted); font-size: 12px;
  text-transform: uppercase; letter-spacing: .04em; }
.fastrm-viewer .fastrm-answer { font-weight: 600; }
.fastrm-viewer .fastrm-tokens { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0; min-height: 46px; }
.fastrm-viewer .fastrm-token { font-family: ui-monospace, Menlo, monospace; font-size: 14px; color: #111;
  border: 2px solid transparent; border-radius: 7px; padding: 3px 8px 2px; cursor: pointer; display: inline-flex;
  flex-direction: column; align-items: stretch; line-height: 1.2; min-width: 44px; }
.fastrm-viewer .fastrm-token small { font-size: 11px; color: #333; text-align: center; }
.fastrm-viewer .fastrm-token .fastrm-bar { height: 4px; background: #0002; border-radius: 2px; margin-top: 2px; }
.fastrm-viewer .fastrm-token .fastrm-bar i { display: block; height: 100%; background: #1d2330; border-radius: 2px; }
.fastrm-viewer .fastrm-token.fastrm-special { border-style: dashed; border-color: #9aa3b5; }
.fastrm-viewer .fastrm-token.fastrm-weak { border-color: #c62828; border-style: solid; }
.fastrm-viewer .fastrm-token.fastrm-weak small::after { content: " \u26a0"; color: #c62828; }
.fastrm-viewer .fastrm-token.fastrm-selected { border-color: var(--accent); box-shadow: 0 0 0 2px #2457d655; }
.fastrm-viewer .fastrm-panels { display: flex; flex-wrap: wrap; gap: 16px; }
.fastrm-viewer figure { margin: 0; }
.fastrm-viewer figcaption { color: var(--muted); font-size: 13px; margin-bottom: 6px; }
.fastrm-viewer img.fastrm-view { display: block; width: 224px; max-width: 100%; height: auto; border-radius: 6px;
  border: 1px solid var(--line); image-rendering: auto; }
.fastrm-viewer .fastrm-legend { display: flex; flex-wrap: wrap; gap: 18px; color: var(--muted); font-size: 12px; }
.fastrm-viewer .fastrm-scale { display: inline-block; width: 120px; height: 10px; border-radius: 3px;
  vertical-align: middle; margin: 0 6px; border: 1px solid var(--line); }
.fastrm-viewer .fastrm-meter { display: inline-block; width: 160px; height: 10px; border-radius: 3px;
  background: #e3e6ec; vertical-align: middle; margin-left: 8px; overflow: hidden; }
.fastrm-viewer .fastrm-meter i { display: block; height: 100%; }
.fastrm-viewer .fastrm-selection { font-size: 14px; margin-top: 8px; color: var(--muted); }
.fastrm-message { border-radius: 8px; padding: 10px 14px; background: #fdecea; color: #8a1c1c;
  border: 1px solid #f5c2c0; font: 15px/1.5 system-ui, sans-serif; }
.fastrm-message.fastrm-info { background: #eef3fd; color: #1d3c8a; border-color: #c9d7f5; }
"""

VIEWER_JS = """
const state = { pinned: null, hover: null };
function current() {
  if (state.hover !== null) return state.hover;
  if (state.pinned !== null) return state.pinned;
  const root = element.querySelector('.fastrm-viewer');
  return root ? root.dataset.latest : null;
}
function show() {
  const index = current();
  const chip = index === null ? null : element.querySelector('.fastrm-token[data-index="' + index + '"]');
  element.querySelectorAll('img.fastrm-view').forEach(function (img) {
    const source = chip ? chip.getAttribute('data-' + img.dataset.method) : null;
    if (source) { img.src = source; img.dataset.token = index; }
  });
  element.querySelectorAll('.fastrm-token').forEach(function (c) {
    c.classList.toggle('fastrm-selected', chip !== null && c === chip);
    c.setAttribute('aria-pressed', String(chip !== null && c === chip));
  });
  const selection = element.querySelector('.fastrm-selection');
  if (selection && chip) { selection.textContent = chip.getAttribute('title'); }
}
element.addEventListener('click', function (event) {
  const chip = event.target.closest('.fastrm-token');
  if (!chip) return;
  state.pinned = chip.dataset.index;
  state.hover = null;
  show();
});
element.addEventListener('mouseover', function (event) {
  const chip = event.target.closest('.fastrm-token');
  if (!chip) return;
  state.hover = chip.dataset.index;
  show();
});
element.addEventListener('mouseout', function (event) {
  const chip = event.target.closest('.fastrm-token');
  if (!chip) return;
  state.hover = null;
  show();
});
watch('value', function () {
  const root = element.querySelector('.fastrm-viewer');
  if (root && root.dataset.fresh === 'true') { state.pinned = null; }
  show();
});
"""


def _esc(text: str) -> str:
    """HTML-escaped, with the characters Gradio's template engine reads (``{``, ``}``, ``$``, backtick) as entities."""
    return (
        html.escape(text, quote=True)
        .replace("{", "&#123;")
        .replace("}", "&#125;")
        .replace("$", "&#36;")
        .replace("`", "&#96;")
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def message_html(text: str, kind: str = "error") -> str:
    """A message box for the page (``kind``: ``"error"`` or ``"info"``)."""
    extra = " fastrm-info" if kind == "info" else ""
    return f'<div class="fastrm-message{extra}" role="status">{_esc(text)}</div>'


def render_viewer(
    state: DemoAnswer | None, threshold: float = DEFAULT_THRESHOLD, style: OverlayStyle | None = None
) -> str:
    """The viewer: question, streamed answer, token chips (colour and bar: confidence; red outline: below
    `threshold`), and the chosen token's map over the image (the teacher's beside it once computed)."""
    style = style or OverlayStyle()
    if state is None:
        return (
            '<div class="fastrm-viewer" data-latest="" data-fresh="true" data-tokens="0">'
            '<p class="fastrm-selection">Choose a scene or upload an image, type a question and press Ask: the '
            "answer streams token by token with each token's relevancy map over the image.</p></div>"
        )
    latest = state.tokens[-1].index if state.tokens else None
    shown = next((t for t in state.tokens if t.index == latest), None)
    chips = []
    for token in state.tokens:
        weak = math.isfinite(token.confidence) and token.confidence < threshold and not token.special
        value = token.confidence if math.isfinite(token.confidence) else 0.0
        title = (
            f"token {token.index} \u201c{token.text}\u201d (id {token.token_id}): confidence {_fmt(token.confidence)}"
        )
        if token.teacher_confidence is not None:
            title += f", gradient {_fmt(token.teacher_confidence)}"
        if weak:
            title += f" \u2014 weakly grounded (below {threshold:.2f})"
        if token.special:
            title += " \u2014 special token, not counted in the answer's confidence"
        sources = "".join(f' data-{method}="{uris[0]}"' for method, uris in token.overlays.items())
        classes = "fastrm-token" + (" fastrm-special" if token.special else "") + (" fastrm-weak" if weak else "")
        chips.append(
            f'<button type="button" class="{classes}" data-index="{token.index}" aria-pressed="false"'
            f' style="background: {_confidence_colour(token.confidence)}" title="{_esc(title)}"{sources}>'
            f"<span>{_esc(_display_text(token.text))}</span><small>{_fmt(token.confidence)}</small>"
            f'<span class="fastrm-bar"><i style="width: {100 * value:.0f}%"></i></span></button>'
        )
    panels = []
    methods = [("fastrm", "FastRM (streamed)")] + (
        [("teacher", "Gradient relevancy (exact)")] if state.has_teacher else []
    )
    for method, caption in methods:
        source = shown.overlays[method][0] if shown is not None else state.base_uris[0]
        panels.append(
            f'<figure><figcaption>{caption}</figcaption><img class="fastrm-view" data-method="{method}" '
            f'data-token="{"" if latest is None else latest}" alt="{caption} relevancy map" src="{source}"></figure>'
        )
    panels.append(
        f'<figure><figcaption>Image as the model sees it</figcaption><img class="fastrm-image" alt="image" '
        f'src="{state.base_uris[0]}" style="width: 224px; max-width: 100%; border-radius: 6px; '
        f'border: 1px solid #d9dee7"></figure>'
    )
    sequence = state.sequence_confidence
    meter = (
        f'<span class="fastrm-meter" title="answer confidence"><i style="width: {100 * sequence:.0f}%; '
        f'background: {_confidence_colour(sequence)}"></i></span>'
        if sequence is not None
        else ""
    )
    status = "finished" if state.finished else "streaming\u2026"
    if state.finished and state.elapsed is not None:
        status += f" in {state.elapsed:.2f} s"
    teacher_sequence = ""
    if state.has_teacher and state.report is not None:
        teacher_sequence = f" (gradient {_fmt(state.report.teacher_sequence_confidence)})"
    expected = ""
    if state.expected_answer:
        expected = f'<div><span class="fastrm-label">Expected</span> {_esc(state.expected_answer)}</div>'
    weak_count = sum(
        1 for t in state.tokens if not t.special and math.isfinite(t.confidence) and t.confidence < threshold
    )
    return (
        f'<div class="fastrm-viewer" data-latest="{"" if latest is None else latest}" '
        f'data-tokens="{len(state.tokens)}" data-finished="{str(state.finished).lower()}" '
        f'data-fresh="{str(len(state.tokens) <= 1 and not state.finished).lower()}" '
        f'data-teacher="{str(state.has_teacher).lower()}">'
        '<div class="fastrm-qa">'
        f'<div><span class="fastrm-label">Question</span> {_esc(state.question)}</div>'
        f'<div><span class="fastrm-label">Answer</span> <span class="fastrm-answer">{_esc(state.answer_text)}</span>'
        f" <small>({status})</small></div>{expected}"
        f'<div><span class="fastrm-label">Confidence</span> <span class="fastrm-sequence">{_fmt(sequence)}</span>'
        f"{teacher_sequence}{meter} <small>(mean over the answer's non-special tokens; "
        f"{weak_count} below {threshold:.2f})</small></div></div>"
        f'<div class="fastrm-tokens" role="toolbar" aria-label="answer tokens">{"".join(chips)}</div>'
        '<div class="fastrm-legend"><span>token confidence 0<span class="fastrm-scale" style="background: '
        'linear-gradient(to right, hsl(0, 75%, 78%), hsl(60, 75%, 78%), hsl(120, 75%, 78%))"></span>1</span>'
        f'<span>relevance low<span class="fastrm-scale" style="background: {colormap_css_gradient(style.colormap)}">'
        "</span>high</span><span>red outline: weakly grounded (below the threshold)</span></div>"
        f'<div class="fastrm-panels">{"".join(panels)}</div>'
        '<div class="fastrm-selection" aria-live="polite">Hover or click a token to see its map.</div></div>'
    )
