"""`hf-fastrm distill`: teacher maps over an image-question corpus, written as resumable training shards."""

from __future__ import annotations

import argparse

from ..distill.arguments import DistillArguments
from ..utils.arguments import add_dataclass_arguments, dataclass_from_namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="Generate answers and teacher relevancy maps over a corpus; write training shards.",
        description=(
            "Generates answers (greedy) for every image-question pair of a corpus, computes the gradient teacher's "
            "relevancy maps and writes what a FastRM head trains on into safetensors shards. A killed run resumes "
            "where it stopped when started again with the same --output-dir. Under `accelerate launch` the corpus "
            "is split between the processes."
        ),
    )
    add_dataclass_arguments(parser, DistillArguments)
    # the spelling of earlier releases
    parser.add_argument("--no-progress", action="store_false", dest="show_progress", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import distill

    summary = distill(dataclass_from_namespace(DistillArguments, args))
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(
            f"{summary.num_examples} examples in complete shards in {summary.output_dir} "
            f"({summary.num_skipped_examples} were already there)."
        )
    return 0
