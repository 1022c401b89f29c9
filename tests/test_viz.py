"""Pictures and reports: overlays, per-token PNGs, the self-contained HTML page, the JSON file, `explain()` and the
`hf-fastrm explain` command, on tiny models built from configs."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hf_fastrm import FastRMWrapper
from hf_fastrm.cli import main as cli_main
from hf_fastrm.testing_utils import TINY_EOS_TOKEN_ID, tiny_head, tiny_llava, tiny_llava_processor
from hf_fastrm.viz import (
    ExplanationReport,
    build_prompt,
    explain,
    heatmap_rgba,
    load_json_report,
    model_view,
    overlay,
    upsample_grid,
)

PROMPT = "what colour is the circle ?"


def _scene(width: int = 40, height: int = 32) -> Image.Image:
    image = Image.new("RGB", (width, height), (225, 225, 225))
    ImageDraw.Draw(image).ellipse((6, 6, 20, 20), fill=(220, 30, 30))
    return image


@pytest.fixture(scope="module")
def model():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def processor():
    return tiny_llava_processor()


@pytest.fixture(scope="module")
def head(model):
    return tiny_head(model)


@pytest.fixture(scope="module")
def report(model, processor, head, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("report")
    return explain(
        model, processor, _scene(), PROMPT, head=head, output_dir=output_dir, max_new_tokens=6, min_new_tokens=4
    )


def _equal_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality with NaN equal to NaN: only for values copied, sliced or serialised without arithmetic, or
    recomputed by the same model in the same process (same kernels, same thread count). Values computed by another
    copy of a model, another process or on another machine need a tolerance (`torch.testing.assert_close`)."""
    return (
        a.shape == b.shape
        and torch.equal(torch.isnan(a), torch.isnan(b))
        and torch.equal(a.nan_to_num(), b.nan_to_num())
    )


# ---------------------------------------------------------------------------------------------------- overlays
def test_upsampling_without_nan_is_standard_bilinear():
    grid = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values, coverage = upsample_grid(grid, (20, 12))
    reference = torch.nn.functional.interpolate(grid[None, None], size=(12, 20), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(values, reference[0, 0].numpy(), atol=1e-12)
    assert np.all(coverage == 1.0)


def test_overlay_size_and_enlarging():
    image = _scene(40, 30)
    grid = torch.rand(3, 4)
    assert overlay(image, grid).size == (40, 30)
    assert overlay(image, grid).mode == "RGB"
    assert overlay(image, grid, min_size=256).size == (280, 210)  # whole factor 7 keeps pixels square
    assert overlay(image, grid, size=(64, 48)).size == (64, 48)
    assert overlay(image, grid, max_size=20).size == (20, 15)


def test_overlay_nan_cells_are_transparent():
    image = _scene(64, 64)
    grid = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    grid[0, 0] = math.nan
    layer = np.asarray(heatmap_rgba(grid, (64, 64), alpha=0.6))
    assert np.all(layer[:16, :16, 3] == 0)  # the NaN cell, wholly
    assert np.all(layer[16:, :, 3] == round(0.6 * 255)) and np.all(layer[:, 16:, 3] == round(0.6 * 255))
    drawn = np.asarray(overlay(image, grid, alpha=0.6))
    np.testing.assert_array_equal(drawn[:16, :16], np.asarray(image)[:16, :16])
    assert not np.array_equal(drawn[40, 40], np.asarray(image)[40, 40])
    # Nothing to draw: the image comes back unchanged.
    np.testing.assert_array_equal(np.asarray(overlay(image, torch.full((4, 4), math.nan))), np.asarray(image))


def test_overlay_colours_follow_relevance():
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    grid = torch.zeros(4, 4)
    grid[3, 3] = 1.0
    drawn = np.asarray(overlay(image, grid, alpha=1.0, colormap="jet")).astype(int)
    hot, cold = drawn[28, 28], drawn[2, 2]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: high is red, low is blue
    # Min-max normalisation: scaling a map does not change its picture; without it, it does.
    np.testing.assert_array_equal(np.asarray(overlay(image, grid * 0.1)), np.asarray(overlay(image, grid)))
    assert not np.array_equal(
        np.asarray(overlay(image, grid * 0.1, normalize=False)), np.asarray(overlay(image, grid, normalize=False))
    )


def test_overlay_refuses_bad_input():
    image = _scene()
    with pytest.raises(ValueError, match="height, width"):
        overlay(image, torch.rand(16))
    with pytest.raises(ValueError, match="colour map"):
        overlay(image, torch.rand(2, 2), colormap="rainbow-unicorn")
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, torch.rand(2, 2), alpha=1.5)


