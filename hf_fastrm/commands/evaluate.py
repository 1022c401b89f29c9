"""`hf-fastrm evaluate`: a head against the teacher maps of held-out shards."""

from __future__ import annotations

import argparse

from ..distill.arguments import EvaluateArguments
from ..utils.arguments import add_dataclass_arguments, dataclass_from_namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Accuracy, precision, recall, F1, AUROC and Spearman of a head against teacher maps.",
        description=(
            "Evaluates a FastRM head on shards written by `hf-fastrm distill` (held out from training): accuracy, "
            "precision, recall and F1 of its thresholded relevance against the thresholded teacher maps, AUROC, and "
            "Spearman correlation with the teacher maps. Prints a table; --json writes the report."
        ),
    )
    add_dataclass_arguments(parser, EvaluateArguments)
    # the spelling of earlier releases
    parser.add_argument("--no-progress", action="store_false", dest="show_progress", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import evaluate_head, format_report

    report = evaluate_head(dataclass_from_namespace(EvaluateArguments, args))
    print(format_report(report))
    if args.json_path:
        print(f"Report written to {args.json_path}")
    return 0
