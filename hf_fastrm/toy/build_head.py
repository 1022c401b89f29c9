"""Distils the FastRM head of the shipped toy model with the project's pipeline (``python -m hf_fastrm.toy.build_head``).

Every step is the public `hf_fastrm.distill` API, as a user would run it on a real model:

1. a corpus of seeded toy scenes and questions, written as a folder of PNG images with a ``questions.jsonl``
   (training stream ``head-train:<seed>``, held-out stream ``head-test:<seed>``; both disjoint from
   `hf_fastrm.toy.train`'s ``train:``, ``validation:`` and ``test:`` streams);
2. `distill`: greedy answers and the gradient teacher's maps, written as shards (one folder per stream);
3. `train_head`: the head, its best epoch chosen on a validation split of the training shards;
4. `evaluate_head`: F1, AUROC and Spearman against the teacher on the held-out shards.

The head is saved with `save_pretrained` into a temporary folder next to `--output-dir` and renamed into place, with
the held-out metrics in its ``config.metrics`` and model card. Seeded end to end: the same arguments give the same
head on the same software.

``--head-type question_aware --output-dir hf_fastrm/toy/assets/head-question-aware`` builds the second shipped head,
the question-aware one (outside the paper's design; `hf_fastrm.toy.QUESTION_AWARE_HEAD_DIR`) on the same streams.
``--work-dir`` keeps the corpus and shards; a later build with the same ``--work-dir`` reuses complete shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any

import torch
from transformers.utils import logging

from ..utils.io import atomic_write_text
from . import DEFAULT_HEAD_DIR, DEFAULT_MODEL_DIR
from .scenes import make_examples

logger = logging.get_logger(__name__)

TOY_MODEL_ID = "hf_fastrm/toy/assets/model"
"""The base model's name in the head's config: portable (no machine path), and its last component matches the
shipped model's folder name, which `FastRMHead.check_compatible` compares."""
TRAIN_STREAM = "head-train"
TEST_STREAM = "head-test"
BUILD_INFO_NAME = "build_info.json"


