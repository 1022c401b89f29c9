"""The `hf-fastrm` command line: `--help` without heavy imports, the lazy package namespace, and `hf-fastrm explain`
refusing bad arguments before it loads a model or writes a file, naming its own flags, replacing the previous run's
files and naming the prompt's words its model does not know."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hf_fastrm
from hf_fastrm.cli import _COMMANDS
from hf_fastrm.cli import main as cli_main

REPO_ROOT = Path(hf_fastrm.__file__).resolve().parent.parent
PROMPT = "what colour is the circle ?"


def _python(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (its own sys.modules) with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )


# ---------------------------------------------------------------------------------------------------- --help
def test_help_of_every_command_imports_neither_torch_nor_transformers():
    """`hf-fastrm --help` and `hf-fastrm <command> --help` answer at once: parsing imports no torch and no
    transformers (whose generation code alone took 5-9 s to import on a 2-core machine). Checked on sys.modules, not
    by a timed test."""
    done = _python(
        f"""
        import contextlib, io, json, sys
        from hf_fastrm.cli import main
        texts = {{}}
        for argv in ([], *([name] for name in {list(_COMMANDS)!r})):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                try:
                    main([*argv, "--help"])
                except SystemExit as exit:
                    assert exit.code == 0, (argv, exit.code)
            texts[" ".join(argv)] = buffer.getvalue()
        # A full explain command line parses without heavy imports too (only running it imports them).
        from hf_fastrm.cli import build_parser
        build_parser().parse_args(["explain", "--image", "x.png", "--prompt", "hi", "--model", "m", "--head", "h"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "numpy", "PIL"))
        print(json.dumps({{"texts": texts, "heavy": heavy}}))
        """
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert "transformers.generation" not in result["heavy"]
    assert set(result["texts"]) == {"", *_COMMANDS}
    assert all(name in result["texts"][""] for name in _COMMANDS)
    for name in _COMMANDS:
        assert result["texts"][name].startswith(f"usage: hf-fastrm {name}"), name
    assert "--no-check-base-model" in result["texts"]["explain"]


def test_console_script_version_answers_without_torch():
    done = _python(
        """
        import sys
        from hf_fastrm.cli import main
        try:
            main(["--version"])
        except SystemExit:
            pass
        print("torch" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"hf_fastrm {hf_fastrm.__version__}", "False"]


