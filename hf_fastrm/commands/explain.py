"""`hf-fastrm explain`: answer a question about an image and show what each answer token looked at.

With no arguments it works offline: it draws a synthetic scene, asks a question about it, answers with the toy model
and FastRM head shipped inside the package, and writes a PNG overlay per answer token, ``report.html`` and
``report.json``. With ``--image``, ``--prompt``, ``--model`` and ``--head`` it does the same for any supported model.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

_EPILOG = """examples:
  hf-fastrm explain                                  # shipped toy model and head, a scene drawn with --seed 0
  hf-fastrm explain --seed 7 --teacher               # another scene; the teacher's gradient maps beside FastRM's
  hf-fastrm explain --image cat.jpg --prompt "What is on the sofa?" \\
      --model llava-hf/llava-1.5-7b-hf --head org/fastrm-llava-1.5-7b --dtype bfloat16 --device cuda
"""

_DTYPES = ("auto", "float32", "float16", "bfloat16")


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="answer a question about an image; write per-token relevancy overlays, an HTML and a JSON report",
        description=(
            "Answers a question about an image and writes, for every answer token, its relevancy map over the\n"
            "image (PNG), a self-contained HTML report (click a token to see its map) and a JSON report.\n"
            "Without --model it uses the toy model and head shipped in the package on a synthetic scene\n"
            "(works offline)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("what to explain")
    source.add_argument("--image", help="image file (default: a synthetic scene drawn with --seed)")
    source.add_argument("--prompt", help="the question (default: a question drawn about the synthetic scene)")
    source.add_argument("--seed", type=int, default=0, help="seed of the synthetic scene and question (default: 0)")
    source.add_argument(
        "--kind",
        choices=("colour", "shape", "side", "corner"),
        help="kind of question about the synthetic scene (default: drawn with --seed)",
    )
    source.add_argument(
        "--absent", action="store_true", help="ask about an object the synthetic scene does not hold (answer: none)"
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="Hub id or folder of a vision-language model (default: the shipped toy model)")
    model.add_argument(
        "--head", help="Hub id or folder of its FastRM head (default: the shipped head, with the toy model)"
    )
    model.add_argument("--revision", help="model revision on the Hub (branch, tag or commit)")
    model.add_argument("--dtype", choices=_DTYPES, default="auto", help="bfloat16 on GPU, float32 on CPU by default")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    model.add_argument(
        "--no-check-base-model",
        action="store_true",
        help="use the head even though its base model's name differs from the model's (a renamed copy)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", default="fastrm_outputs", help="where to write (default: fastrm_outputs/)")
    output.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default: 16)")
    output.add_argument(
        "--method",
        help="relevancy method of the maps: fastrm (the head, the default with a head), gradient (the exact gradient "
        "teacher, the default without one), attention, rollout, lvlm-interpret, or any name registered with "
        "hf_fastrm.methods.register_method",
    )
    output.add_argument(
        "--teacher",
        action="store_true",
        help="also compute the gradient teacher's maps (slower; exact for its rule) and show them beside",
    )
    output.add_argument("--colormap", default="jet", help="jet, turbo, viridis or inferno (default: jet)")
    output.add_argument("--alpha", type=float, default=0.5, help="opacity of the maps over the image (default: 0.5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CommandError as error:
        print(f"hf-fastrm explain: error: {error}", file=sys.stderr)
        return 2


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CommandError(f"--device {name!r} is not a device name ({error}).") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for but this PyTorch sees no CUDA GPU; use --device cpu.")
    return device


def _resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


# Python argument names that library errors mention, and the flags a command-line user sets instead.
_CLI_TERMS = (
    ("`check_base_model=False`", "--no-check-base-model"),
    ("check_base_model=False", "--no-check-base-model"),
    ("`max_new_tokens`", "--max-new-tokens"),
)


def _in_cli_terms(message: str) -> str:
    """A library error message with the Python argument names it mentions replaced by this command's flags."""
    for python_name, flag in _CLI_TERMS:
        message = message.replace(python_name, flag)
    return message