# ---------------------------------------------------------------------------------------------------- explain()
def test_explain_matches_plain_generation(model, processor, head, report):
    # Same tokens as the model alone, greedy.
    inputs = processor(images=[_scene()], text=build_prompt(processor, PROMPT, 1), return_tensors="pt")
    plain = model.generate(**inputs, max_new_tokens=6, min_new_tokens=4, do_sample=False)
    new_tokens = plain[0, inputs["input_ids"].shape[1] :].tolist()
    if TINY_EOS_TOKEN_ID in new_tokens:
        new_tokens = new_tokens[: new_tokens.index(TINY_EOS_TOKEN_ID) + 1]
    assert report.token_ids == new_tokens
    assert len(report.tokens) == report.num_tokens >= 4
    assert report.answer == processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    assert "".join(report.tokens) == processor.tokenizer.decode(new_tokens, clean_up_tokenization_spaces=False)
    # Maps and confidence are those of the wrapper's output.
    outputs = report.outputs
    assert _equal_nan(report.maps[0], outputs.relevancy_maps(0)[0][: report.num_tokens].float())
    assert _equal_nan(report.confidence, outputs.confidence[0, : report.num_tokens].float())
    assert report.sequence_confidence == pytest.approx(float(outputs.sequence_confidence[0]))
    assert report.maps[0].shape == (report.num_tokens, 4, 4)
    assert report.images[0].size == (32, 32)  # the centre crop the CLIP processor showed the model


def test_explain_accepts_a_wrapper(model, processor, head, report):
    again = explain(FastRMWrapper(model, head), processor, _scene(), PROMPT, max_new_tokens=6, min_new_tokens=4)
    assert again.token_ids == report.token_ids
    assert _equal_nan(again.maps[0], report.maps[0])
    assert again.paths is None  # nothing written without output_dir


