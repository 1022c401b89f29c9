"""The demo without a browser: the engine streams, writes reports and adds the teacher; bad input gives messages (in
the page's handlers too, never a traceback); importing the command loads neither gradio nor matplotlib."""

from __future__ import annotations

import html
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hf_fastrm.commands.explain import scene_and_question
from hf_fastrm.demo.engine import DemoEngine, DemoInputError, read_image, render_viewer
from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
from hf_fastrm.toy.modeling import format_prompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine():
    return DemoEngine(
        load_default_model(),
        load_default_processor(),
        load_default_head(),
        model_id="toy",
        prompt_builder=format_prompt,
    )


def test_engine_streams_token_by_token_and_writes_the_report(engine):
    scene, question = scene_and_question(5)
    counts, finished = [], []
    for state in engine.answer(scene.image, question.text, expected_answer=question.answer):
        counts.append(len(state.tokens))
        finished.append(state.finished)
    # One update per token (1, 2, ...), then the finished answer.
    assert counts[:-1] == list(range(1, len(counts))) and counts[-1] == counts[-2] and finished[-1]
    assert not any(finished[:-1])
    report = state.report
    assert [t.token_id for t in state.tokens] == report.token_ids
    for token, confidence in zip(state.tokens, report.confidence.tolist(), strict=True):
        assert math.isclose(token.confidence, confidence, rel_tol=1e-5)  # streamed vs finished result (float32)
    html_path, json_path = state.report_files
    assert os.path.isfile(html_path) and json.loads(Path(json_path).read_text())["answer"] == report.answer
    assert state.answer_text == report.answer
    page = render_viewer(state, threshold=1.0)
    # Every token is below a threshold of 1: every non-special token is flagged.
    flagged = page.count("fastrm-token fastrm-weak") + page.count("fastrm-special fastrm-weak")
    assert flagged == sum(not t.special for t in state.tokens)
    assert render_viewer(state, threshold=0.0).count('fastrm-weak"') == 0

    with_teacher = engine.compare_with_teacher(state)
    assert with_teacher.has_teacher and all(t.teacher_confidence is not None for t in state.tokens)
    assert json.loads(Path(state.report_files[1]).read_text())["teacher"] is not None
    assert 'data-method="teacher"' in render_viewer(with_teacher)


def test_bad_input_gets_messages(engine, tmp_path):
    with pytest.raises(DemoInputError, match="No image"):
        read_image(None)
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("hello")
    with pytest.raises(DemoInputError, match="'photo.png' is not an image"):
        read_image(str(not_an_image))
    image = Image.new("RGB", (48, 48), "white")
    with pytest.raises(DemoInputError, match="question is empty"):
        next(engine.answer(image, "   "))
    with pytest.raises(DemoInputError, match="No image"):
        next(engine.answer(None, "what colour is the circle ?"))
    with pytest.raises(DemoInputError, match="Ask a question first"):
        engine.compare_with_teacher(None)
    headless = DemoEngine(engine.model, engine.processor, None, model_id="some/model")
    with pytest.raises(DemoInputError, match="no FastRM head.*--head"):
        next(headless.answer(image, "what colour is the circle ?"))


@pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None, reason='gradio is not installed: pip install ".[demo]"'
)
def test_page_handlers_answer_with_messages_not_tracebacks(engine, tmp_path):
    from hf_fastrm.demo.app import SOURCE_SCENE, SOURCE_UPLOAD, build_demo

    demo = build_demo(engine)
    handlers = {fn.fn.__name__: fn.fn for fn in demo.fns.values()}
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    _, message, state, *_ = next(handlers["ask"](SOURCE_UPLOAD, 0, str(broken), "what is it ?", 0.3))
    message = html.unescape(message)
    assert "'broken.jpg' is not an image" in message and state is None and "Traceback" not in message
    _, message, state, *_ = next(handlers["ask"](SOURCE_UPLOAD, 0, None, "what is it ?", 0.3))
    assert "No image" in message
    answering = handlers["ask"](SOURCE_SCENE, 2, None, scene_and_question(2)[1].text, 0.3)
    first = next(answering)
    answering.close()  # as when the page is closed mid-answer: the engine's lock and hooks are released
    assert first[1] == "" and len(first[2].tokens) == 1  # the first streamed token, no message
    _, message, *_ = handlers["compare"](None, 0.3)
    assert "Ask a question first" in message


def test_commands_import_neither_gradio_nor_matplotlib():
    """`hf-fastrm demo --help` (and importing the package, the streamer and the demo's engine) loads neither."""
    code = (
        "import sys, hf_fastrm, hf_fastrm.streaming, hf_fastrm.demo, hf_fastrm.cli\n"
        "parser = hf_fastrm.cli.build_parser()\n"
        "demo = parser._subparsers._group_actions[0].choices['demo']\n"
        "print(demo.format_help())\n"
        "print('loaded:', sorted(m for m in ('gradio', 'matplotlib') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded: []" in run.stdout
    assert "--port" in run.stdout and "--share" in run.stdout and "hf_fastrm[demo]" in run.stdout
