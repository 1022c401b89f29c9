"""Trains the toy LLaVA on synthetic scenes from scratch, reproducibly: ``python -m hf_fastrm.toy.train``.

Recipe (see /work/shared/FINDINGS.md, "Training a toy LLaVA from scratch"): 48 px scenes, 8 px patches (36 image
tokens), a CLIP tower 96 wide x 3 layers and a Llama decoder 128 wide x 3 layers (0.78 M parameters), AdamW
(betas 0.9/0.98) at 5e-4 with 300 linear warm-up steps then a cosine decay to a tenth, gradient clipping at 1.0,
loss on the answer tokens (and the closing ``</s>``) only. Scenes are pre-rendered once into a uint8 pool on the
device; each scene carries several questions; a step draws a random batch of (scene, question) rows.

Three disjoint seed streams (see `scenes.example_rng`): ``train:<seed>`` for the pool, ``validation:<seed>`` for
the periodic evaluation that picks the best checkpoint and stops early, ``test:<seed>`` for the final held-out
accuracy, measured with ``generate()`` (greedy) through the processor, exactly as a user would run the model.

On one GPU (about 1-2 minutes on an H200)::

    python -m hf_fastrm.toy.train --device cuda --steps 8000 --batch-size 256 --max-minutes 3

On CPU (slow: hours for the full recipe; use a smaller batch)::

    nice -n 10 python -m hf_fastrm.toy.train --device cpu --batch-size 64 --steps 12000 --output-dir /tmp/toy

The output folder (default: the package's ``toy/assets/model``) is written to a temporary sibling folder and
renamed into place at the end, so it never holds a half-written model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging as std_logging
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils import logging

from .modeling import (
    BOS_TOKEN,
    EOS_TOKEN,
    IMAGE_MEAN,
    IMAGE_STD,
    IMAGE_TOKEN,
    PAD_TOKEN,
    build_config,
    build_processor,
    format_prompt,
    image_tokens_per_image,
)
from .scenes import QUESTION_KINDS, Question, Scene, ask_question, draw_scene, example_rng, make_examples

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
PACKAGE_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "model")
TRAINING_LOG_NAME = "training_log.json"


# --------------------------------------------------------------------------------------------------- data
@dataclass
class EncodedExamples:
    """(scene, question) rows as training tensors.

    Attributes:
        images (`torch.ByteTensor` of shape `(scenes, 3, image_size, image_size)`): the scenes' pixels.
        input_ids (`torch.LongTensor` of shape `(rows, length)`): ``<s> <image>*n question answer </s>``, padded
            on the right with ``<pad>``.
        attention_mask (`torch.LongTensor` of shape `(rows, length)`).
        labels (`torch.LongTensor` of shape `(rows, length)`): the token ids of the answer and ``</s>``,
            `IGNORE_INDEX` elsewhere (label at position ``j`` is the token the model predicts from position
            ``j - 1``).
        scene_index (`torch.LongTensor` of shape `(rows,)`): each row's scene in `images`.
        kinds (`list[str]`), present (`list[bool]`): each row's question kind and whether its object is there.
    """

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    scene_index: torch.Tensor
    kinds: list[str]
    present: list[bool]

    def to(self, device: torch.device | str) -> EncodedExamples:
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("images", "input_ids", "attention_mask", "labels", "scene_index")
        }
        return EncodedExamples(**tensors, kinds=self.kinds, present=self.present)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode_examples(
    scenes: Sequence[Scene], questions: Sequence[Question], scene_index: Sequence[int], tokenizer, image_tokens: int
) -> EncodedExamples:
    """Token ids as the processor builds them for ``format_prompt(question.text)``, followed by the answer.

    Args:
        scenes: the distinct scenes; `scene_index[i]` is the scene of `questions[i]`.
        image_tokens: image tokens per image (36 for 48 px images and 8 px patches).
    """
    bos, eos, pad, image = tokenizer.convert_tokens_to_ids([BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN])
    question_ids = tokenizer([question.text for question in questions], add_special_tokens=False).input_ids
    answer_ids = tokenizer([question.answer for question in questions], add_special_tokens=False).input_ids
    prefix = [bos] + [image] * image_tokens
    rows = [prefix + asked + answered + [eos] for asked, answered in zip(question_ids, answer_ids, strict=True)]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, answered) in enumerate(zip(rows, answer_ids, strict=True)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        answer_start = len(ids) - len(answered) - 1
        labels[row, answer_start : len(ids)] = input_ids[row, answer_start : len(ids)]
    images = torch.from_numpy(np.stack([scene.pixels() for scene in scenes])).permute(0, 3, 1, 2).contiguous()
    return EncodedExamples(
        images=images,
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        scene_index=torch.tensor(list(scene_index), dtype=torch.long),
        kinds=[question.kind for question in questions],
        present=[question.present for question in questions],
    )


def build_pool(num_scenes: int, questions_per_scene: int, seed: int, tokenizer, image_tokens: int):
    """The training pool: scene ``i`` is drawn from ``example_rng(f"train:{seed}", i)`` and asked
    `questions_per_scene` questions (kinds cycled)."""
    scenes, questions, scene_index = [], [], []
    for index in tqdm(range(num_scenes), desc="rendering scenes", mininterval=5, disable=num_scenes < 2000):
        rng = example_rng(f"train:{seed}", index)
        scene = draw_scene(rng)
        scenes.append(scene)
        for number in range(questions_per_scene):
            questions.append(ask_question(scene, rng, QUESTION_KINDS[number % len(QUESTION_KINDS)]))
            scene_index.append(index)
    return encode_examples(scenes, questions, scene_index, tokenizer, image_tokens)


def held_out_examples(stream: str, num: int, seed: int) -> list[tuple[Scene, Question]]:
    """Held-out examples from the stream ``f"{stream}:{seed}"`` (disjoint from the training stream)."""
    return make_examples(num, seed=f"{stream}:{seed}")


def encode_held_out(examples: list[tuple[Scene, Question]], tokenizer, image_tokens: int) -> EncodedExamples:
    scenes = [scene for scene, _ in examples]
    questions = [question for _, question in examples]
    return encode_examples(scenes, questions, range(len(examples)), tokenizer, image_tokens)


def image_token_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(batch, 3, h, w)` pixels to the model's `pixel_values`, exactly as the CLIP image processor does."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() * (1 / 255) - mean) / std


# --------------------------------------------------------------------------------------------------- evaluation
def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: `logits` `(batch, length, vocab)`, `labels` `(batch, length)`."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


@torch.no_grad()
def teacher_forced_correct(model, data: EncodedExamples, *, batch_size: int = 512, bf16: bool = False) -> torch.Tensor:
    """Whether greedy decoding would produce each row's answer then ``</s>``: every answer position's arg-max
    equals the label (exactly what greedy `generate()` checks, in one forward pass).

    Returns:
        `torch.BoolTensor` of shape `(rows,)`, on the CPU.
    """
    was_training = model.training
    model.eval()
    device = data.input_ids.device
    results = []
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        with _autocast(device, bf16):
            logits = model(
                input_ids=data.input_ids[rows],
                attention_mask=data.attention_mask[rows],
                pixel_values=normalise_images(data.images[data.scene_index[rows]]),
            ).logits
        predicted = logits[:, :-1].argmax(-1)
        labels = data.labels[rows, 1:]
        results.append(((predicted == labels) | (labels == IGNORE_INDEX)).all(-1).cpu())
    model.train(was_training)
    return torch.cat(results)


def accuracy_report(correct: Sequence[bool], kinds: Sequence[str], present: Sequence[bool]) -> dict[str, Any]:
    """Overall accuracy, per question kind, and for present and absent objects."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for is_correct, kind, is_present in zip(correct, kinds, present, strict=True):
        is_correct = bool(is_correct)
        groups["overall"].append(is_correct)
        groups[kind].append(is_correct)
        groups["present" if is_present else "absent"].append(is_correct)
        groups[f"{kind}/{'present' if is_present else 'absent'}"].append(is_correct)
    return {
        name: {"accuracy": float(np.mean(values)), "count": len(values)} for name, values in sorted(groups.items())
    }


