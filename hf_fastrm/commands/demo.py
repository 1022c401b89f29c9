"""`hf-fastrm demo`: an interactive page where the answer streams with each token's relevancy map (Gradio).

With no arguments it works offline on the toy model and head shipped in the package (drawn scenes, or your own
image). Heavy imports (torch, gradio) happen in `run`, so `hf-fastrm --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

_EPILOG = """examples:
  hf-fastrm demo                                   # shipped toy model and head, http://127.0.0.1:7860
  hf-fastrm demo --port 8080
  hf-fastrm demo --model llava-hf/llava-1.5-7b-hf --head org/fastrm-llava-1.5-7b --dtype bfloat16 --device cuda
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="interactive web page: ask about an image, watch the answer stream with each token's relevancy map",
        description=(
            "Starts a local web page (Gradio): pick a drawn scene or upload an image, ask a question, and watch the\n"
            "answer stream with each token's FastRM map over the image; hover or click a token to see its map,\n"
            "flag weakly grounded tokens, compare with the exact gradient maps, download the HTML/JSON report.\n"
            "Without --model it uses the toy model and head shipped in the package (works offline).\n"
            'Needs the demo extra: pip install "hf_fastrm[demo]".'
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="Hub id or folder of a vision-language model (default: the shipped toy model)")
    model.add_argument("--head", help="Hub id or folder of its FastRM head (default: the shipped head)")
    model.add_argument("--revision", help="model revision on the Hub (branch, tag or commit)")
    model.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    model.add_argument("--no-check-base-model", action="store_true", help="use a head made for a renamed copy")
    page = parser.add_argument_group("page")
    page.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    page.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    page.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    page.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default: 16)")
    page.add_argument(
        "--token-delay",
        type=float,
        default=None,
        help="seconds between two shown tokens (default: 0.25 with the shipped model, which answers in "
        "milliseconds, so the stream can be watched; 0 otherwise)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .explain import CommandError

    try:
        return _run(args)
    except CommandError as error:
        print(f"hf-fastrm demo: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .explain import CommandError, _load_head, _load_model, _resolve_device, _resolve_dtype

    try:
        from ..demo import app
    except ImportError as error:
        raise CommandError(
            f'The demo needs Gradio ({error}): pip install "hf_fastrm[demo]" (or pip install gradio).'
        ) from error
    from transformers.utils import logging as hf_logging

    from ..architectures import supported_model_types
    from ..demo.engine import DemoEngine

    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if not 1 <= args.port <= 65535:
        raise CommandError(f"--port must be between 1 and 65535, got {args.port}.")
    device = _resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)
    prompt_builder = None
    if args.model:
        model, processor = _load_model(args, device, dtype)
        head = _load_head(args.head, device) if args.head else None
        model_id, head_id = args.model, args.head
        delay = 0.0
    else:
        from .. import toy
        from ..toy.modeling import format_prompt

        try:
            model = toy.load_default_model(device=device)
            processor = toy.load_default_processor()
            head = _load_head(args.head, device) if args.head else toy.load_default_head(device=device)
        except FileNotFoundError as error:
            raise CommandError(str(error)) from error
        model_id, head_id = "hf_fastrm toy LLaVA (shipped)", args.head or "shipped FastRM head"
        prompt_builder = format_prompt
        delay = 0.25
    model_type = getattr(model.config, "model_type", None)
    if model_type not in supported_model_types():
        raise CommandError(
            f"Model type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}."
        )
    if head is not None:
        try:
            head.check_compatible(model.config, check_base_model=not args.no_check_base_model)
        except ValueError as error:
            raise CommandError(str(error)) from error
    hf_logging.set_verbosity_error()
    engine = DemoEngine(
        model,
        processor,
        head,
        model_id=model_id,
        head_id=head_id,
        max_new_tokens=args.max_new_tokens,
        token_delay=delay if args.token_delay is None else max(0.0, args.token_delay),
        prompt_builder=prompt_builder,
        check_base_model=not args.no_check_base_model,
    )
    print(f"hf-fastrm demo: {model_id} with {head_id or 'no head'} on http://{args.host}:{args.port}", flush=True)
    app.launch(app.build_demo(engine), port=args.port, host=args.host, share=args.share)
    return 0