def test_model_view_is_the_processors_centre_crop(processor):
    rows, cols = np.mgrid[0:30, 0:40]
    smooth = np.stack([rows * 8, cols * 6, (rows + cols) * 3], axis=-1).astype(np.uint8)
    image = Image.fromarray(smooth)
    view = model_view(image, processor.image_processor)
    assert view.size == (30, 30)
    np.testing.assert_array_equal(np.asarray(view), np.asarray(image)[:, 5:35])
    # The crop resized to the model's input is what the processor feeds the model (up to resampling).
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    again = processor.image_processor(images=[view], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(again, pixels, atol=0.1, rtol=0)


def test_build_prompt(processor):
    assert build_prompt(processor, PROMPT, 2) == "<image><image>\n" + PROMPT
    assert build_prompt(processor, "<image> " + PROMPT, 1) == "<image> " + PROMPT
    templated = tiny_llava_processor(
        chat_template="{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %} {{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ."
    )
    assert build_prompt(templated, PROMPT, 1) == "<image> " + PROMPT + " ."


def test_two_images_give_two_grids(model, processor, head, tmp_path):
    second = _scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    report = explain(
        model,
        processor,
        [_scene(), second],
        PROMPT,
        head=head,
        output_dir=tmp_path,
        max_new_tokens=3,
        min_new_tokens=3,
    )
    assert report.num_grids == 2 and report.grid_images == [0, 1]
    assert [len(row) for row in report.paths.overlays] == [2] * report.num_tokens
    names = [os.path.basename(path) for path in report.paths.overlays[0]]
    assert names[0] != names[1] and all(name.startswith("token_00_") for name in names)
    # The two grids hold different maps (different image tokens), and each is the slice of the flat relevancy.
    flat = report.outputs.relevancy[0, : report.num_tokens]
    assert _equal_nan(report.maps[0].flatten(1), flat[:, :16]) and _equal_nan(
        report.maps[1].flatten(1), flat[:, 16:32]
    )


def test_llava_next_tiles_and_base_grids_lie_over_the_whole_image(tmp_path):
    """LLaVA-NeXT gives two grids per image (the base view and the tiles); both are drawn over the whole image."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from hf_fastrm.testing_utils import TINY_IMAGE_TOKEN_ID, tiny_llava_config

    pinpoints = [[8, 16], [16, 8], [16, 16]]
    base = tiny_llava_config()
    config = LlavaNextConfig(
        vision_config=base.vision_config,
        text_config=base.text_config,
        image_token_index=TINY_IMAGE_TOKEN_ID,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
    )
    config._name_or_path = "hf-fastrm/tiny-llava-next"
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tiny_llava_processor().tokenizer,
        patch_size=2,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    image = _scene(30, 10)
    report = explain(
        model, processor, image, PROMPT, head=tiny_head(model), output_dir=tmp_path, max_new_tokens=2, min_new_tokens=2
    )
    assert report.grid_labels == ["image 0 base", "image 0 tiles"] and report.grid_images == [0, 0]
    assert report.images[0].size == image.size  # any-resolution: no crop
    assert report.maps[0].shape[1:] == (4, 4) and report.maps[1].shape[1] < report.maps[1].shape[2]
    names = [os.path.basename(path) for path in report.paths.overlays[0]]
    assert names == [
        f"{names[0].split('_image')[0]}_image-0-base.png",
        f"{names[0].split('_image')[0]}_image-0-tiles.png",
    ]
    data = _html_data(Path(report.paths.html).read_text(encoding="utf-8"))
    assert [len(row) for row in data["overlays"]["fastrm"]] == [2] * report.num_tokens


def test_video_grids_are_kept_in_json_but_not_drawn(report, tmp_path):
    video = torch.rand(report.num_tokens, 2, 3, 3)
    mixed = ExplanationReport(
        prompt=PROMPT,
        answer=report.answer,
        token_ids=report.token_ids,
        tokens=report.tokens,
        special=report.special,
        confidence=report.confidence,
        sequence_confidence=report.sequence_confidence,
        maps=[video, report.maps[0]],
        grid_labels=["video 0", "image 0"],
        images=report.images,
    )
    assert mixed.grid_images == [-1, 0] and mixed.drawn_grids == [1]
    paths = mixed.save(tmp_path)
    assert all(len(row) == 1 for row in paths.overlays)
    data = _html_data(Path(paths.html).read_text(encoding="utf-8"))
    assert [len(row) for row in data["overlays"]["fastrm"]] == [1] * report.num_tokens
    loaded = load_json_report(paths.json)
    assert loaded.grid_labels == ["video 0", "image 0"] and loaded.grid_images == [-1, 0]
    assert _equal_nan(loaded.maps[0], video) and _equal_nan(loaded.maps[1], report.maps[0])


# ---------------------------------------------------------------------------------------------------- files
def test_one_png_per_token(report):
    paths = report.paths
    assert len(paths.overlays) == report.num_tokens and all(len(row) == 1 for row in paths.overlays)
    assert len({row[0] for row in paths.overlays}) == report.num_tokens
    for index, (path,) in enumerate(paths.overlays):
        assert os.path.basename(path).startswith(f"token_{index:02d}_")
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size == (256, 256)  # 32 px crop enlarged 8x
        expected = np.asarray(report_style_draw(report, index))
        with Image.open(path) as png:
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")), expected)


def report_style_draw(report: ExplanationReport, index: int) -> Image.Image:
    from hf_fastrm.viz import OverlayStyle

    return OverlayStyle().draw(report.images[0], report.maps[0][index])


def _html_data(html_text: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html_text, re.S)
    assert match, "the report data block is missing"
    return json.loads(match.group(1))


def test_html_is_self_contained(report):
    html_text = Path(report.paths.html).read_text(encoding="utf-8")
    assert not re.search(
        r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|\bsrc=\"(?!data:)|\bhref=|@import|url\(", html_text, re.I
    )
    assert "Content-Security-Policy" in html_text and "default-src 'none'" in html_text
    data = _html_data(html_text)
    overlays = data["overlays"]["fastrm"]
    assert len(overlays) == report.num_tokens and all(len(row) == 1 for row in overlays)
    assert all(uri.startswith("data:image/png;base64,") for row in overlays for uri in row)
    assert len(re.findall(r'class="token[^"]*" data-index="\d+"', html_text)) == report.num_tokens
    assert [token["text"] for token in data["tokens"]] == report.tokens
    assert "teacher" not in data["overlays"] and 'data-method="teacher"' not in html_text
    # Each token's inline overlay is the same picture as its PNG file.
    import base64
    import io

    for index, (path,) in enumerate(report.paths.overlays):
        inline = Image.open(io.BytesIO(base64.b64decode(overlays[index][0].split(",", 1)[1]))).convert("RGB")
        with Image.open(path) as png:
            np.testing.assert_array_equal(np.asarray(inline), np.asarray(png.convert("RGB")))


def test_html_escapes_token_text(report, tmp_path):
    from hf_fastrm.viz import render_html_report

    hostile = ExplanationReport(
        prompt="<script>alert(1)</script>",
        answer="</script><b>x</b>",
        token_ids=report.token_ids,
        tokens=["</script><img src=x onerror=alert(1)>", *report.tokens[1:]],
        special=report.special,
        confidence=report.confidence,
        sequence_confidence=report.sequence_confidence,
        maps=report.maps,
        images=report.images,
    )
    html_text = Path(render_html_report(hostile, tmp_path / "page.html")).read_text(encoding="utf-8")
    assert "<script>alert" not in html_text and "<img src=x" not in html_text
    assert _html_data(html_text)["tokens"][0]["text"] == hostile.tokens[0]


def test_json_round_trip(report):
    data = json.loads(Path(report.paths.json).read_text(encoding="utf-8"))
    assert data["answer"] == report.answer and data["prompt"] == PROMPT
    assert data["grids"] == [{"index": 0, "label": "image 0", "image": 0, "shape": [4, 4]}]
    assert data["files"]["overlays"] == [[os.path.basename(row[0])] for row in report.paths.overlays]
    assert data["model"] == "hf-fastrm/tiny-llava" and data["head"]["head_dim"] == 16
    loaded = load_json_report(report.paths.json)
    outputs = report.outputs
    count = report.num_tokens
    prompt_length = outputs.sequences.shape[1] - outputs.relevancy.shape[1]
    assert loaded.token_ids == outputs.sequences[0, prompt_length : prompt_length + count].tolist()
    assert loaded.tokens == report.tokens and loaded.special == report.special
    # Bit for bit, on any machine: no arithmetic happens between the two (the same tensors are written and read
    # back), and float32 -> Python float -> shortest repr -> float -> float32 is an identity under IEEE 754 with
    # correctly rounded parsing. NaN comes back as NaN. (A recomputed map would need a tolerance, as below.)
    assert _equal_nan(loaded.confidence, outputs.confidence[0, :count].float())
    assert _equal_nan(loaded.maps[0], outputs.relevancy_maps(0)[0][:count].float())
    assert loaded.sequence_confidence == float(outputs.sequence_confidence[0])
    assert loaded.teacher_maps is None and loaded.images == []


def test_json_round_trip_keeps_nan_cells(report, tmp_path):
    from hf_fastrm.viz import write_json_report

    maps = report.maps[0].clone()
    maps[:, 0, 0] = math.nan
    confidence = report.confidence.clone()
    confidence[-1] = math.nan
    edited = ExplanationReport(
        prompt=PROMPT,
        answer=report.answer,
        token_ids=report.token_ids,
        tokens=report.tokens,
        special=report.special,
        confidence=confidence,
        sequence_confidence=math.nan,
        maps=[maps],
    )
    text = Path(write_json_report(edited, tmp_path / "r.json")).read_text(encoding="utf-8")
    assert "NaN" not in text  # strict JSON: null instead
    loaded = load_json_report(tmp_path / "r.json")
    assert _equal_nan(loaded.maps[0], maps) and _equal_nan(loaded.confidence, confidence)
    assert math.isnan(loaded.sequence_confidence)


def test_report_refuses_inconsistent_fields(report):
    with pytest.raises(ValueError, match="one text"):
        ExplanationReport(
            prompt=PROMPT,
            answer="",
            token_ids=report.token_ids,
            tokens=report.tokens[:-1],
            special=report.special,
            confidence=report.confidence,
            sequence_confidence=0.0,
            maps=report.maps,
        )
    with pytest.raises(ValueError, match="tokens="):
        ExplanationReport(
            prompt=PROMPT,
            answer="",
            token_ids=report.token_ids,
            tokens=report.tokens,
            special=report.special,
            confidence=report.confidence,
            sequence_confidence=0.0,
            maps=[report.maps[0][:-1]],
        )


def test_explain_with_teacher(model, processor, head, tmp_path):
    pytest.importorskip("hf_fastrm.teacher")
    report = explain(
        model,
        processor,
        _scene(),
        PROMPT,
        head=head,
        teacher=True,
        output_dir=tmp_path,
        max_new_tokens=3,
        min_new_tokens=3,
    )
    assert report.has_teacher and report.teacher_maps[0].shape == report.maps[0].shape
    # The teacher's maps are those the wrapper's gradient mode gives for the same generation.
    inputs = processor(images=[_scene()], text=build_prompt(processor, PROMPT, 1), return_tensors="pt")
    gradient = FastRMWrapper(model).generate(
        **inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, return_relevancy="gradient"
    )
    torch.testing.assert_close(report.teacher_maps[0], gradient.relevancy_maps(0)[0][: report.num_tokens].float())
    assert len(report.paths.teacher_overlays) == report.num_tokens
    html_text = Path(report.paths.html).read_text(encoding="utf-8")
    assert len(_html_data(html_text)["overlays"]["teacher"]) == report.num_tokens
    assert 'data-method="teacher"' in html_text
    loaded = load_json_report(report.paths.json)
    assert _equal_nan(loaded.teacher_maps[0], report.teacher_maps[0])


# ---------------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def saved_model(model, processor, head, tmp_path_factory):
    """The tiny LLaVA, its processor and its head saved as folders, as a Hub download would leave them."""
    root = tmp_path_factory.mktemp("hub")
    model_dir, head_dir = root / "tiny-llava", root / "tiny-llava-fastrm"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    head.save_pretrained(head_dir)
    image_path = root / "scene.png"
    _scene().save(image_path)
    return model_dir, head_dir, image_path


def _cli(*argv: str) -> int:
    return cli_main(["explain", *argv])


def test_cli_with_explicit_model_and_head(saved_model, model, processor, head, tmp_path, capsys):
    model_dir, head_dir, image_path = saved_model
    output_dir = tmp_path / "out"
    code = _cli(
        "--image", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--head", str(head_dir),
        "--output-dir", str(output_dir), "--max-new-tokens", "5", "--device", "cpu",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads(Path(output_dir / "report.json").read_text(encoding="utf-8"))
    assert os.path.isfile(output_dir / "report.html")
    overlays = [output_dir / row[0] for row in data["files"]["overlays"]]
    assert len(overlays) == len(data["tokens"]) and all(path.is_file() for path in overlays)
    assert f"Answer:   {data['answer']}" in printed and str(output_dir / "report.html") in printed
    for token in data["tokens"]:
        assert f"confidence {token['confidence']:.3f}" in printed
    # Loading from the folders gives what the in-memory model gives: the same tokens, and maps equal up to float32
    # rounding. Not bit for bit: the command runs a second copy of the model (loaded from disk), whose kernels may
    # round differently from the first on another CPU or thread count (1.8e-7 seen on 53 of 80 cells); 1e-5 is far
    # below the maps' spread (values in [0, 1]).
    direct = explain(model, processor, Image.open(image_path), PROMPT, head=head, max_new_tokens=5)
    assert [token["id"] for token in data["tokens"]] == direct.token_ids
    loaded = load_json_report(output_dir / "report.json")
    torch.testing.assert_close(loaded.maps[0], direct.maps[0], rtol=1e-4, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(loaded.confidence, direct.confidence, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert data["model"] == str(model_dir) and data["head"]["id"] == str(head_dir)


def test_cli_gradient_maps_without_a_head(saved_model, tmp_path, capsys):
    model_dir, _, image_path = saved_model
    argv = ["--image", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--teacher"]
    assert _cli(*argv, "--max-new-tokens", "3", "--output-dir", str(tmp_path)) == 0
    data = json.loads(Path(tmp_path / "report.json").read_text(encoding="utf-8"))
    assert data["method"] == "gradient" and data["head"] is None and data["teacher"] is None
    assert "Method:   gradient" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["attention", "rollout", "lvlm-interpret", "fastrm"])
def test_cli_method_option_makes_the_reports_maps(saved_model, tmp_path, capsys, method):
    model_dir, head_dir, image_path = saved_model
    argv = ["--image", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--method", method]
    if method == "fastrm":
        argv += ["--head", str(head_dir)]
    assert _cli(*argv, "--max-new-tokens", "3", "--output-dir", str(tmp_path)) == 0
    data = json.loads(Path(tmp_path / "report.json").read_text(encoding="utf-8"))
    assert data["method"] == method and f"Method:   {method}" in capsys.readouterr().out
    assert len(data["files"]["overlays"]) == len(data["tokens"])
    assert "maps: " in Path(tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "/nonexistent/scene.png", "--prompt", "x"], "no such file"),
        (["--image", "{image}"], "--image needs --prompt"),
        (["--image", "{image}", "--prompt", "x", "--model", "{model}"], "--model needs --head"),
        (
            ["--image", "{image}", "--prompt", "x", "--model", "{model}", "--head", "{model}"],
            "is a folder without fastrm_config.json",
        ),
        (["--image", "{model}/config.json", "--prompt", "x"], "not an image"),
        (["--max-new-tokens", "0"], "at least 1"),
        (["--method", "no-such-method"], "registered: attention"),
    ],
)
def test_cli_refuses_bad_input(saved_model, argv, message, capsys, tmp_path):
    model_dir, _, image_path = saved_model
    argv = [arg.format(image=image_path, model=model_dir) for arg in argv]
    assert _cli(*argv, "--output-dir", str(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "report.html")


def test_cli_refuses_a_head_for_another_model(saved_model, tmp_path, capsys):
    model_dir, _, image_path = saved_model
    other = tiny_head(tiny_llava(hidden_size=48))
    other.save_pretrained(tmp_path / "other-head")
    code = _cli(
        "--image", str(image_path), "--prompt", "x", "--model", str(model_dir), "--head", str(tmp_path / "other-head")
    )
    assert code == 2 and "hidden size 48" in capsys.readouterr().err


def test_cli_without_arguments_uses_the_shipped_model(monkeypatch, model, processor, head, tmp_path, capsys):
    """The no-argument path (scene, question, shipped model and head), with the tiny model standing in for the
    shipped one so this runs whether or not the toy assets are built."""
    from hf_fastrm import toy

    monkeypatch.setattr(toy, "default_model_available", lambda: True)
    monkeypatch.setattr(toy, "load_default_model", lambda device=None, **kwargs: model)
    monkeypatch.setattr(toy, "load_default_processor", lambda: processor)
    monkeypatch.setattr(toy, "load_default_head", lambda: head)
    monkeypatch.chdir(tmp_path)
    assert _cli("--seed", "3", "--max-new-tokens", "3") == 0
    printed = capsys.readouterr().out
    from hf_fastrm.toy.scenes import ask_question, draw_scene, example_rng

    rng = example_rng("explain", 3)
    question = ask_question(draw_scene(rng), rng, present=True)
    data = json.loads(Path(tmp_path / "fastrm_outputs" / "report.json").read_text(encoding="utf-8"))
    assert data["prompt"] == question.text and f"Question: {question.text}" in printed
    assert data["metadata"]["expected_answer"] == question.answer and f"expected: {question.answer}" in printed
    assert data["metadata"]["seed"] == 3
    assert (tmp_path / "fastrm_outputs" / "report.html").is_file()
    # --absent asks about a missing object; --kind picks the question.
    assert _cli("--seed", "3", "--max-new-tokens", "2", "--absent", "--kind", "shape", "--output-dir", "absent") == 0
    data = json.loads(Path(tmp_path / "absent" / "report.json").read_text(encoding="utf-8"))
    assert data["metadata"]["expected_answer"] == "none" and data["metadata"]["question_kind"] == "shape"
    assert data["metadata"]["target_box"] is None


def test_cli_without_assets_says_how_to_build_them(monkeypatch, model, processor, tmp_path, capsys):
    from hf_fastrm import toy

    monkeypatch.setattr(toy, "default_model_available", lambda: False)
    assert _cli("--output-dir", str(tmp_path)) == 2
    error = capsys.readouterr().err
    assert "python -m hf_fastrm.toy.train" in error and "--model and --head" in error
    # The model is there but not its head.
    monkeypatch.setattr(toy, "default_model_available", lambda: True)
    monkeypatch.setattr(toy, "load_default_model", lambda device=None, **kwargs: model)
    monkeypatch.setattr(toy, "load_default_processor", lambda: processor)

    def no_head():
        raise FileNotFoundError(f"no FastRM head in {tmp_path / 'no-such-head'}")

    monkeypatch.setattr(toy, "load_default_head", no_head)
    assert _cli("--output-dir", str(tmp_path)) == 2
    assert "shipped FastRM head is not in this installation" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_cli_on_the_shipped_model(tmp_path, capsys):
    toy = pytest.importorskip("hf_fastrm.toy")
    if not toy.default_model_available() or not os.path.isdir(toy.DEFAULT_HEAD_DIR):
        pytest.skip("the shipped toy model and head are not built in this checkout")
    assert _cli("--seed", "0", "--output-dir", str(tmp_path)) == 0
    data = json.loads(Path(tmp_path / "report.json").read_text(encoding="utf-8"))
    assert data["tokens"] and data["answer"] and data["metadata"]["expected_answer"]
    assert all(os.path.isfile(tmp_path / row[0]) for row in data["files"]["overlays"])
    assert "Answer:" in capsys.readouterr().out