def format_report(report: dict[str, Any]) -> str:
    names = ["overall", *QUESTION_KINDS, "present", "absent"]
    return " ".join(f"{name}={report[name]['accuracy']:.3f}" for name in names if name in report)


@torch.no_grad()
def generate_answers(
    model, processor, examples: Sequence[tuple[Scene, Question]], *, batch_size: int = 256, max_new_tokens: int = 4
) -> list[str]:
    """Greedy answers through the processor and `generate()`, as a user gets them."""
    was_training = model.training
    model.eval()
    answers = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs = processor(
            images=[scene.image for scene, _ in chunk],
            text=[format_prompt(question.text) for _, question in chunk],
            return_tensors="pt",
            padding=True,
        ).to(model.device)
        sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    model.train(was_training)
    return answers


# --------------------------------------------------------------------------------------------------- saving
def save_atomically(output_dir: str, write: Any) -> None:
    """Calls ``write(tmp_dir)`` on a fresh sibling folder of `output_dir`, then swaps it in place of `output_dir`."""
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", suffix=".tmp", dir=parent)
    try:
        write(tmp_dir)
        # package data must be readable by every user (mkdtemp and some writers create owner-only files)
        os.chmod(tmp_dir, 0o755)
        for name in os.listdir(tmp_dir):
            os.chmod(os.path.join(tmp_dir, name), 0o644)
        old_dir = None
        if os.path.exists(output_dir):
            old_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.", suffix=".old", dir=parent)
            os.rmdir(old_dir)
            os.rename(output_dir, old_dir)
        os.rename(tmp_dir, output_dir)
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def command_line(args: dict[str, Any]) -> str:
    """The command that reruns a training run with these arguments (the output folder left at its default)."""
    words = ["python -m hf_fastrm.toy.train"]
    for name, value in args.items():
        if name == "output_dir" or value is None or value is False:
            continue
        words.append(f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}"))
    return " ".join(words)


