"""The HTML report in a real headless Chromium: it loads without errors or network requests, and choosing a token
changes the map shown. Chromium comes from Debian (tests/browser/setup.sh, run by .ci/run)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from browser_harness import BROWSER_MARKS, cdp
from PIL import Image, ImageDraw

from hf_fastrm.testing_utils import tiny_head, tiny_llava, tiny_llava_processor
from hf_fastrm.viz import explain

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model = tiny_llava(seed=0)
    image = Image.new("RGB", (40, 32), (225, 225, 225))
    ImageDraw.Draw(image).ellipse((6, 6, 20, 20), fill=(220, 30, 30))
    return explain(
        model,
        tiny_llava_processor(),
        image,
        "what colour is the circle ?",
        head=tiny_head(model),
        output_dir=tmp_path_factory.mktemp("browser-report"),
        max_new_tokens=5,
        min_new_tokens=4,
    )


@pytest.fixture(scope="module")
def page(report):
    with cdp.HeadlessChromium() as browser:
        page = browser.new_page()
        page.navigate(Path(report.paths.html).as_uri())
        yield page


def _report_data(page) -> dict:
    return json.loads(page.evaluate("document.getElementById('report-data').textContent"))


def _view(page) -> dict:
    return page.evaluate(
        "(() => { const v = document.querySelector('img.view');"
        " return {src: v.src, token: v.dataset.token, complete: v.complete, width: v.naturalWidth}; })()"
    )


def test_report_loads_without_errors_or_network(page, report):
    assert page.errors() == [], page.browser.browser_log()
    urls = page.requested_urls()
    assert urls and urls[0].startswith("file://")
    assert all(url.startswith(("file://", "data:")) for url in urls), urls
    assert page.evaluate("document.querySelectorAll('#tokens .token[data-index]').length") == report.num_tokens + 1
    view = _view(page)
    assert view["complete"] and view["width"] == 256  # the inline image decoded
    assert page.evaluate("document.getElementById('answer').textContent") == report.answer


def test_clicking_a_token_shows_its_map(page, report):
    data = _report_data(page)
    overlays = data["overlays"]["fastrm"]
    assert len(overlays) == report.num_tokens
    first = _view(page)
    assert first["token"] == str(data["initialToken"])
    assert first["src"] == overlays[data["initialToken"]][0]
    # Choose a token whose picture differs from the one shown (different maps give different overlays).
    target = next(i for i in range(report.num_tokens) if overlays[i][0] != first["src"])
    page.evaluate(f"document.querySelector('#tokens .token[data-index=\"{target}\"]').click()")
    after = _view(page)
    assert after["token"] == str(target) and after["src"] == overlays[target][0] != first["src"]
    pressed = page.evaluate(
        "Array.from(document.querySelectorAll('.token[aria-pressed=\"true\"]'), b => b.dataset.index)"
    )
    assert pressed == [str(target)]
    selection = page.evaluate("document.getElementById('selection').textContent")
    assert re.search(rf"Token {target}\b.*confidence", selection)
    # The "image" button shows the picture without a map.
    page.evaluate("document.querySelector('#tokens .token[data-index=\"-1\"]').click()")
    assert _view(page)["src"] == data["images"][0]
    # Arrow keys move to the next token.
    page.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "ArrowRight", "code": "ArrowRight"})
    assert _view(page)["src"] == overlays[0][0]
    assert page.errors() == []


def test_screenshot_shows_the_page(page, tmp_path):
    path = page.screenshot(str(tmp_path / "report.png"))
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width >= 600 and height >= 400
    with Image.open(path) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # more than a blank page
