"""Makes the pictures of docs/reports.md: runs `hf-fastrm explain`, screenshots its HTML report in headless
Chromium and copies one token's overlay.

    python tests/browser/screenshot_report.py --output-dir docs/images [--seed 0] [--teacher]

With the shipped toy model and head (hf_fastrm/toy/assets) it explains a synthetic scene with them. Without them it
falls back to an untrained tiny LLaVA of the toy model's shape (48 px scenes, 8 px patches) and a random head, and
says so: the layout of the page is the same, the maps mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cdp import HeadlessChromium


def _explain_with_tiny_model(seed: int, output_dir: str, teacher: bool) -> str:
    from hf_fastrm.testing_utils import tiny_head, tiny_llava, tiny_llava_processor
    from hf_fastrm.toy.scenes import ask_question, draw_scene
    from hf_fastrm.viz import explain

    model = tiny_llava(seed=0, image_size=48, patch_size=8, attn_implementation="eager" if teacher else "sdpa")
    scene = draw_scene(seed)
    question = ask_question(scene, seed)
    report = explain(
        model,
        tiny_llava_processor(image_size=48, patch_size=8),
        scene.image,
        question.text,
        head=tiny_head(model),
        output_dir=output_dir,
        max_new_tokens=4,
        min_new_tokens=4,
        teacher=teacher,
        model_id="untrained tiny LLaVA (stand-in for the shipped toy model)",
        metadata={"expected_answer": question.answer},
    )
    return report.paths.html


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="docs/images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", action="store_true")
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args()

    from hf_fastrm import toy
    from hf_fastrm.cli import main as cli_main

    work = tempfile.mkdtemp(prefix="hf-fastrm-docs-")
    shipped = toy.default_model_available() and os.path.isdir(toy.DEFAULT_HEAD_DIR)
    if shipped:
        argv = ["explain", "--seed", str(args.seed), "--output-dir", work] + (["--teacher"] if args.teacher else [])
        if cli_main(argv) != 0:
            return 1
        html_path = os.path.join(work, "report.html")
    else:
        print("The shipped toy model is not built: using an untrained tiny LLaVA (the maps mean nothing).")
        html_path = _explain_with_tiny_model(args.seed, work, args.teacher)

    os.makedirs(args.output_dir, exist_ok=True)
    screenshot = os.path.join(args.output_dir, "report-screenshot.png")
    with HeadlessChromium(window_size=(args.width, 700)) as browser:
        page = browser.new_page()
        page.navigate(Path(html_path).as_uri())
        if page.errors():
            print("The page reported errors:", *page.errors(), sep="\n  ")
            return 1
        page.screenshot(screenshot)
    from PIL import Image

    with Image.open(screenshot) as shot:  # a 256-colour palette keeps the committed picture small
        shot.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(screenshot, optimize=True)
    overlay = sorted(name for name in os.listdir(work) if name.startswith("token_00_") and name.endswith(".png"))[0]
    shutil.copyfile(os.path.join(work, overlay), os.path.join(args.output_dir, "report-token-overlay.png"))
    print(f"Wrote {screenshot} and {os.path.join(args.output_dir, 'report-token-overlay.png')} (from {work}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
