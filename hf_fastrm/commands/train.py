"""`hf-fastrm train`: train a FastRM head on distilled shards (data-parallel under `accelerate launch`)."""

from __future__ import annotations

import argparse

from ..distill.arguments import TrainArguments
from ..utils.arguments import add_dataclass_arguments, dataclass_from_namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Train a FastRM head on shards written by `hf-fastrm distill`.",
        description=(
            "Trains a FastRM head with binary cross-entropy against thresholded teacher maps. Holds out a "
            "validation split by example id, checkpoints every epoch (continue with --resume) and saves the head "
            "with the best validation F1 (metrics in its config and model card). Run under `accelerate launch` "
            "for several GPUs or processes."
        ),
    )
    add_dataclass_arguments(parser, TrainArguments)
    # the spelling of earlier releases
    parser.add_argument("--no-progress", action="store_false", dest="show_progress", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import train_head

    summary = train_head(dataclass_from_namespace(TrainArguments, args))
    if summary.metrics:
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.metrics.items())
        print(f"Best head (epoch {summary.best_epoch}) saved in {summary.output_dir}: {shown}")
    return 0
