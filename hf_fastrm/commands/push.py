"""`hf-fastrm push`: publish a trained head on the Hugging Face Hub with its model card."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="Upload a head (config, weights, model card) to the Hub.",
        description=(
            "Uploads a FastRM head folder to a Hub repo: its config, its safetensors weights and a model card "
            "naming the base model and revision, the training corpus, the label threshold and the metrics."
        ),
    )
    parser.add_argument("--head", required=True, help="Head folder written by `hf-fastrm train`.")
    parser.add_argument("--repo-id", required=True, help="Hub repo, 'org/name'.")
    parser.add_argument("--corpus", default=None, help="Training corpus for the card (default: from training).")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None)
    parser.add_argument("--revision", default=None, help="Branch to push to.")
    parser.add_argument("--commit-message", default="Upload FastRM head")
    parser.add_argument("--create-pr", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import push_head

    url = push_head(
        args.head,
        args.repo_id,
        corpus=args.corpus,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
    )
    print(f"Pushed to {url}")
    return 0
