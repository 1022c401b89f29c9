"""`hf-fastrm train`: train a FastRM head on distilled shards (data-parallel under `accelerate launch`)."""

from __future__ import annotations

import argparse

from ..constants import DEFAULT_HEAD_DIM, DEFAULT_LABEL_THRESHOLD


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
    parser.add_argument("--shards", required=True, nargs="+", help="Shard folder(s) of one model.")
    parser.add_argument("--output-dir", required=True, help="Where the head and checkpoints go.")
    parser.add_argument("--head-dim", type=int, default=DEFAULT_HEAD_DIM, help="Width k of the head.")
    parser.add_argument("--label-threshold", type=float, default=DEFAULT_LABEL_THRESHOLD)
    parser.add_argument("--decision-threshold", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="Examples per batch and process.")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--pos-weight", type=float, default=None, help="Loss weight of relevant patches.")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="Continue from the latest checkpoint in --output-dir, or from the checkpoint folder given.",
    )
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is there.")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--save-total-limit", type=int, default=2, help="Checkpoints kept (0 keeps all).")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--head-type",
        default="fastrm",
        choices=["fastrm", "question_aware"],
        help="'fastrm': the paper's head (default). 'question_aware': outside the paper's design, the head also "
        "attends over the prompt's text tokens' last hidden states (needs shards written by this version of "
        "`hf-fastrm distill`).",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import train_head

    summary = train_head(
        args.shards,
        args.output_dir,
        head_dim=args.head_dim,
        label_threshold=args.label_threshold,
        decision_threshold=args.decision_threshold,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        pos_weight=args.pos_weight,
        val_fraction=args.val_fraction,
        seed=args.seed,
        resume=True if args.resume == "latest" else (args.resume or False),
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
        num_workers=args.num_workers,
        save_total_limit=args.save_total_limit or None,
        show_progress=not args.no_progress,
        head_type=args.head_type,
    )
    if summary.metrics:
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.metrics.items())
        print(f"Best head (epoch {summary.best_epoch}) saved in {summary.output_dir}: {shown}")
    return 0