def write_corpus(folder: str | os.PathLike, num_examples: int, stream: str) -> str:
    """Writes `num_examples` seeded scenes as PNG files and their questions as ``questions.jsonl`` in `folder`.

    Example ``i`` is ``make_examples(..., seed=stream)[i]`` (`hf_fastrm.toy.scenes.example_rng`); its id is
    ``f"{stream}-{i}"``. Returns the folder.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for index, (scene, question) in enumerate(make_examples(num_examples, seed=stream)):
        name = f"{index:06d}.png"
        scene.image.save(os.path.join(folder, name))
        record = {"id": f"{stream}-{index}", "image": name, "question": question.text, "answer": question.answer}
        lines.append(json.dumps(record))
    atomic_write_text(os.path.join(folder, "questions.jsonl"), "\n".join(lines) + "\n")
    return folder


def build_head(
    output_dir: str | os.PathLike = DEFAULT_HEAD_DIR,
    *,
    model_dir: str | os.PathLike = DEFAULT_MODEL_DIR,
    work_dir: str | os.PathLike | None = None,
    train_examples: int = 4000,
    test_examples: int = 500,
    head_dim: int = 128,
    label_threshold: float = 0.3,
    teacher_target: str = "logit",
    epochs: int = 80,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    show_progress: bool = True,
    head_type: str = "fastrm",
) -> dict[str, Any]:
    """Builds the toy model's head and saves it in `output_dir` (replaced atomically). Returns the build record.

    Args:
        output_dir: where the head goes (the package's `DEFAULT_HEAD_DIR` by default).
        model_dir: the toy model (the shipped one by default).
        work_dir (*optional*): where the corpus and shards go (a temporary folder, removed afterwards, by default).
        train_examples, test_examples (`int`): corpus sizes of the training and held-out streams.
        head_dim, label_threshold, teacher_target, epochs, batch_size, learning_rate, val_fraction, seed: passed to
            `distill` and `train_head` (the seed also names the scene streams).
        device (`str`, *optional*, defaults to ``"cpu"``): where the teacher runs.
        head_type (`str`, *optional*, defaults to ``"fastrm"``): the paper's head, or ``"question_aware"`` (outside
            the paper's design: also reads the prompt's text tokens; `hf_fastrm.FastRMConfig`).

    Returns:
        `dict`: settings, held-out metrics, validation metrics, timings.
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from ..distill import distill, evaluate_head, train_head
    from ..head import FastRMHead

    if train_examples < 2 or test_examples < 1:
        raise ValueError("`train_examples` must be at least 2 and `test_examples` at least 1.")
    output_dir = os.path.abspath(os.fspath(output_dir))
    torch.manual_seed(seed)
    started = time.perf_counter()
    owns_work_dir = work_dir is None
    work_dir = tempfile.mkdtemp(prefix="fastrm-toy-head-") if work_dir is None else os.fspath(work_dir)
    try:
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        processor = LlavaProcessor.from_pretrained(model_dir)
        model.config._name_or_path = TOY_MODEL_ID  # recorded in the shards and the head's config
        streams = {"train": f"{TRAIN_STREAM}:{seed}", "test": f"{TEST_STREAM}:{seed}"}
        sizes = {"train": train_examples, "test": test_examples}
        timings: dict[str, float] = {}
        shard_dirs = {}
        for split, stream in streams.items():
            corpus_dir = write_corpus(os.path.join(work_dir, f"corpus-{split}"), sizes[split], stream)
            shard_dirs[split] = os.path.join(work_dir, f"shards-{split}")
            if _complete_shards(shard_dirs[split], sizes[split]):
                timings[f"distill_{split}_s"] = 0.0  # a kept --work-dir: the same corpus, already distilled
                continue
            began = time.perf_counter()
            distill(
                model,
                corpus_dir,
                shard_dirs[split],
                processor=processor,
                device=device,
                max_new_tokens=4,
                batch_size=64,
                examples_per_shard=1024,
                storage_dtype=torch.float32,
                teacher_target=teacher_target,
                show_progress=show_progress,
            )
            timings[f"distill_{split}_s"] = round(time.perf_counter() - began, 1)

        began = time.perf_counter()
        trained_dir = os.path.join(work_dir, "trained")
        summary = train_head(
            shard_dirs["train"],
            trained_dir,
            head_dim=head_dim,
            label_threshold=label_threshold,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            val_fraction=val_fraction,
            seed=seed,
            cpu=torch.device(device).type == "cpu",
            save_total_limit=1,
            show_progress=show_progress,
            head_type=head_type,
        )
        timings["train_s"] = round(time.perf_counter() - began, 1)
        report = evaluate_head(trained_dir, shard_dirs["test"], show_progress=False)
        test_metrics = {name: float(value) for name, value in report["metrics"].items()}

        head = FastRMHead.from_pretrained(trained_dir)
        head.config.metrics = {
            **{f"test_{name}": value for name, value in test_metrics.items()},
            "test_examples": int(report["num_examples"]),
            "test_tokens": int(report["num_tokens"]),
            **{f"validation_{name}": value for name, value in summary.metrics.items()},
        }
        record = {
            "command": "python -m hf_fastrm.toy.build_head"
            + (f" --head-type {head_type}" if head_type != "fastrm" else ""),
            "base_model": TOY_MODEL_ID,
            "seed_streams": streams,
            "train_examples": train_examples,
            "test_examples": test_examples,
            "teacher_target": teacher_target,
            "head_type": head_type,
            "head_dim": head_dim,
            "label_threshold": label_threshold,
            "epochs": epochs,
            "best_epoch": summary.best_epoch,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "val_fraction": val_fraction,
            "seed": seed,
            "test_metrics": test_metrics,
            "validation_metrics": summary.metrics,
            "history": summary.history,
            "timings": timings,
            "torch": torch.__version__,
        }
        description = _card_description(record)
        _save_atomically(head, output_dir, record, description, corpus=f"hf_fastrm.toy.scenes ({streams['train']})")
        record["seconds"] = round(time.perf_counter() - started, 1)
        return record
    finally:
        if owns_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def _complete_shards(shard_dir: str, num_examples: int) -> bool:
    """Whether `shard_dir` already holds `num_examples` distilled examples with the prompt's text states."""
    from ..distill.shards import list_shards, read_shard_info

    if not os.path.isdir(shard_dir):
        return False
    infos = [read_shard_info(path) for path in list_shards(shard_dir)]
    return (
        sum(len(info.example_ids) for info in infos) == num_examples
        and bool(infos)
        and all(info.num_text_tokens is not None for info in infos)
    )


