"""`evaluate_head`: how well a head reproduces the teacher on held-out shards.

Over the image tokens of every usable answer token (the paper's protocol, arXiv 2412.01487 Sec. 4):

* accuracy, precision, recall and F1 of ``sigmoid(logit) >= decision_threshold`` against the labels
  ``minmax(teacher map) >= label_threshold``;
* AUROC of the head's relevance against the same labels (pooled over all entries, Mann-Whitney with tied ranks);
* Spearman rank correlation between the head's relevance and the teacher's map, per token over its image tokens,
  averaged over tokens (tokens whose map or prediction is constant are left out).

AUROC and Spearman are computed here with numpy (no scikit-learn or SciPy).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from ..head import FastRMHead
from ..utils.io import atomic_write_text
from .arguments import EvaluateArguments
from .shards import ShardBatch, ShardDataset, collate_examples, split_example_ids

logger = logging.get_logger(__name__)

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "auroc", "spearman")


# ---------------------------------------------------------------------------------------------- metric primitives
def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the last axis, ties sharing their average rank (SciPy's ``rankdata``, 'average').

    Args:
        values (`np.ndarray` of shape `(..., n)`)

    Returns:
        `np.ndarray` of shape `(..., n)`, float64.
    """
    values = np.asarray(values, dtype=np.float64)
    shape = values.shape
    rows = values.reshape(-1, shape[-1]) if values.ndim else values.reshape(1, 1)
    count = rows.shape[1]
    order = np.argsort(rows, axis=1, kind="mergesort")
    ordered = np.take_along_axis(rows, order, axis=1)
    positions = np.broadcast_to(np.arange(count), rows.shape)
    starts_group = np.ones(rows.shape, dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends_group = np.ones(rows.shape, dtype=bool)
    ends_group[:, :-1] = starts_group[:, 1:]
    first = np.maximum.accumulate(np.where(starts_group, positions, 0), axis=1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends_group, positions, count), axis=1), axis=1), axis=1)
    ranks = np.empty_like(rows)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks.reshape(shape)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (ties count one half); NaN with a single class."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def spearman_rows(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of `predicted` with the same row of `reference`.

    Args:
        predicted, reference (`np.ndarray` of shape `(rows, n)`)

    Returns:
        `np.ndarray` of shape `(rows,)`; NaN for a row where either side is constant.
    """
    ranks_a = average_ranks(predicted)
    ranks_b = average_ranks(reference)
    ranks_a = ranks_a - ranks_a.mean(axis=-1, keepdims=True)
    ranks_b = ranks_b - ranks_b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((ranks_a**2).sum(axis=-1) * (ranks_b**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ranks_a * ranks_b).sum(axis=-1) / denominator, np.nan)


def binary_metrics(true_positives: int, false_positives: int, true_negatives: int, false_negatives: int) -> dict:
    """Accuracy, precision, recall and F1 from confusion counts (0 where undefined, as is usual for F1)."""
    total = true_positives + false_positives + true_negatives + false_negatives
    predicted = true_positives + false_positives
    actual = true_positives + false_negatives
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / actual if actual else 0.0
    return {
        "accuracy": (true_positives + true_negatives) / total if total else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }


def make_labels(batch: ShardBatch, label_threshold: float) -> torch.Tensor:
    """Training labels `(B, T, N)`: per token, min-max-normalised teacher map >= `label_threshold`."""
    from ..teacher import relevancy_labels

    image_token_mask = batch.image_token_mask.unsqueeze(1)  # (B, 1, N), broadcast over the tokens
    maps = batch.teacher_maps.masked_fill(~image_token_mask, float("nan"))
    return relevancy_labels(maps, threshold=label_threshold, image_token_mask=image_token_mask).bool()


def confusion_counts(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, decision_threshold: float = 0.5
) -> torch.Tensor:
    """``[tp, fp, tn, fn]`` (int64) over the `valid` entries, predicting ``sigmoid(logits) >= decision_threshold``."""
    predicted = torch.sigmoid(logits.float()) >= decision_threshold
    labels = labels.bool()
    return torch.stack(
        [
            (predicted & labels & valid).sum(),
            (predicted & ~labels & valid).sum(),
            (~predicted & ~labels & valid).sum(),
            (~predicted & labels & valid).sum(),
        ]
    ).long()


# ---------------------------------------------------------------------------------------------- accumulation
@dataclass
class MetricAccumulator:
    """Gathers what the metrics need, batch by batch."""

    decision_threshold: float = 0.5
    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.long))
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    token_correlations: list[np.ndarray] = field(default_factory=list)
    num_examples: int = 0
    num_tokens: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, batch: ShardBatch) -> None:
        """Args: logits `(B, T, N)` of the head, labels `(B, T, N)` bool, the batch they came from."""
        valid = batch.valid_mask.to(logits.device)
        labels = labels.to(logits.device)
        self.counts += confusion_counts(logits, labels, valid, self.decision_threshold).cpu()
        relevance = torch.sigmoid(logits.float()).cpu()
        valid, labels = valid.cpu(), labels.cpu()
        self.scores.append(relevance[valid].numpy())
        self.labels.append(labels[valid].numpy())
        self.num_examples += len(batch.example_ids)
        for row in range(relevance.shape[0]):
            tokens = batch.token_mask[row].cpu()
            images = batch.image_token_mask[row].cpu()
            if not tokens.any():
                continue
            self.num_tokens += int(tokens.sum())
            predicted = relevance[row][tokens][:, images].numpy()
            reference = batch.teacher_maps[row].cpu()[tokens][:, images].numpy()
            self.token_correlations.append(spearman_rows(predicted, reference))

    def compute(self) -> dict[str, float]:
        true_positives, false_positives, true_negatives, false_negatives = (int(c) for c in self.counts)
        metrics = binary_metrics(true_positives, false_positives, true_negatives, false_negatives)
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=bool)
        metrics["auroc"] = auroc(scores, labels)
        correlations = np.concatenate(self.token_correlations) if self.token_correlations else np.zeros(0)
        correlations = correlations[~np.isnan(correlations)]
        metrics["spearman"] = float(correlations.mean()) if correlations.size else math.nan
        metrics["positive_rate"] = float(labels.mean()) if labels.size else math.nan
        return metrics


# ---------------------------------------------------------------------------------------------- the API
def check_head_matches_shards(head: FastRMHead, model_info: dict[str, Any], *, check_base_model: bool = True) -> None:
    """Refuses a head made for another model than the one the shards come from, naming both."""
    shard_model = types.SimpleNamespace(
        hidden_size=model_info.get("hidden_size"),
        model_type=model_info.get("model_type"),
        _name_or_path=model_info.get("model_name_or_path") or "",
    )
    try:
        head.check_compatible(shard_model, check_base_model=check_base_model)
    except ValueError as error:
        raise ValueError(f"The head does not match the shards' model. {error}") from error


@torch.no_grad()
def evaluate_dataset(
    head: FastRMHead,
    dataset: ShardDataset,
    *,
    label_threshold: float,
    decision_threshold: float = 0.5,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Metrics of `head` on every example of `dataset` (see the module docstring); also counts and sizes."""
    device = torch.device(device) if device is not None else next(head.parameters()).device
    head = head.to(device).eval()
    accumulator = MetricAccumulator(decision_threshold=decision_threshold)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_examples)
    for batch in logging.tqdm(loader, desc="evaluate", unit="batch", disable=not show_progress):
        labels = make_labels(batch, label_threshold)
        batch_on_device = batch.to(device)
        logits = head.logits(
            batch_on_device.token_states,
            batch_on_device.image_states,
            batch_on_device.text_states,
            batch_on_device.text_token_mask,
        )
        accumulator.add(logits, labels, batch)
    metrics = accumulator.compute()
    true_positives, false_positives, true_negatives, false_negatives = (int(c) for c in accumulator.counts)
    return {
        "metrics": metrics,
        "counts": {
            "true_positives": true_positives,
            "false_positives": false_positives,
            "true_negatives": true_negatives,
            "false_negatives": false_negatives,
        },
        "num_examples": accumulator.num_examples,
        "num_tokens": accumulator.num_tokens,
        "num_entries": true_positives + false_positives + true_negatives + false_negatives,
        "label_threshold": label_threshold,
        "decision_threshold": decision_threshold,
    }