def _check_output_dir(path: str) -> None:
    """Refuses an --output-dir that is a file or cannot be created or written into; creates nothing."""
    flag = f"--output-dir {path!r}"
    if not path.strip():
        raise CommandError("--output-dir is empty; give a folder (it is created if needed).")
    target = os.path.normpath(path)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise CommandError(f"{flag} is a file, not a folder; give a folder (it is created if needed).")
        if not os.access(target, os.W_OK | os.X_OK):
            raise CommandError(f"{flag}: no permission to write into this folder; give another --output-dir.")
        return
    ancestor = target
    while True:  # the nearest part of the path that exists: it must be a folder we may create things in
        ancestor = os.path.dirname(ancestor)
        if not ancestor or os.path.exists(ancestor) or os.path.dirname(ancestor) == ancestor:
            break
    ancestor = ancestor or "."
    if not os.path.isdir(ancestor):
        raise CommandError(
            f"{flag} cannot be created: {ancestor!r} is a file, not a folder. Give another --output-dir."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CommandError(f"{flag} cannot be created: no permission to write into {ancestor!r}.")


def _check_image_path(path: str) -> None:
    if os.path.isdir(path):
        raise CommandError(f"--image {path!r} is a folder; give an image file (PNG, JPEG, ...).")
    if not os.path.exists(path):
        raise CommandError(f"--image {path!r}: no such file.")
    if not os.path.isfile(path):
        raise CommandError(f"--image {path!r} is not a regular file; give an image file (PNG, JPEG, ...).")
    if not os.access(path, os.R_OK):
        raise CommandError(f"--image {path!r} cannot be read (no permission).")


def _check_pretrained(flag: str, name_or_path: str, config_name: str, what: str) -> None:
    """Refuses a --model/--head that is neither an existing local folder holding `config_name` nor a valid Hub repo
    id, so a mistyped local path is not sent to the Hub (whose answer, "Repo id must be in the form ...", misleads)."""
    shown = f"{flag} {name_or_path!r}"
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, config_name)):
            raise CommandError(f"{shown} is a folder without {config_name}: not a saved {what}.")
        return
    if os.path.exists(name_or_path):
        raise CommandError(f"{shown} is a file; give the {what}'s folder or a Hub repo id.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_local = name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path  # a Hub id never starts so
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise CommandError(
            f"{shown}: no such folder. Give an existing folder or a Hub repo id ('name' or 'namespace/name', "
            f"e.g. {'llava-hf/llava-1.5-7b-hf' if flag == '--model' else 'org/fastrm-llava-1.5-7b'})."
        )


def _check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no model: run before anything is loaded or written."""
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if not 0.0 <= args.alpha <= 1.0:
        raise CommandError(f"--alpha must be in [0, 1], got {args.alpha}.")
    if args.prompt is not None and not args.prompt.strip():
        raise CommandError("--prompt is empty; give the question to ask about the image.")
    if args.image and not args.prompt:
        raise CommandError("--image needs --prompt (the question to ask about it).")
    if args.image and (args.kind or args.absent):
        raise CommandError(
            "--kind and --absent choose a question about the synthetic scene; with --image, ask with --prompt."
        )
    if args.method is not None:
        from ..methods import available_methods

        if args.method not in available_methods():
            raise CommandError(f"--method {args.method!r} is unknown; registered: {', '.join(available_methods())}.")
    if args.method == "fastrm" and args.model and not args.head:
        raise CommandError("--method fastrm needs --head (a FastRM head folder or Hub id trained for --model).")
    if args.model and not args.head and not args.teacher and args.method is None:
        raise CommandError(
            "--model needs --head (a FastRM head folder or Hub id trained for that model), or --method (e.g. "
            "gradient, attention, rollout) or --teacher to show maps without a head."
        )
    _check_output_dir(args.output_dir)
    if args.image:
        _check_image_path(args.image)
    from ..constants import CONFIG_NAME

    if args.model:
        _check_pretrained("--model", args.model, "config.json", "model")
    if args.head:
        _check_pretrained("--head", args.head, CONFIG_NAME, "FastRM head")


def _load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"--image {path!r} is not an image PIL can read ({error}).") from error


def _warn_unknown_words(processor: Any, prompt: str) -> None:
    from ..viz.explain import unknown_words

    unknown = unknown_words(processor, prompt)
    if not unknown:
        return
    tokenizer = getattr(processor, "tokenizer", processor)
    message = (
        f"the model's tokenizer does not know {', '.join(repr(word) for word in unknown)}: "
        f"{'it becomes' if len(unknown) == 1 else 'they become'} {tokenizer.unk_token!r}, which carries no meaning "
        "to the model; ask with words it knows."
    )
    vocabulary = getattr(tokenizer, "get_vocab", dict)()
    if 0 < len(vocabulary) <= 100:  # a small word-level vocabulary (the shipped toy model's): list what it knows
        special = set(getattr(tokenizer, "all_special_tokens", []))
        known = sorted(word for word in vocabulary if word not in special and word.isalpha())
        message += f" It knows: {' '.join(known)}."
    print(f"hf-fastrm explain: warning: {message}", file=sys.stderr)


def _load_head(name_or_path: str, device):
    from ..head import FastRMHead

    try:
        return FastRMHead.from_pretrained(name_or_path, device=device)
    except (OSError, ValueError) as error:
        raise CommandError(f"Could not load the FastRM head {name_or_path!r}: {error}") from error


def _load_toy(args: argparse.Namespace, device) -> tuple[Any, Any, Any, str, str | None]:
    """The shipped model, processor and head (or the --head given), with their names for the report."""
    from .. import toy

    if not toy.default_model_available():
        raise CommandError(
            f"The shipped toy model is not in this installation (expected in {toy.DEFAULT_MODEL_DIR}). Reinstall "
            "hf_fastrm from a release or a full clone, or build it: `python -m hf_fastrm.toy.train` writes it there "
            "(a few minutes on one GPU). Or explain another model: --image, --prompt, --model and --head."
        )
    try:
        model = toy.load_default_model(device=device)
        processor = toy.load_default_processor()
    except (FileNotFoundError, OSError) as error:
        raise CommandError(str(error)) from error
    if args.head:
        return model, processor, _load_head(args.head, device), toy.DEFAULT_MODEL_DIR, args.head
    head_dir = toy.DEFAULT_HEAD_DIR
    try:
        head = toy.load_default_head().to(device)
    except FileNotFoundError as error:
        if not args.teacher and args.method in (None, "fastrm"):
            raise CommandError(
                f"The shipped FastRM head is not in this installation ({error}). Reinstall hf_fastrm from a "
                "release or a full clone, or distil it for the toy model (see docs/training.md); meanwhile "
                "--method gradient shows the gradient maps alone."
            ) from error
        head = None
    return model, processor, head, toy.DEFAULT_MODEL_DIR, head_dir if head is not None else None


def _load_model(args: argparse.Namespace, device, dtype, prompt: str) -> tuple[Any, Any, Any]:
    """The processor, then the config (and the head, checked against it), and only then the weights."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from ..architectures import supported_model_types

    kwargs = {"revision": args.revision} if args.revision else {}
    try:
        processor = AutoProcessor.from_pretrained(args.model, **kwargs)
        config = AutoConfig.from_pretrained(args.model, **kwargs)
    except (OSError, ValueError) as error:
        raise CommandError(f"Could not load the model {args.model!r}: {error}") from error
    _warn_unknown_words(processor, prompt)
    _check_model_type(config.model_type, supported_model_types())
    head = _load_head(args.head, device) if args.head else None
    if head is not None:
        try:
            head.check_compatible(config, check_base_model=not args.no_check_base_model)
        except ValueError as error:
            raise CommandError(_in_cli_terms(str(error))) from error
    try:
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise CommandError(f"Could not load the model {args.model!r}: {error}") from error
    return model.to(device).eval(), processor, head


def _check_model_type(model_type: str | None, supported: list[str]) -> None:
    if model_type not in supported:
        raise CommandError(
            f"Model type {model_type!r} is not supported; supported: {', '.join(supported)}. "
            "Add one with hf_fastrm.register_architecture."
        )


SCENE_STREAM = "explain"
"""Name of the stream of seeded examples (`hf_fastrm.toy.scenes.example_rng`) that `--seed` indexes."""


def scene_and_question(seed: int, kind: str | None = None, absent: bool = False):
    """The synthetic scene and question of `--seed` (one generator draws both): about an object in the scene, or,
    with `absent`, about one that is not there (expected answer "none")."""
    from ..toy.scenes import ask_question, draw_scene, example_rng

    rng = example_rng(SCENE_STREAM, seed)
    scene = draw_scene(rng)
    return scene, ask_question(scene, rng, kind, present=not absent)


def _run(args: argparse.Namespace) -> int:
    _check_arguments(args)  # before any heavy import, load or write
    from ..viz.overlay import COLORMAPS

    if args.colormap not in COLORMAPS:
        raise CommandError(f"--colormap {args.colormap!r} is unknown; choose one of {', '.join(COLORMAPS)}.")
    image = _load_image(args.image) if args.image else None
    device = _resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)

    from transformers.utils import logging as hf_logging

    from ..architectures import supported_model_types
    from ..viz import OverlayStyle, explain

    metadata: dict[str, Any] = {}
    scene = question = None
    if image is None:
        scene, question = scene_and_question(args.seed, args.kind, args.absent)
        image = scene.image
        metadata.update(
            seed=args.seed,
            question_kind=question.kind,
            expected_answer=question.answer,
            target_box=list(question.target_object.box) if question.target_object is not None else None,
        )
    prompt = args.prompt or question.text
    if prompt != getattr(question, "text", None):
        metadata.pop("expected_answer", None)

    if args.model:
        model, processor, head = _load_model(args, device, dtype, prompt)
        model_id, head_id = args.model, args.head
    else:
        model, processor, head, model_id, head_id = _load_toy(args, device)
        _warn_unknown_words(processor, prompt)
    _check_model_type(getattr(model.config, "model_type", None), supported_model_types())

    # Keep the summary readable (errors still show; the warnings that matter were printed above), and restore the
    # levels afterwards: `main()` may run inside a longer Python program.
    package_logger = logging.getLogger("hf_fastrm")
    levels = hf_logging.get_verbosity(), package_logger.level
    hf_logging.set_verbosity_error()
    package_logger.setLevel(logging.ERROR)
    try:
        report = explain(
            model,
            processor,
            image,
            prompt,
            head=head,
            output_dir=args.output_dir,
            max_new_tokens=args.max_new_tokens,
            teacher=args.teacher,
            method=args.method,
            model_id=model_id,
            head_id=head_id,
            metadata=metadata,
            style=OverlayStyle(colormap=args.colormap, alpha=args.alpha),
            check_base_model=not args.no_check_base_model,
        )
    except ValueError as error:  # e.g. a head made for another model
        raise CommandError(_in_cli_terms(str(error))) from error
    finally:
        hf_logging.set_verbosity(levels[0])
        package_logger.setLevel(levels[1])
    _print_summary(report, model_id, head_id)
    return 0