def model_card(log: dict[str, Any]) -> str:
    """The README.md of the saved model."""
    test = log["test"]
    order = ["overall", *QUESTION_KINDS, "present", "absent"]
    names = order + sorted(name for name in test["generate"] if name not in order)
    rows = "\n".join(
        f"| {name} | {test['generate'][name]['accuracy']:.3f} | {test['generate'][name]['count']} |"
        for name in names
        if name in test["generate"]
    )
    args = log["args"]
    command = command_line(args)
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
license: apache-2.0
tags:
- hf_fastrm
- llava
- synthetic
- toy
---

# hf_fastrm toy LLaVA

A tiny `LlavaForConditionalGeneration` ({log["parameters"] / 1e6:.2f} M parameters: a CLIP vision tower
{log["config"]["vision_width"]} wide x {log["config"]["vision_layers"]} layers, a Llama decoder
{log["config"]["text_width"]} wide x {log["config"]["text_layers"]} layers, a word-level tokenizer of
{log["config"]["vocab_size"]} tokens) trained from scratch by `hf_fastrm.toy.train` on the synthetic scenes of
`hf_fastrm.toy.scenes`: coloured shapes in the quadrants of a {log["config"]["image_size"]} px image, each with its
true box. It ships inside the `hf_fastrm` package so that `hf-fastrm explain` works offline and relevancy maps can
be checked against ground truth. It knows nothing but these scenes.

## Use

