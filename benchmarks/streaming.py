"""Per-token latency that FastRMStreamer adds to a generate() call with FastRM, from one run.

    python benchmarks/streaming.py                       # CPU: the shipped toy model and the mid-size random LLaVA
    python benchmarks/streaming.py --models toy --repeats 30 --json benchmarks/results/cpu-streaming.json

Two modes alternate (so drift hits both), each running generate() in a thread: FastRM's processor alone, and the
processor plus a FastRMStreamer read by the main thread (as an app would). The added latency per token is the difference of the medians divided by the
tokens generated (eos is suppressed: every run generates exactly --new-tokens). Because medians of whole calls are
noisy on a shared CPU, the streamer's own work is also timed in place (its per-step listener and its put(), with
perf_counter around them, in the generating thread): that is what each token waits for, a noise-free figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_fastrm import FastRMLogitsProcessor
from hf_fastrm.streaming import FastRMStreamer
from hf_fastrm.testing_utils import benchmark_inputs, benchmark_llava, random_head


class TimedStreamer(FastRMStreamer):
    """A FastRMStreamer that sums the time spent in its listener and its put() (the generating thread's share)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0
        self.tokens = 0

    def _on_step(self, *args) -> None:
        start = time.perf_counter()
        super()._on_step(*args)
        self.seconds += time.perf_counter() - start

    def put(self, value) -> None:
        start = time.perf_counter()
        super().put(value)
        self.seconds += time.perf_counter() - start
        if value.dim() == 1:
            self.tokens += 1


def load(name: str, device: str):
    if name == "toy":
        from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
        from hf_fastrm.toy.modeling import format_prompt
        from hf_fastrm.toy.scenes import make_examples

        model, processor, head = load_default_model(device=device), load_default_processor(), load_default_head(device)
        scene, question = make_examples(1, seed="benchmark")[0]
        inputs = processor(images=scene.image, text=format_prompt(question.text), return_tensors="pt").to(device)
        return model, head, dict(inputs), processor.tokenizer
    model = benchmark_llava(name, device)
    return model, random_head(model), benchmark_inputs(model), None


def run(name: str, device: str, new_tokens: int, repeats: int) -> dict:
    model, head, inputs, tokenizer = load(name, device)
    eos = model.generation_config.eos_token_id
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, suppress_tokens=[eos])
    times = {"processor": [], "processor+streamer": []}
    own_seconds, own_tokens = 0.0, 0
    with FastRMLogitsProcessor(model, head) as fastrm:
        streamer = TimedStreamer(fastrm, tokenizer, timeout=600)
        model.generate(**inputs, **kwargs, logits_processor=[fastrm])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()  # generate() in a thread in both modes: only the streamer differs
            thread = threading.Thread(target=model.generate, kwargs=dict(inputs, **kwargs, logits_processor=[fastrm]))
            thread.start()
            thread.join()
            times["processor"].append(time.perf_counter() - start)

            streamer.seconds, streamer.tokens = 0.0, 0
            start = time.perf_counter()
            thread = streamer.run_in_thread(model.generate, **inputs, **kwargs, logits_processor=[fastrm])
            streamed = sum(1 for _ in streamer)
            thread.join()
            times["processor+streamer"].append(time.perf_counter() - start)
            assert streamed == new_tokens, (streamed, new_tokens)
            own_seconds += streamer.seconds
            own_tokens += streamer.tokens
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    return {
        "model": name,
        "device": device,
        "image_tokens": int(fastrm._tap.image_token_mask.shape[1]),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "median_s": medians,
        "min_s": {mode: min(values) for mode, values in times.items()},
        "ratio_median": medians["processor+streamer"] / medians["processor"],
        "added_ms_per_token_median": 1000 * (medians["processor+streamer"] - medians["processor"]) / new_tokens,
        "streamer_own_ms_per_token": 1000 * own_seconds / max(own_tokens, 1),
        "processor_ms_per_token": 1000 * medians["processor"] / new_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["toy", "cpu-mid"], help="toy and/or benchmark presets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = []
    for name in args.models:
        result = run(name, args.device, args.new_tokens, args.repeats)
        results.append(result)
        print(
            f"{name:8s} {result['image_tokens']:4d} image tokens, {args.new_tokens} tokens x {args.repeats}: "
            f"processor {result['processor_ms_per_token']:.2f} ms/token; with streamer median ratio "
            f"{result['ratio_median']:.3f} ({result['added_ms_per_token_median']:+.3f} ms/token); "
            f"streamer's own work {result['streamer_own_ms_per_token']:.3f} ms/token",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
