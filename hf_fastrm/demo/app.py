"""The Gradio page of `hf-fastrm demo` (imports gradio: load this module only when the demo runs)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry: before gradio is imported

from typing import Any

import gradio as gr
from transformers.utils import logging

from .engine import (
    DEFAULT_THRESHOLD,
    VIEWER_CSS,
    VIEWER_JS,
    DemoAnswer,
    DemoEngine,
    DemoInputError,
    message_html,
    read_image,
    render_viewer,
)

logger = logging.get_logger(__name__)

SOURCE_SCENE = "Drawn scene"
SOURCE_UPLOAD = "Upload an image"


def scene_and_question(seed: int):
    """The drawn scene of `seed` and a question about it (those of ``hf-fastrm explain --seed``)."""
    from ..commands.explain import scene_and_question as draw

    return draw(int(seed))


def build_demo(engine: DemoEngine, *, title: str = "hf_fastrm: live relevancy maps") -> gr.Blocks:
    """The page: image source (a drawn scene by seed, or an upload), question, Ask, the streaming viewer, the
    weak-grounding threshold, the gradient comparison and the report download."""

    def scene_preview(seed: float | None):
        try:
            scene, question = scene_and_question(int(seed or 0))
        except (TypeError, ValueError):
            return None, ""
        return _enlarged(scene.image), question.text

    def pick_image(source: str, seed: float | None, upload: str | None):
        """(image, expected answer) of the chosen source, or a DemoInputError."""
        if source == SOURCE_UPLOAD:
            return read_image(upload), None
        scene, question = scene_and_question(int(seed or 0))
        return scene.image, question.answer

    def ask(source, seed, upload, question, threshold):
        no_files = gr.update(value=None)
        try:
            image, expected = pick_image(source, seed, upload)
            if source == SOURCE_SCENE:
                _, scene_question = scene_and_question(int(seed or 0))
                if (question or "").strip() != scene_question.text:
                    expected = None  # the scene's answer belongs to its own question
            stream = engine.answer(image, question, expected_answer=expected)
            state: DemoAnswer | None = None
            for state in stream:
                files = state.report_files if state.finished else None
                yield (
                    render_viewer(state, threshold, engine.style),
                    "",
                    state,
                    gr.update(value=files) if files else no_files,
                    gr.update(interactive=state.finished),
                )
        except DemoInputError as error:
            yield render_viewer(None), message_html(str(error)), None, no_files, gr.update(interactive=False)
        except Exception as error:  # never a stack trace in the page; the log has it
            logger.error("The demo failed to answer: %s", error, exc_info=True)
            yield (
                render_viewer(None),
                message_html(f"Could not answer ({type(error).__name__}: {error})."),
                None,
                no_files,
                gr.update(interactive=False),
            )

    def compare(state, threshold):
        try:
            state = engine.compare_with_teacher(state)
            note = message_html(
                "Gradient relevancy maps (the exact teacher, one backward pass per token) are beside FastRM's; the "
                "report files now hold both.",
                kind="info",
            )
            return render_viewer(state, threshold, engine.style), note, state, gr.update(value=state.report_files)
        except DemoInputError as error:
            return render_viewer(state, threshold, engine.style), message_html(str(error)), state, gr.update()
        except Exception as error:
            logger.error("The gradient maps failed: %s", error, exc_info=True)
            return (
                render_viewer(state, threshold, engine.style),
                message_html(f"Could not compute the gradient maps ({type(error).__name__}: {error})."),
                state,
                gr.update(),
            )

    def rethreshold(state, threshold):
        return render_viewer(state, threshold, engine.style)

    def toggle_source(source):
        scene = source == SOURCE_SCENE
        return gr.update(visible=scene), gr.update(visible=not scene)

    first_image, first_question = scene_preview(0)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.HTML(
            f"<h2 style='margin: 4px 0'>{title}</h2><p style='margin: 0; color: #5b6475'>model: {engine.model_id} "
            f"&middot; head: {engine.head_id or 'none'} &middot; FastRM maps stream with the tokens; the exact "
            "gradient maps on demand.</p>",
            js_on_load=None,
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                source = gr.Radio([SOURCE_SCENE, SOURCE_UPLOAD], value=SOURCE_SCENE, label="Image", elem_id="source")
                seed = gr.Number(value=0, precision=0, label="Scene seed", elem_id="scene-seed")
                upload = gr.File(
                    label="Image file", file_types=["image"], type="filepath", visible=False, elem_id="upload"
                )
                preview = gr.Image(
                    value=first_image, label="Scene", interactive=False, height=220, elem_id="preview",
                    buttons=[],
                )  # fmt: skip
                question = gr.Textbox(value=first_question, label="Question", lines=1, elem_id="question")
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                threshold = gr.Slider(
                    0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Flag tokens with confidence below",
                    elem_id="threshold",
                )  # fmt: skip
                teacher_button = gr.Button(
                    "Compare with the exact gradient maps", interactive=False, elem_id="teacher"
                )
                files = gr.File(label="Report (HTML and JSON)", file_count="multiple", interactive=False,
                                elem_id="report-files")  # fmt: skip
            with gr.Column(scale=2, min_width=420):
                message = gr.HTML("", elem_id="message", js_on_load=None)
                viewer = gr.HTML(
                    render_viewer(None),
                    elem_id="viewer",
                    css_template=VIEWER_CSS,
                    js_on_load=VIEWER_JS,
                    apply_default_css=False,
                )
        source.change(toggle_source, source, [seed, upload], queue=False)
        seed.change(scene_preview, seed, [preview, question], queue=False)
        upload.change(
            lambda path: _upload_preview(path), upload, [preview, message], queue=False
        )  # shows the upload, or says why it cannot
        ask_button.click(
            ask,
            [source, seed, upload, question, threshold],
            [viewer, message, state, files, teacher_button],
            concurrency_limit=1,
        )
        question.submit(
            ask,
            [source, seed, upload, question, threshold],
            [viewer, message, state, files, teacher_button],
            concurrency_limit=1,
        )
        teacher_button.click(compare, [state, threshold], [viewer, message, state, files], concurrency_limit=1)
        threshold.change(rethreshold, [state, threshold], viewer, queue=False)
    return demo


def _enlarged(image, side: int = 200):
    """Small pictures (the 48 px drawn scenes) enlarged by a whole factor, pixels kept sharp, for the preview."""
    factor = max(1, side // max(image.size))
    return image.resize((image.size[0] * factor, image.size[1] * factor), resample=0) if factor > 1 else image


def _upload_preview(path: str | None) -> tuple[Any, str]:
    if not path:
        return None, ""
    try:
        return read_image(path), ""
    except DemoInputError as error:
        return None, message_html(str(error))


def theme() -> gr.themes.Base:
    """Gradio's default theme with the system's fonts (the default loads fonts from Google: none offline)."""
    return gr.themes.Default(
        font=["system-ui", "-apple-system", "Segoe UI", "sans-serif"],
        font_mono=["ui-monospace", "Menlo", "monospace"],
    )


def launch(demo: gr.Blocks, *, port: int | None = None, host: str = "127.0.0.1", share: bool = False, **kwargs):
    """Starts the server (blocking unless ``prevent_thread_lock=True``); no share link unless asked."""
    return demo.queue().launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=theme(),
        ssr_mode=False,
        footer_links=[],
        show_error=False,
        **kwargs,
    )