```python
from hf_fastrm.toy import load_default_model, load_default_processor
from hf_fastrm.toy.modeling import format_prompt
from hf_fastrm.toy.scenes import make_examples

model, processor = load_default_model(), load_default_processor()
scene, question = make_examples(1, seed="my-seed")[0]
inputs = processor(images=scene.image, text=format_prompt(question.text), return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(question.text, processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Prompt: `<image> what colour is the circle ?` (the processor expands `<image>` into
{log["config"]["image_tokens"]} tokens); the answer follows, then `</s>`. Questions: the colour of a named shape,
the shape of a named colour, the side or the corner of a named object; a question about an object that is not in
the scene is answered `none`.

## Training

`{command}`

{log["train"]["steps"]} steps of batch {args["batch_size"]} on `{log["device"]}` in {log["train"]["seconds"]:.0f} s
(AdamW, betas 0.9/0.98, learning rate {args["lr"]} after {args["warmup"]} warm-up steps, cosine decay, gradient
clipping 1.0, loss on the answer tokens only), from a pool of {args["pool_size"]} scenes x
{args["questions_per_scene"]} questions. The checkpoint kept is the best on {args["validation_examples"]} validation
examples (step {log["best"]["step"]}, validation accuracy {log["best"]["accuracy"]:.4f}). Full log:
`{TRAINING_LOG_NAME}`.

## Held-out accuracy

{test["examples"]} examples drawn from a seed stream disjoint from training and validation, answered with
greedy `generate()` through the processor (exact match of the whole answer):

| questions | accuracy | examples |
|---|---|---|
{rows}
"""


# --------------------------------------------------------------------------------------------------- training
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hf_fastrm.toy.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps (the schedule's length)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--output-dir", default=PACKAGE_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, the batches and the scene streams")
    parser.add_argument("--pool-size", type=int, default=30720, help="training scenes rendered up front")
    parser.add_argument("--questions-per-scene", type=int, default=8)
    parser.add_argument("--validation-examples", type=int, default=2048, help="for picking the best checkpoint")
    parser.add_argument("--eval-examples", type=int, default=2000, help="final held-out test, with generate()")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between validation evaluations")
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=0.999,
        help="stop once validation accuracy reaches this on --patience evaluations in a row",
    )
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="hard stop for training (from the start of the script); the best checkpoint is saved",
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (the weights stay float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--vision-width", type=int, default=96)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=3)
    parser.add_argument(
        "--init-from",
        default=None,
        help="a saved toy model folder to continue training from (its sizes replace the four above; the "
        "optimizer and the warm-up start afresh)",
    )
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    if min(args.steps, args.batch_size, args.pool_size, args.eval_every, args.questions_per_scene) < 1:
        parser.error("--steps, --batch-size, --pool-size, --eval-every and --questions-per-scene must be positive.")
    return args


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``args.lr``, then a cosine decay to a tenth of it at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the whole recipe and writes the model folder; returns the training log."""
    from transformers import LlavaForConditionalGeneration

    started = time.monotonic()
    deadline = None if args.max_minutes is None else started + 60 * args.max_minutes
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    processor = build_processor()
    tokenizer = processor.tokenizer
    if args.init_from:
        model = LlavaForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
        config = model.config
        if config.text_config.vocab_size != len(tokenizer) or config.image_token_index != image_token_id(tokenizer):
            raise ValueError(f"{args.init_from} does not hold a toy model of this version (vocabulary differs).")
        args.vision_width, args.vision_layers = (
            config.vision_config.hidden_size,
            config.vision_config.num_hidden_layers,
        )
        args.text_width, args.text_layers = config.text_config.hidden_size, config.text_config.num_hidden_layers
        logger.info(f"Continuing from {args.init_from}.")
    else:
        config = build_config(
            vision_width=args.vision_width,
            vision_layers=args.vision_layers,
            text_width=args.text_width,
            text_layers=args.text_layers,
        )
        model = LlavaForConditionalGeneration(config)
    image_tokens = image_tokens_per_image(config)
    model = model.to(device)
    model.set_attn_implementation("sdpa")
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(f"Toy LLaVA: {parameters / 1e6:.2f} M parameters on {device}.")

    pool = build_pool(args.pool_size, args.questions_per_scene, args.seed, tokenizer, image_tokens).to(device)
    validation = encode_held_out(
        held_out_examples("validation", args.validation_examples, args.seed), tokenizer, image_tokens
    ).to(device)
    logger.info(
        f"Pool: {args.pool_size} scenes x {args.questions_per_scene} questions, "
        f"{time.monotonic() - started:.1f} s after start."
    )

    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embed" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or "embed" in name]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    generator = torch.Generator(device=device).manual_seed(args.seed)

    history: list[dict[str, Any]] = []
    best = {"step": 0, "accuracy": -1.0, "state": None}
    streak = 0
    stop_reason = "steps"
    step = 0
    running_loss = torch.zeros((), device=device)
    running_count = 0
    model.train()
    progress = tqdm(total=args.steps, desc="training", mininterval=10, file=sys.stdout)
    train_started = time.monotonic()
    while step < args.steps:
        if deadline is not None and time.monotonic() > deadline:
            stop_reason = "max-minutes"
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        rows = torch.randint(len(pool), (args.batch_size,), device=device, generator=generator)
        with _autocast(device, args.bf16):
            logits = model(
                input_ids=pool.input_ids[rows],
                attention_mask=pool.attention_mask[rows],
                pixel_values=normalise_images(pool.images[pool.scene_index[rows]]),
            ).logits
        loss = answer_loss(logits, pool.labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running_loss += loss.detach()
        running_count += 1
        step += 1
        progress.update(1)

        if step % args.eval_every == 0 or step == args.steps:
            correct = teacher_forced_correct(model, validation, bf16=args.bf16)
            report = accuracy_report(correct.tolist(), validation.kinds, validation.present)
            accuracy = report["overall"]["accuracy"]
            mean_loss = (running_loss / max(1, running_count)).item()
            running_loss.zero_()
            running_count = 0
            elapsed = time.monotonic() - train_started
            history.append(
                {
                    "step": step,
                    "seconds": round(elapsed, 2),
                    "train_loss": mean_loss,
                    "lr": learning_rate(step, args),
                    "validation": {name: values["accuracy"] for name, values in report.items()},
                }
            )
            progress.write(f"step {step} ({elapsed:.0f} s) loss {mean_loss:.4f} validation {format_report(report)}")
            if accuracy >= best["accuracy"]:  # ties: the later, longer-trained checkpoint
                best = {"step": step, "accuracy": accuracy, "state": copy.deepcopy(model.state_dict())}
            streak = streak + 1 if accuracy >= args.target_accuracy else 0
            if streak >= args.patience:
                stop_reason = "target-accuracy"
                break
    progress.close()
    train_seconds = time.monotonic() - train_started
    if best["state"] is None or step % args.eval_every:
        # the last steps since the previous evaluation (or a run shorter than one interval): evaluate them too
        correct = teacher_forced_correct(model, validation, bf16=args.bf16)
        accuracy = accuracy_report(correct.tolist(), validation.kinds, validation.present)["overall"]["accuracy"]
        if accuracy >= best["accuracy"]:
            best = {"step": step, "accuracy": accuracy, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    model.eval()
    logger.info(
        f"Stopped after {step} steps ({stop_reason}, {train_seconds:.0f} s); best validation accuracy "
        f"{best['accuracy']:.4f} at step {best['step']}."
    )

    test_examples = held_out_examples("test", args.eval_examples, args.seed)
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.max_new_tokens = 4
    model.generation_config.do_sample = False
    answers = generate_answers(model, processor, test_examples)
    kinds = [question.kind for _, question in test_examples]
    present = [question.present for _, question in test_examples]
    generated = accuracy_report(
        [answer == question.answer for answer, (_, question) in zip(answers, test_examples, strict=True)],
        kinds,
        present,
    )
    forced = accuracy_report(
        teacher_forced_correct(model, encode_held_out(test_examples, tokenizer, image_tokens).to(device)).tolist(),
        kinds,
        present,
    )
    logger.info(f"Held-out test ({len(test_examples)} examples, generate): {format_report(generated)}")

    log = {
        "args": {name: value for name, value in vars(args).items() if name not in ("threads",)},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "parameters": parameters,
        "config": {
            "image_size": config.vision_config.image_size,
            "patch_size": config.vision_config.patch_size,
            "image_tokens": image_tokens,
            "vision_width": args.vision_width,
            "vision_layers": args.vision_layers,
            "text_width": args.text_width,
            "text_layers": args.text_layers,
            "vocab_size": config.text_config.vocab_size,
        },
        "seed_streams": {
            "train": f"train:{args.seed}",
            "validation": f"validation:{args.seed}",
            "test": f"test:{args.seed}",
        },
        "train": {"steps": step, "seconds": round(train_seconds, 1), "stop_reason": stop_reason},
        "best": {"step": best["step"], "accuracy": best["accuracy"]},
        "history": history,
        "test": {"examples": len(test_examples), "generate": generated, "teacher_forced": forced},
        "total_seconds": round(time.monotonic() - started, 1),
    }

    def write(folder: str) -> None:
        model.to("cpu").save_pretrained(folder)
        processor.save_pretrained(folder)
        with open(os.path.join(folder, TRAINING_LOG_NAME), "w", encoding="utf-8") as handle:
            json.dump(log, handle, indent=2, sort_keys=True)
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(model_card(log))

    save_atomically(args.output_dir, write)
    logger.info(f"Saved the model, processor, model card and {TRAINING_LOG_NAME} to {args.output_dir}")
    return log


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not logger.handlers:  # a script's progress lines; the library stays quiet when imported
        handler = std_logging.StreamHandler(sys.stdout)
        handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(std_logging.INFO)
    return train(args)


if __name__ == "__main__":
    main()