def _format_confidence(value: float | None) -> str:
    return "  n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _print_summary(report: Any, model_id: str, head_id: str | None) -> None:
    expected = report.metadata.get("expected_answer")
    print(f"Model:    {model_id}")
    print(f"Head:     {head_id or 'none'}")
    print(f"Method:   {report.method}")
    print(f"Question: {report.prompt}")
    verdict = ""
    if expected is not None:
        verdict = f"   (expected: {expected}, {'correct' if report.answer == expected else 'wrong'})"
    print(f"Answer:   {report.answer}{verdict}")
    print("Tokens:")
    width = max([len(repr(text)) for text in report.tokens] + [5])
    for index, (text, special, confidence) in enumerate(
        zip(report.tokens, report.special, report.confidence.tolist(), strict=True)
    ):
        line = f"  {index:3d}  {text!r:<{width}}  confidence {_format_confidence(confidence)}"
        if report.has_teacher:
            line += f"   teacher {_format_confidence(float(report.teacher_confidence[index]))}"
        if special:
            line += "   (special, not counted)"
        print(line)
    line = f"Sequence confidence: {_format_confidence(report.sequence_confidence)}"
    if report.has_teacher:
        line += f"   teacher {_format_confidence(report.teacher_sequence_confidence)}"
    print(line)
    paths = report.paths
    overlays = [path for row in paths.overlays for path in row]
    print(
        f"Overlays: {len(overlays)} PNG files in {paths.output_dir}" + (f" ({overlays[0]}, ...)" if overlays else "")
    )
    if paths.teacher_overlays:
        print(f"Teacher overlays: {sum(len(row) for row in paths.teacher_overlays)} PNG files")
    print(f"HTML:     {paths.html}")
    print(f"JSON:     {paths.json}")
