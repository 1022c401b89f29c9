"""Distillation pipeline: teacher maps over a corpus (`distill`), head training (`train_head`), evaluation
(`evaluate_head`) and publication (`push_head`). Each step has an `hf-fastrm` command built on these functions."""

from .corpus import Corpus, CorpusExample, load_corpus
from .evaluate import auroc, average_ranks, evaluate_head, format_report, spearman_rows
from .publish import push_head
from .shards import ShardDataset, ShardExample, read_shard_info, write_shard
from .teacher_pass import DistillSummary, build_prompt, distill, distill_batch
from .train import TrainSummary, split_example_ids, train_head

__all__ = [
    "Corpus",
    "CorpusExample",
    "DistillSummary",
    "ShardDataset",
    "ShardExample",
    "TrainSummary",
    "auroc",
    "average_ranks",
    "build_prompt",
    "distill",
    "distill_batch",
    "evaluate_head",
    "format_report",
    "load_corpus",
    "push_head",
    "read_shard_info",
    "spearman_rows",
    "split_example_ids",
    "train_head",
    "write_shard",
]
