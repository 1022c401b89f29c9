"""`hf-fastrm distill`: teacher maps over an image-question corpus, written as resumable training shards."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--model", required=True, help="Hub id or folder of the vision-language model.")
    parser.add_argument(
        "--corpus",
        required=True,
        help="A `datasets` dataset name or saved folder with image and question columns, or a folder of images "
        "with a JSONL of {'image': file, 'question': text}.",
    )
    parser.add_argument("--output-dir", required=True, help="Where the shards go (resumed if it holds some).")
    parser.add_argument("--revision", default=None, help="Revision (commit, tag, branch) of the model.")
    parser.add_argument("--dtype", default=None, choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", default=None, help="Device of the model (default: the process's device).")
    parser.add_argument("--device-map", default=None, help="`device_map` for models larger than one GPU ('auto').")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--question-column", default="question")
    parser.add_argument("--id-column", default=None, help="Column of unique example ids (row numbers otherwise).")
    parser.add_argument("--split", default=None, help="Dataset split (default: 'train' or the only one).")
    parser.add_argument("--questions-file", default=None, help="The JSONL of an image folder (default: the only one).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N examples.")
    parser.add_argument(
        "--prompt-template",
        default=None,
        help="Prompt with '{question}' and '{image}' (the image placeholder); default: the processor's chat "
        "template, else 'USER: {image}\\n{question} ASSISTANT:'.",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="Examples per generate + teacher call.")
    parser.add_argument("--examples-per-shard", type=int, default=256)
    parser.add_argument("--storage-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument(
        "--teacher-target", default="logit", choices=["logit", "log_prob"], help="What the teacher differentiates."
    )
    parser.add_argument(
        "--token-chunk-size",
        type=int,
        default=None,
        help="Tokens per batched teacher backward (less memory when smaller; the teacher's default otherwise).",
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import distill

    summary = distill(
        args.model,
        args.corpus,
        args.output_dir,
        revision=args.revision,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        image_column=args.image_column,
        question_column=args.question_column,
        id_column=args.id_column,
        split=args.split,
        questions_file=args.questions_file,
        limit=args.limit,
        prompt_template=args.prompt_template,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        examples_per_shard=args.examples_per_shard,
        storage_dtype=args.storage_dtype,
        teacher_target=args.teacher_target,
        teacher_kwargs={"token_chunk_size": args.token_chunk_size} if args.token_chunk_size else None,
        show_progress=not args.no_progress,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(
            f"{summary.num_examples} examples in complete shards in {summary.output_dir} "
            f"({summary.num_skipped_examples} were already there)."
        )
    return 0
