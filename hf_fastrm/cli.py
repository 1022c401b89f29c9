"""The `hf-fastrm` console command."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Each module in hf_fastrm.commands defines `register(subparsers)`, adding its sub-command with `func` set.
_COMMANDS = ("explain", "distill", "train", "evaluate", "push", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-fastrm",
        description="FastRM relevancy maps for Hugging Face vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"hf_fastrm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"hf_fastrm.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
