"""Distillation pipeline: teacher maps over a corpus (`distill`), head training (`train_head`), evaluation
(`evaluate_head`) and publication (`push_head`). Each step has an `hf-fastrm` command built on these functions.

The names load on first use, so `hf_fastrm.distill.arguments` (the argument dataclasses the CLI parses) imports
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Corpus": "corpus",
    "CorpusExample": "corpus",
    "load_corpus": "corpus",
    "auroc": "evaluate",
    "average_ranks": "evaluate",
    "evaluate_head": "evaluate",
    "format_report": "evaluate",
    "spearman_rows": "evaluate",
    "push_head": "publish",
    "ShardDataset": "shards",
    "ShardExample": "shards",
    "read_shard_info": "shards",
    "split_example_ids": "shards",
    "write_shard": "shards",
    "DistillSummary": "teacher_pass",
    "build_prompt": "teacher_pass",
    "distill": "teacher_pass",
    "distill_batch": "teacher_pass",
    "TrainSummary": "train",
    "train_head": "train",
    "DistillArguments": "arguments",
    "EvaluateArguments": "arguments",
    "TrainArguments": "arguments",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
