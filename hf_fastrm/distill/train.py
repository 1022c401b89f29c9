"""`train_head`: fits a FastRMHead to the teacher's labels, data-parallel through `accelerate`.

Loss: binary cross-entropy with logits between the head's logits and ``minmax(teacher map) >= label_threshold``,
averaged over the image tokens of the usable answer tokens. The validation split is by example id (a hash of the id
and the seed), so it does not depend on shard order or on the number of processes. Each epoch ends with a checkpoint
(``accelerator.save_state``) that ``resume`` continues from; the head with the best validation F1 is saved with
`save_pretrained`, its metrics in ``config.metrics`` and in the model card.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup
from transformers.utils import logging

from ..config import FastRMConfig
from ..constants import DEFAULT_HEAD_DIM, DEFAULT_LABEL_THRESHOLD
from ..head import FastRMHead
from ..utils.io import atomic_write_text
from .arguments import TrainArguments
from .evaluate import METRIC_NAMES, binary_metrics, confusion_counts, evaluate_dataset, make_labels
from .launch import wants_cpu
from .shards import ShardDataset, collate_examples, split_example_ids

logger = logging.get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_INFO_NAME = "training_info.json"
"""Written next to the saved head: corpus, shards, split and hyper-parameters (read by `push_head`)."""


@dataclass
class TrainSummary:
    """What [`train_head`] did.

    Attributes:
        output_dir (`str`): where the best head is saved.
        best_epoch (`int`): 1-based epoch of the best head (by validation F1; the last epoch without validation).
        metrics (`dict`): the best head's validation metrics (as in its ``config.metrics``).
        history (`list[dict]`): per epoch, the mean training loss and validation metrics.
        num_train_examples, num_val_examples (`int`)
    """

    output_dir: str
    best_epoch: int
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    num_train_examples: int = 0
    num_val_examples: int = 0


class _HeadLogits(nn.Module):
    """The head's logits as `forward`, so that DistributedDataParallel sees the computation it synchronises."""

    def __init__(self, head: FastRMHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, *args: torch.Tensor | None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        """[`FastRMHead.logits`]: the same arguments, the same `(batch, tokens, image_tokens)` logits."""
        return self.head.logits(*args, **kwargs)


def masked_bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the `valid` entries (all `(B, T, N)`)."""
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=torch.float32)
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), reduction="none", pos_weight=weight
    )
    count = valid.sum()
    return (losses * valid).sum() / count.clamp(min=1)


def _local_batches(
    num_examples: int, batch_size: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool = True
) -> list[list[int]]:
    """This process's batches for `epoch`: a seeded permutation cut into global batches of ``batch_size * world``,
    wrapped around so every process takes the same number of steps."""
    if num_examples == 0:
        return []
    order = (
        torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        if shuffle
        else torch.arange(num_examples)
    )
    global_batch = batch_size * world
    steps = math.ceil(num_examples / global_batch)
    padded = order.repeat(math.ceil(steps * global_batch / num_examples))[: steps * global_batch]
    return [
        padded[step * global_batch + rank * batch_size : step * global_batch + (rank + 1) * batch_size].tolist()
        for step in range(steps)
    ]


def train_head(
    arguments: TrainArguments | str | os.PathLike | list[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    **options: Any,
) -> TrainSummary:
    """Trains a [`FastRMHead`] on distilled shards. Run it in one process or under ``accelerate launch``.

    Args:
        arguments ([`TrainArguments`], or the shards): every option in one dataclass (what `hf-fastrm train`
            parses); or, as a shorthand, the shard folder(s), with `output_dir` and the other [`TrainArguments`]
            fields as keyword arguments (``train_head("shards/", "head/", epochs=3)``).

    Returns:
        A [`TrainSummary`].

    Raises:
        ValueError: for shards of different models or no training example.
    """
    if not isinstance(arguments, TrainArguments):
        arguments = TrainArguments(shards=arguments, output_dir=output_dir, **options)
    elif output_dir is not None or options:
        raise TypeError("Pass either a TrainArguments or the shards with keyword options, not both.")
    options = {f.name: getattr(arguments, f.name) for f in dataclasses.fields(arguments)}
    options["resume"] = True if options["resume"] == "latest" else (options["resume"] or False)
    options["save_total_limit"] = options["save_total_limit"] or None
    return _train_head(**options)


def _train_head(
    shards: str | os.PathLike | list[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    head_dim: int = DEFAULT_HEAD_DIM,
    label_threshold: float = DEFAULT_LABEL_THRESHOLD,
    decision_threshold: float = 0.5,
    epochs: int = 5,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    pos_weight: float | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    resume: bool | str | os.PathLike = False,
    mixed_precision: str = "no",
    cpu: bool = False,
    num_workers: int = 0,
    save_total_limit: int | None = 2,
    show_progress: bool = True,
    head_type: str = "fastrm",
) -> TrainSummary:
    """The training loop of [`train_head`] (see [`TrainArguments`] for the options).

    Args:
        shards: a folder of shards written by [`distill`] (or several folders); all from one model.
        output_dir: where the best head (``fastrm_config.json``, ``fastrm_head.safetensors``, ``README.md``),
            ``training_info.json`` and ``checkpoints/epoch-*`` go.
        head_dim (`int`, *optional*, defaults to 256): width ``k`` of the head.
        label_threshold (`float`, *optional*, defaults to 0.3): labels are min-max-normalised teacher maps at or
            above it.
        decision_threshold (`float`, *optional*, defaults to 0.5): threshold on the head's relevance for the
            validation metrics.
        epochs, batch_size (per process), learning_rate, weight_decay, warmup_ratio: AdamW with linear warm-up and
            cosine decay.
        pos_weight (`float`, *optional*): weight of the positive entries in the loss (for rare positives).
        val_fraction (`float`, *optional*, defaults to 0.05): share of examples (by id) held out for validation.
        seed (`int`, *optional*, defaults to 0): seeds the head's initialisation and the batch order.
        resume: `True` to continue from the latest checkpoint in `output_dir`, or a checkpoint folder.
        mixed_precision (`str`, *optional*, defaults to ``"no"``): as in `accelerate` (``"bf16"``, ``"fp16"``).
        cpu (`bool`, *optional*, defaults to `False`): force the CPU even when a GPU is there.
        num_workers (`int`, *optional*, defaults to 0): DataLoader workers reading the shards.
        save_total_limit (`int`, *optional*, defaults to 2): keep only the newest checkpoints (None keeps all).
        head_type (`str`, *optional*, defaults to ``"fastrm"``): the paper's head, or ``"question_aware"`` (outside
            the paper: also reads the prompt's text tokens; needs shards that hold them, see `FastRMConfig`).

    Returns:
        A [`TrainSummary`].

    Raises:
        ValueError: for shards of different models or no training example.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    output_dir = os.fspath(output_dir)
    accelerator = Accelerator(cpu=wants_cpu(cpu), mixed_precision=mixed_precision)
    set_seed(seed)
    everything = ShardDataset(shards)
    model_info = everything.model_info
    train_ids, val_ids = split_example_ids(everything.all_example_ids, val_fraction, seed)
    if not train_ids:
        raise ValueError(f"No training example in {shards!r} (found {len(everything.all_example_ids)} examples).")
    train_set = ShardDataset(shards, example_ids=train_ids)
    val_set = ShardDataset(shards, example_ids=val_ids) if val_ids else None
    corpus = everything.infos[0].metadata.get("corpus")
    if head_type == "question_aware" and not everything.has_text_states:
        raise ValueError(
            f"A question-aware head trains on the prompt's text states, which the shards in {shards!r} lack (written "
            "before they were stored). Distil them again with this version of `hf-fastrm distill`."
        )

    config = FastRMConfig(
        hidden_size=int(model_info["hidden_size"]),
        head_dim=head_dim,
        base_model_name_or_path=model_info["model_name_or_path"],
        base_model_revision=model_info["model_revision"],
        model_type=model_info["model_type"],
        label_threshold=label_threshold,
        head_type=head_type,
    )
    head = FastRMHead(config)
    trainable = _HeadLogits(head)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=learning_rate, weight_decay=weight_decay)
    rank, world = accelerator.process_index, accelerator.num_processes
    steps_per_epoch = len(_local_batches(len(train_set), batch_size, 0, seed, rank, world))
    total_steps = max(1, steps_per_epoch * epochs)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    hyper_parameters = {
        "head_dim": head_dim,
        "label_threshold": label_threshold,
        "decision_threshold": decision_threshold,
        "epochs": epochs,
        "batch_size": batch_size,
        "num_processes": world,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio,
        "pos_weight": pos_weight,
        "val_fraction": val_fraction,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "head_type": head_type,
    }
    state: dict[str, Any] = {"epoch": 0, "global_step": 0, "best_f1": -1.0, "best_epoch": 0, "history": []}
    checkpoint = _find_checkpoint(output_dir, resume) if resume else None
    if checkpoint is not None:
        accelerator.load_state(checkpoint)
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            state = json.load(handle)
        changed = [k for k, v in hyper_parameters.items() if state.get("hyper_parameters", {}).get(k, v) != v]
        if changed:
            logger.warning(f"Resuming from {checkpoint!r} with changed settings {changed}.")
        logger.info(f"Resumed from {checkpoint!r} after epoch {state['epoch']}.")
    state["hyper_parameters"] = hyper_parameters

    for epoch in range(state["epoch"], epochs):
        trainable.train()
        batches = _local_batches(len(train_set), batch_size, epoch, seed, rank, world)
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=batches, collate_fn=collate_examples, num_workers=num_workers
        )
        loss_sum = torch.zeros((), device=accelerator.device)
        progress = logging.tqdm(
            loader,
            desc=f"train epoch {epoch + 1}/{epochs}",
            unit="batch",
            disable=not show_progress or not accelerator.is_local_main_process,
        )
        for batch in progress:
            labels = make_labels(batch, label_threshold).to(accelerator.device)
            batch = batch.to(accelerator.device)
            with accelerator.autocast():
                logits = trainable(batch.token_states, batch.image_states, batch.text_states, batch.text_token_mask)
            loss = masked_bce_loss(logits, labels, batch.valid_mask, pos_weight)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            loss_sum += loss.detach()
            state["global_step"] += 1
        mean_loss = float(accelerator.reduce(loss_sum, "mean")) / max(1, len(batches))
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": mean_loss}
        if val_set is not None:
            record.update(_validate(trainable, val_set, accelerator, label_threshold, decision_threshold, batch_size))
        state["history"].append(record)
        improved = val_set is None or record["f1"] > state["best_f1"]
        if improved:
            state["best_f1"] = record.get("f1", state["best_f1"])
            state["best_epoch"] = epoch + 1
            if accelerator.is_main_process:
                best = accelerator.unwrap_model(trainable).head
                best.config.metrics = {k: record[k] for k in ("accuracy", "precision", "recall", "f1") if k in record}
                best.save_pretrained(output_dir, corpus=corpus)
        state["epoch"] = epoch + 1
        _save_checkpoint(accelerator, output_dir, state, save_total_limit)
        if accelerator.is_main_process:
            logger.info(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))

    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        # The full metrics (AUROC and Spearman included) of the best head, on the validation split.
        best = FastRMHead.from_pretrained(output_dir)
        if val_set is not None:
            report = evaluate_dataset(
                best,
                val_set,
                label_threshold=label_threshold,
                decision_threshold=decision_threshold,
                batch_size=batch_size,
                device=accelerator.device,
            )
            metrics = {name: float(report["metrics"][name]) for name in METRIC_NAMES}
            metrics["num_val_examples"] = len(val_set)
        metrics["epoch"] = state["best_epoch"]
        best.config.metrics = metrics
        best.save_pretrained(output_dir, corpus=corpus)
        info = {
            "corpus": corpus,
            "shards": [os.fspath(s) for s in ([shards] if isinstance(shards, (str, os.PathLike)) else shards)],
            "base_model": model_info,
            "num_train_examples": len(train_set),
            "num_val_examples": len(val_ids),
            "best_epoch": state["best_epoch"],
            "history": state["history"],
            "hyper_parameters": hyper_parameters,
        }
        atomic_write_text(os.path.join(output_dir, TRAINING_INFO_NAME), json.dumps(info, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return TrainSummary(
        output_dir=output_dir,
        best_epoch=state["best_epoch"],
        metrics=metrics,
        history=state["history"],
        num_train_examples=len(train_set),
        num_val_examples=len(val_ids),
    )


@torch.no_grad()
def _validate(
    trainable: nn.Module,
    val_set: ShardDataset,
    accelerator: Any,
    label_threshold: float,
    decision_threshold: float,
    batch_size: int,
) -> dict[str, float]:
    """Accuracy/precision/recall/F1 on the validation split, each process taking every world-th example."""
    trainable.eval()
    indices = list(range(accelerator.process_index, len(val_set), accelerator.num_processes))
    subset = torch.utils.data.Subset(val_set, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=collate_examples)
    counts = torch.zeros(4, dtype=torch.long, device=accelerator.device)
    head = accelerator.unwrap_model(trainable).head
    for batch in loader:
        labels = make_labels(batch, label_threshold).to(accelerator.device)
        batch = batch.to(accelerator.device)
        logits = head.logits(batch.token_states, batch.image_states, batch.text_states, batch.text_token_mask)
        counts += confusion_counts(logits, labels, batch.valid_mask, decision_threshold)
    counts = accelerator.reduce(counts, "sum")
    return binary_metrics(*(int(c) for c in counts))


def _checkpoint_dirs(output_dir: str) -> list[str]:
    """Complete checkpoints (their trainer state is written last), oldest first."""
    found = glob.glob(os.path.join(output_dir, CHECKPOINTS_DIR, "epoch-*"))
    complete = [d for d in found if os.path.isfile(os.path.join(d, TRAINER_STATE_NAME))]
    return sorted(complete, key=lambda d: int(os.path.basename(d).split("-")[-1]))


def _find_checkpoint(output_dir: str, resume: bool | str | os.PathLike) -> str | None:
    if resume is True or resume == "latest":
        found = _checkpoint_dirs(output_dir)
        if not found:
            logger.warning(f"No checkpoint in {output_dir!r} to resume from: training from the start.")
            return None
        return found[-1]
    path = os.fspath(resume)
    if not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
        raise ValueError(f"{path!r} is not a complete training checkpoint (no {TRAINER_STATE_NAME}).")
    return path


def _save_checkpoint(accelerator: Any, output_dir: str, state: dict[str, Any], save_total_limit: int | None) -> None:
    path = os.path.join(output_dir, CHECKPOINTS_DIR, f"epoch-{state['epoch']:04d}")
    accelerator.save_state(path)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Written last: a checkpoint without it is incomplete and never resumed from.
        atomic_write_text(os.path.join(path, TRAINER_STATE_NAME), json.dumps(state, indent=2) + "\n")
        if save_total_limit:
            for old in _checkpoint_dirs(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
