"""`hf-fastrm evaluate`: a head against the teacher maps of held-out shards."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--head", required=True, help="Head folder or Hub repo id.")
    parser.add_argument("--shards", required=True, nargs="+", help="Shard folder(s) of the head's model.")
    parser.add_argument("--json", default=None, dest="json_path", help="Write the report to this JSON file.")
    parser.add_argument("--label-threshold", type=float, default=None, help="Default: the head's own.")
    parser.add_argument("--decision-threshold", type=float, default=0.5)
    parser.add_argument("--split", default="all", choices=["all", "train", "validation"])
    parser.add_argument("--val-fraction", type=float, default=None, help="Of the split (default: the head's).")
    parser.add_argument("--seed", type=int, default=None, help="Of the split (default: the head's training seed).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-check-base-model", action="store_true", help="Do not compare model names.")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import evaluate_head, format_report

    report = evaluate_head(
        args.head,
        args.shards,
        label_threshold=args.label_threshold,
        decision_threshold=args.decision_threshold,
        split=args.split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        json_path=args.json_path,
        check_base_model=not args.no_check_base_model,
        show_progress=not args.no_progress,
    )
    print(format_report(report))
    if args.json_path:
        print(f"Report written to {args.json_path}")
    return 0