def evaluate_head(
    arguments: EvaluateArguments | FastRMHead | str | os.PathLike,
    shards: str | os.PathLike | list[str | os.PathLike] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluates a head against the teacher maps in shards.

    Args:
        arguments ([`EvaluateArguments`], or the head): every option in one dataclass (what `hf-fastrm evaluate`
            parses); or, as a shorthand, the head (a [`FastRMHead`], a folder or a Hub repo id), with `shards` and
            the other [`EvaluateArguments`] fields as keyword arguments.

    Returns:
        A report: ``metrics`` (accuracy, precision, recall, f1, auroc, spearman, positive_rate), ``counts``, sizes,
        thresholds, and what was evaluated.

    Raises:
        ValueError: for a head made for another model than the shards', or shards of different models.
    """
    if not isinstance(arguments, EvaluateArguments):
        arguments = EvaluateArguments(head=arguments, shards=shards, **options)
    elif shards is not None or options:
        raise TypeError("Pass either an EvaluateArguments or the head with keyword options, not both.")
    return _evaluate_head(**{f.name: getattr(arguments, f.name) for f in dataclasses.fields(arguments)})


def _evaluate_head(
    head: FastRMHead | str | os.PathLike,
    shards: str | os.PathLike | list[str | os.PathLike],
    *,
    label_threshold: float | None = None,
    decision_threshold: float = 0.5,
    split: str = "all",
    val_fraction: float | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    json_path: str | os.PathLike | None = None,
    check_base_model: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """[`evaluate_head`] with its options unpacked (see [`EvaluateArguments`]).

    Args:
        head: a [`FastRMHead`], or a folder / Hub repo id to load one from.
        shards: a shard folder written by [`distill`] (held out from training), or several.
        label_threshold (`float`, *optional*): threshold on min-max-normalised teacher maps; the head's
            ``config.label_threshold`` by default.
        decision_threshold (`float`, *optional*, defaults to 0.5): threshold on the head's relevance.
        split (`str`, *optional*, defaults to ``"all"``): ``"all"`` examples, or the ``"train"`` / ``"validation"``
            part of the deterministic split [`train_head`] makes with the same `val_fraction` and `seed`.
        val_fraction, seed (*optional*): those of the split; read from the head folder's ``training_info.json``
            when omitted (else 0.05 and 0, `train_head`'s defaults).
        batch_size, device: how to run the head (CPU by default).
        json_path (*optional*): also write the report there as JSON (atomically).
        check_base_model (`bool`, *optional*, defaults to `True`): also compare model names (see
            [`FastRMHead.check_compatible`]).

    Returns:
        A report: ``metrics`` (accuracy, precision, recall, f1, auroc, spearman, positive_rate), ``counts``, sizes,
        thresholds, and what was evaluated.

    Raises:
        ValueError: for a head made for another model than the shards', or shards of different models.
    """
    training_info: dict[str, Any] = {}
    if not isinstance(head, FastRMHead):
        head_source = os.fspath(head)
        info_path = os.path.join(head_source, "training_info.json")
        if os.path.isfile(info_path):
            with open(info_path, encoding="utf-8") as handle:
                training_info = json.load(handle).get("hyper_parameters", {})
        head = FastRMHead.from_pretrained(head)
    else:
        head_source = head.config.base_model_name_or_path and f"head for {head.config.base_model_name_or_path}"
    dataset = ShardDataset(shards)
    check_head_matches_shards(head, dataset.model_info, check_base_model=check_base_model)
    if split not in ("all", "train", "validation"):
        raise ValueError(f"`split` must be 'all', 'train' or 'validation', got {split!r}.")
    if split != "all":
        val_fraction = training_info.get("val_fraction", 0.05) if val_fraction is None else val_fraction
        seed = training_info.get("seed", 0) if seed is None else seed
        train_ids, val_ids = split_example_ids(dataset.all_example_ids, val_fraction, seed)
        dataset = ShardDataset(shards, example_ids=train_ids if split == "train" else val_ids)
    threshold = head.config.label_threshold if label_threshold is None else float(label_threshold)
    report = evaluate_dataset(
        head,
        dataset,
        label_threshold=threshold,
        decision_threshold=decision_threshold,
        batch_size=batch_size,
        device=device,
        show_progress=show_progress,
    )
    report.update(
        {
            "head": head_source,
            "base_model": dataset.model_info.get("model_name_or_path"),
            "shards": [os.fspath(s) for s in ([shards] if isinstance(shards, (str, os.PathLike)) else shards)],
            "split": split,
        }
    )
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(_json_safe(report), indent=2, sort_keys=True) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A printable table of a report's metrics and sizes."""
    rows = [(name, report["metrics"][name]) for name in (*METRIC_NAMES, "positive_rate")]
    rows += [
        ("examples", report["num_examples"]),
        ("tokens", report["num_tokens"]),
        ("image-token entries", report["num_entries"]),
        ("label threshold", report["label_threshold"]),
        ("decision threshold", report["decision_threshold"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
    for name, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