# ---------------------------------------------------------------------------------------------------- namespace
def test_package_namespace_is_lazy_and_complete():
    done = _python(
        """
        import sys
        import hf_fastrm
        print("torch" in sys.modules, "transformers" in sys.modules, "FastRMWrapper" in dir(hf_fastrm))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]
    # The first use imports the defining module (here, where torch is loaded already, in this process).
    from hf_fastrm import FastRMWrapper
    from hf_fastrm.wrapper import FastRMWrapper as defined

    assert FastRMWrapper is defined and hf_fastrm.FastRMWrapper is defined


def test_all_names_resolve_and_agree_with_the_type_checking_imports():
    lazy = hf_fastrm._LAZY_IMPORTS
    assert set(hf_fastrm.__all__) == {*lazy, "__version__"}
    for name, module_name in lazy.items():
        value = getattr(hf_fastrm, name)
        assert value.__module__.startswith(f"hf_fastrm.{module_name}"), name
    assert set(hf_fastrm.__all__) <= set(dir(hf_fastrm))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        hf_fastrm.NoSuchThing  # noqa: B018
    # The names type checkers see (imports under `if TYPE_CHECKING:`) are the lazy ones, from the same modules.
    tree = ast.parse(Path(hf_fastrm.__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen == lazy


# ---------------------------------------------------------------------------------------------------- explain: bad input
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LLaVA with its processor and a head, saved as folders (as a Hub download leaves them), and an image."""
    from PIL import Image, ImageDraw

    from hf_fastrm.testing_utils import tiny_head, tiny_llava, tiny_llava_processor

    root = tmp_path_factory.mktemp("saved")
    model = tiny_llava(seed=0)
    model.save_pretrained(root / "tiny-llava")
    tiny_llava_processor().save_pretrained(root / "tiny-llava")
    tiny_head(model).save_pretrained(root / "head")
    renamed = tiny_head(model)
    renamed.config.base_model_name_or_path = "org/another-tiny-llava"  # same sizes, another model's name
    renamed.save_pretrained(root / "head-of-another-model")
    image = Image.new("RGB", (40, 32), (225, 225, 225))
    ImageDraw.Draw(image).ellipse((6, 6, 20, 20), fill=(220, 30, 30))
    image.save(root / "scene.png")
    return root


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Fails the test if `hf-fastrm explain` gets as far as loading a model (toy or any other)."""
    from hf_fastrm.commands import explain as command

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(command, "_load_model", refuse)
    monkeypatch.setattr(command, "_load_toy", refuse)


def _files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


BAD_INPUTS = [
    # (argv, what the one-line error must say); {dir} is a scratch folder holding `afile`, `adir` and `notimage.png`,
    # {saved} the saved tiny model, head and image.
    (["--output-dir", "{dir}/afile/sub"], "cannot be created: '{dir}/afile' is a file, not a folder"),
    (["--output-dir", "{dir}/afile"], "--output-dir '{dir}/afile' is a file, not a folder"),
    (["--output-dir", ""], "--output-dir is empty"),
    (["--image", "{dir}/adir", "--prompt", "x"], "--image '{dir}/adir' is a folder; give an image file"),
    (["--image", "{dir}/missing.png", "--prompt", "x"], "--image '{dir}/missing.png': no such file"),
    (["--image", "{dir}/notimage.png", "--prompt", "x"], "is not an image PIL can read"),
    (["--image", "{dir}/empty.jpg", "--prompt", "x"], "is not an image PIL can read"),
    (["--image", "{saved}/scene.png"], "--image needs --prompt"),
    (["--image", "{saved}/scene.png", "--prompt", "  "], "--prompt is empty"),
    (["--image", "{saved}/scene.png", "--prompt", "x", "--kind", "shape"], "--kind and --absent"),
    (["--model", "{saved}/tiny-llava", "--prompt", "x", "--image", "{saved}/scene.png"], "--model needs --head"),
    (["--model", "./nope", "--teacher"], "--model './nope': no such folder"),
    (
        ["--model", "/tmp/hf-fastrm-no-such-model", "--teacher"],
        "--model '/tmp/hf-fastrm-no-such-model': no such folder",
    ),
    (["--model", "org/model/extra", "--teacher"], "--model 'org/model/extra': no such folder"),
    (["--model", "{dir}/adir", "--teacher"], "is a folder without config.json"),
    (["--model", "{dir}/notimage.png", "--teacher"], "is a file; give the model's folder or a Hub repo id"),
    (["--head", "./nohead"], "--head './nohead': no such folder"),
    (["--head", "{saved}/tiny-llava"], "is a folder without fastrm_config.json: not a saved FastRM head"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
    (["--colormap", "rainbow"], "--colormap 'rainbow' is unknown"),
    (["--device", "toaster"], "--device 'toaster' is not a device name"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[" ".join(argv) for argv, _ in BAD_INPUTS])
def test_explain_refuses_bad_input_before_loading(argv, message, saved, tmp_path, monkeypatch, no_model_loads, capsys):
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir").mkdir()
    (tmp_path / "notimage.png").write_text("text, not a picture")
    (tmp_path / "empty.jpg").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    before = _files_under(tmp_path)
    argv = [arg.format(dir=tmp_path, saved=saved) for arg in argv]
    if "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "out")]
    assert cli_main(["explain", *argv]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    lines = printed.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-fastrm explain: error: "), printed.err  # one line, no traceback
    assert message.format(dir=tmp_path) in lines[0]
    assert "Repo id must" not in lines[0] and "Traceback" not in printed.err
    assert _files_under(tmp_path) == before  # nothing written, no output folder made


def test_explain_refuses_a_gpu_it_does_not_have(no_model_loads, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert cli_main(["explain", "--device", "cuda", "--output-dir", str(tmp_path / "out")]) == 2
    assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root may write anywhere")
def test_explain_refuses_a_folder_it_may_not_write(tmp_path, no_model_loads, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli_main(["explain", "--output-dir", str(locked / "out")]) == 2
        assert "no permission to write into" in capsys.readouterr().err
        assert cli_main(["explain", "--output-dir", str(locked)]) == 2
        assert "no permission to write into this folder" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_head_for_another_model_names_the_cli_flag_before_the_weights_load(saved, tmp_path, monkeypatch, capsys):
    import transformers

    loads = []
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", counting)
    argv = ["explain", "--image", str(saved / "scene.png"), "--prompt", PROMPT, "--model", str(saved / "tiny-llava")]
    argv += ["--head", str(saved / "head-of-another-model"), "--output-dir", str(tmp_path / "out")]
    assert cli_main([*argv, "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "org/another-tiny-llava" in error and "--no-check-base-model" in error
    assert "check_base_model=False" not in error
    assert loads == [] and not (tmp_path / "out").exists()  # refused on the config, before the weights
    # The flag it names does what it says.
    assert cli_main([*argv, "--device", "cpu", "--no-check-base-model", "--max-new-tokens", "2"]) == 0
    assert len(loads) == 1 and (tmp_path / "out" / "report.json").is_file()


# ---------------------------------------------------------------------------------------------------- explain: files
def _overlays_listed(folder: Path) -> set[str]:
    files = json.loads((folder / "report.json").read_text(encoding="utf-8"))["files"]
    return {name for key in ("overlays", "teacher_overlays") for row in files[key] for name in row}


def test_a_second_run_replaces_the_first_runs_files(saved, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", "--image", str(saved / "scene.png"), "--model", str(saved / "tiny-llava")]
    argv += ["--head", str(saved / "head"), "--output-dir", str(out), "--device", "cpu"]
    assert cli_main([*argv, "--prompt", PROMPT, "--max-new-tokens", "5"]) == 0
    first = _overlays_listed(out)
    assert len(first) >= 2
    # The user's own files in that folder, one even named like an overlay, are never touched.
    (out / "notes.txt").write_text("mine")
    (out / "token_99_mine.png").write_bytes(b"mine")
    assert cli_main([*argv, "--prompt", "what shape is the object ?", "--max-new-tokens", "1"]) == 0
    second = _overlays_listed(out)
    assert len(second) == 1
    pngs = {path.name for path in out.glob("*.png")}
    assert pngs == second | {"token_99_mine.png"}  # the folder and its report agree
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()


def test_a_forged_earlier_report_removes_nothing_outside_its_overlays(saved, tmp_path):
    """Only overlay names that the earlier report lists, inside its own folder, are ever removed."""
    from PIL import Image

    from hf_fastrm.viz.explain import save_replacing_previous
    from hf_fastrm.viz.report import JSON_FORMAT, ExplanationReport

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "token_00_outside.png"
    victim.write_bytes(b"outside")
    (out / "data.csv").write_text("user data")
    forged = {"format": JSON_FORMAT, "files": {"overlays": [["../token_00_outside.png"], ["data.csv"]]}}
    (out / "report.json").write_text(json.dumps(forged))
    import torch

    report = ExplanationReport(
        prompt="p",
        answer="a",
        token_ids=[5],
        tokens=["a"],
        special=[False],
        confidence=torch.tensor([0.5]),
        sequence_confidence=0.5,
        maps=[torch.rand(1, 2, 2)],
        images=[Image.new("RGB", (8, 8))],
    )
    save_replacing_previous(report, out)
    assert victim.read_bytes() == b"outside" and (out / "data.csv").read_text() == "user data"


# ---------------------------------------------------------------------------------------------------- explain: words
def test_unknown_words_of_the_shipped_tokenizer():
    toy = pytest.importorskip("hf_fastrm.toy")
    if not toy.default_model_available():
        pytest.skip("the shipped toy model is not in this checkout")
    from hf_fastrm.viz.explain import unknown_words

    processor = toy.load_default_processor()
    assert unknown_words(processor, "What is on the sofa? A banana, on the sofa.") == ["sofa", "A", "banana", ",", "."]
    assert unknown_words(processor, "what colour is the circle ?") == []
    assert unknown_words(processor.tokenizer, "Which CORNER is the square in?") == []  # lower-cased, "?" split off


def test_explain_warns_about_unknown_words(saved, tmp_path, capsys):
    argv = ["explain", "--image", str(saved / "scene.png"), "--model", str(saved / "tiny-llava"), "--head"]
    argv += [str(saved / "head"), "--output-dir", str(tmp_path), "--device", "cpu", "--max-new-tokens", "1"]
    assert cli_main([*argv, "--prompt", "what colour is the zebra on the sofa ?"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "does not know 'zebra', 'sofa'" in warnings[0]
    assert cli_main([*argv, "--prompt", PROMPT]) == 0
    assert "does not know" not in capsys.readouterr().err
