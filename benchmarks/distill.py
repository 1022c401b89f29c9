"""Cost of the distillation pipeline per example: teacher pass (generate + gradient maps), shard bytes, head training.

    python benchmarks/distill.py --preset llava-7b --json distill-7b.json        # LLaVA-1.5-7B shapes, bf16, CUDA
    python benchmarks/distill.py --preset cpu-mid --num-layers 1 --examples 4     # the same code path, small, on CPU

A random model of the preset's shape (cost does not depend on the weights) and a synthetic corpus of random 336 px
images with short questions go through `hf_fastrm.distill.distill` (the real pipeline: processor, greedy generation,
teacher, shard writing), once for warm-up and once measured; then `train_head` runs on the shards. Answers are as
long as the random model makes them (``--max-new-tokens`` at most; random weights rarely stop early), so the
figures are for answers of that length: short VQA answers cost less in the teacher (one backward per token).

Reports: seconds per example of model work (generation + teacher), peak accelerator memory, bytes of shard per
example (measured, and the ``(N + T) * H * bytes`` estimate), and training throughput in examples per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_fastrm.distill import distill, train_head  # noqa: E402
from hf_fastrm.distill.corpus import Corpus  # noqa: E402
from hf_fastrm.distill.shards import list_shards, read_shard_info  # noqa: E402
from hf_fastrm.testing_utils import benchmark_llava, tiny_llava_processor  # noqa: E402

PROMPT_TEMPLATE = "w5 w6 {image}\n{question} w7 w8"
"""LLaVA-1.5's prompt shape ("USER: <image>\n... ASSISTANT:") in the benchmark vocabulary's words."""


def synthetic_corpus(count: int, question_words: int, seed: int) -> Corpus:
    from PIL import Image

    rng = np.random.default_rng(seed)
    questions = [" ".join(f"w{rng.integers(10, 30000)}" for _ in range(question_words)) for _ in range(count)]
    seeds = rng.integers(0, 2**31, size=count)

    def get_image(index: int):
        pixels = np.random.default_rng(seeds[index]).integers(0, 256, size=(336, 336, 3), dtype=np.uint8)
        return Image.fromarray(pixels)

    return Corpus([f"bench-{seed}-{i}" for i in range(count)], get_image, questions, "synthetic")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llava-7b", choices=["cpu-mid", "llava-7b"])
    parser.add_argument("--device", default=None, help="Default: cuda for llava-7b, cpu for cpu-mid.")
    parser.add_argument("--num-layers", type=int, default=None, help="Override the language model's depth.")
    parser.add_argument("--examples", type=int, default=16, help="Examples in the measured distill run.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--question-words", type=int, default=8)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="Where shards go (default: a temporary folder).")
    parser.add_argument("--json", default=None, help="Also write the figures to this file.")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if args.preset == "llava-7b" else "cpu")

    began = time.perf_counter()
    model = benchmark_llava(args.preset, device, num_layers=args.num_layers)
    build_seconds = time.perf_counter() - began
    text_config = model.config.get_text_config()
    processor = tiny_llava_processor(
        image_size=model.config.vision_config.image_size,
        patch_size=model.config.vision_config.patch_size,
        vocab_size=text_config.vocab_size,
        image_token_id=model.config.image_token_id,
        words=(),
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = args.output_dir or scratch
        common = dict(
            processor=processor,
            prompt_template=PROMPT_TEMPLATE,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            examples_per_shard=max(args.batch_size, 64),
            show_progress=False,
        )
        distill(model, synthetic_corpus(args.batch_size, args.question_words, 1), f"{root}/warmup", **common)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        summary = distill(model, synthetic_corpus(args.examples, args.question_words, 2), f"{root}/shards", **common)
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        paths = list_shards(f"{root}/shards")
        infos = [read_shard_info(path) for path in paths]
        shard_bytes = sum(os.path.getsize(path) for path in paths)
        image_tokens = [n for info in infos for n in info.num_image_tokens]
        answer_tokens = [t for info in infos for t in info.num_tokens]
        hidden = text_config.hidden_size
        estimate = float(np.mean([(n + t) * hidden * 2 for n, t in zip(image_tokens, answer_tokens, strict=True)]))

        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        began = time.perf_counter()
        train_head(
            f"{root}/shards",
            f"{root}/head",
            epochs=args.train_epochs,
            batch_size=min(16, args.examples),
            val_fraction=0.0,
            cpu=not device.startswith("cuda"),
            show_progress=False,
            save_total_limit=1,
        )
        train_seconds = time.perf_counter() - began

    figures = {
        "preset": args.preset,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "num_layers": text_config.num_hidden_layers,
        "hidden_size": hidden,
        "examples": summary.num_new_examples,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "mean_answer_tokens": float(np.mean(answer_tokens)),
        "mean_image_tokens": float(np.mean(image_tokens)),
        "model_build_seconds": round(build_seconds, 2),
        "teacher_pass_seconds_per_example": round(summary.seconds / summary.num_new_examples, 4),
        "peak_memory_gib": None if peak_gib is None else round(peak_gib, 2),
        "shard_bytes_per_example": round(shard_bytes / summary.num_new_examples),
        "shard_bytes_per_example_estimate_bf16": round(estimate),
        "train_examples_per_second": round(args.train_epochs * summary.num_new_examples / train_seconds, 1),
        "train_seconds_incl_setup": round(train_seconds, 2),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return figures


if __name__ == "__main__":
    main()