def _card_description(record: dict[str, Any]) -> str:
    test = record["test_metrics"]
    kind = (
        "A question-aware relevancy head (outside FastRM's design: its query also attends over the prompt's text "
        "tokens' last hidden states) for"
        if record.get("head_type") == "question_aware"
        else "A FastRM relevancy head (arXiv 2412.01487) for"
    )
    return (
        f"{kind} the toy LLaVA shipped in `hf_fastrm/toy/assets/model`, "
        "distilled with the `hf_fastrm.distill` pipeline by `python -m hf_fastrm.toy.build_head` (seed "
        f"{record['seed']}): {record['train_examples']} seeded scenes and questions (stream "
        f"`{record['seed_streams']['train']}`), gradient teacher maps (target `{record['teacher_target']}`), labels "
        f"at min-max >= {record['label_threshold']}, head width {record['head_dim']}, best of {record['epochs']} "
        f"epochs (epoch {record['best_epoch']}).\n\n"
        f"Held-out agreement with the teacher on {record['test_examples']} scenes (stream "
        f"`{record['seed_streams']['test']}`), over every answer token's image tokens: F1 {test['f1']:.3f}, "
        f"precision {test['precision']:.3f}, recall {test['recall']:.3f}, AUROC {test['auroc']:.3f}, Spearman "
        f"{test['spearman']:.3f}. Grounding against the scenes' true boxes: `python benchmarks/grounding.py`."
    )


def _save_atomically(head: Any, output_dir: str, record: dict[str, Any], description: str, corpus: str) -> None:
    """save_pretrained into a sibling temporary folder, then swap it in (the old head is removed only afterwards)."""
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", suffix=".tmp", dir=parent)
    previous = None
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the head ships in the package
        head.save_pretrained(staging, corpus=corpus, description=description)
        atomic_write_text(os.path.join(staging, BUILD_INFO_NAME), json.dumps(record, indent=2) + "\n")
        if os.path.exists(output_dir):
            previous = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", suffix=".old", dir=parent)
            os.rmdir(previous)
            os.rename(output_dir, previous)
        os.rename(staging, output_dir)
    except BaseException:
        if previous is not None and not os.path.exists(output_dir):
            os.rename(previous, output_dir)
            previous = None
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_fastrm.toy.build_head", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=DEFAULT_HEAD_DIR, help="where the head goes (the shipped one)")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="the toy model (the shipped one)")
    parser.add_argument("--work-dir", default=None, help="keep the corpus and shards here (temporary otherwise)")
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--test-examples", type=int, default=500)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--label-threshold", type=float, default=0.3)
    parser.add_argument("--teacher-target", choices=("logit", "log_prob"), default="logit")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--head-type",
        default="fastrm",
        choices=("fastrm", "question_aware"),
        help="the paper's head, or the question-aware one (outside the paper: also reads the prompt's text tokens)",
    )
    args = parser.parse_args(argv)
    record = build_head(
        args.output_dir,
        model_dir=args.model_dir,
        work_dir=args.work_dir,
        train_examples=args.train_examples,
        test_examples=args.test_examples,
        head_dim=args.head_dim,
        label_threshold=args.label_threshold,
        teacher_target=args.teacher_target,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        head_type=args.head_type,
    )
    test = record["test_metrics"]
    print(f"saved the head to {os.path.abspath(args.output_dir)} in {record['seconds']:.0f} s")
    print(
        f"held-out ({record['test_examples']} scenes): F1 {test['f1']:.4f}  precision {test['precision']:.4f}  "
        f"recall {test['recall']:.4f}  AUROC {test['auroc']:.4f}  Spearman {test['spearman']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
