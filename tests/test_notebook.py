"""Inline display for Jupyter: the report's `_repr_html_` (image, tokens, one map per token, no script), a bare
result's (confidences and grid maps), `show()` adding the image, and matplotlib plots."""

from __future__ import annotations

import re

import pytest
import torch

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.testing_utils import tiny_llava_inputs
from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
from hf_fastrm.toy.modeling import format_prompt
from hf_fastrm.toy.scenes import make_examples


@pytest.fixture(scope="module")
def toy():
    model, processor, head = load_default_model(), load_default_processor(), load_default_head()
    scene, question = make_examples(1, seed="docs")[0]
    inputs = processor(images=scene.image, text=format_prompt(question.text), return_tensors="pt")
    out = FastRMWrapper(model, head).generate(**inputs, max_new_tokens=4, do_sample=False, return_relevancy=True)
    return out, scene, question, processor


def test_report_renders_image_tokens_and_a_map_per_token(toy):
    out, scene, question, processor = toy
    report = out.show(scene.image, processor, prompt=question.text)
    page = report._repr_html_()
    assert "<script" not in page  # notebook front ends drop scripts: token choice is CSS only
    assert question.text in page and f"<b>{report.answer}</b>" in page
    uid = re.search(r'id="(fastrm-nb-\d+)"', page).group(1)
    assert len(re.findall(rf'<input type="radio" class="fastrm-nb-radio" name="{uid}"', page)) == report.num_tokens
    assert len(re.findall(r'<label for="fastrm-nb-\d+-t\d+" class="fastrm-nb-token', page)) == report.num_tokens
    # One overlay per token (one image), each a different picture (different maps).
    overlays = re.findall(r'<img alt="FastRM map of token \d+" src="(data:image/png;base64,[^"]+)"', page)
    assert len(overlays) == report.num_tokens and len(set(overlays)) == report.num_tokens
    # The first token is chosen and a CSS rule shows each token's panel when its chip is chosen.
    assert re.search(rf'id="{uid}-t0" checked', page)
    assert all(f"#{uid}-t{i}:checked ~ .fastrm-nb-panels .fastrm-nb-p{i}" in page for i in range(report.num_tokens))
    # The confidences shown are the report's.
    shown = re.findall(r"<small>([0-9.]+)</small></label>", page)
    assert shown == [f"{value:.2f}" for value in report.confidence.tolist()]


def test_bare_result_renders_confidences_and_grid_maps(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        out = llava.generate(**inputs, logits_processor=[fastrm], max_new_tokens=3, do_sample=False)
        result = fastrm.result_for(out)
    page = result._repr_html_()
    assert page.count("row ") == 2 and "FastRMResult" in page
    assert len(re.findall(r'<img alt="map"', page)) == int(result.token_mask.sum())
    for value in result.sequence_confidence.tolist():
        assert f"sequence confidence {value:.2f}" in page
    with pytest.raises(ValueError, match="sequences"):
        result.show([], None)


def test_plot_draws_one_panel_per_token(toy):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    out, scene, question, processor = toy
    report = out.show(scene.image, processor, prompt=question.text)
    figure = report.plot()
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert len(titles) == report.num_tokens
    assert titles[0].endswith(f"{report.confidence[0]:.2f}")
    figure = out.plot(image=scene.image, tokens=[0])
    assert [axis.get_title() for axis in figure.axes if axis.get_title()] == [f"#0\n{out.confidence[0, 0]:.2f}"]
    assert figure.axes[0].images[0].get_array().shape[:2] == (192, 192)  # the 48 px scene enlarged, map over it
    matplotlib.pyplot.close("all")
    assert torch.isfinite(out.confidence[0, 0])
