"""The gradient teacher, lean versus naive: time and peak memory as ratios from one run, next to plain generate().

    python benchmarks/teacher.py                                   # CPU, mid-size random LLaVA (576 image tokens)
    python benchmarks/teacher.py --preset llava-7b --json teacher-7b.json     # LLaVA-1.5-7B shapes, bf16, CUDA
    python benchmarks/teacher.py --preset llava-7b --device cpu --tiny        # the 7B code path, tiny, on CPU

Methods, each on the same greedy tokens (``min_new_tokens = max_new_tokens``, so every run makes all of them):

* ``generate``: plain ``model.generate()`` (sdpa attention), the baseline;
* ``lean``: ``generate()`` and then ``hf_fastrm.teacher.gradient_relevancy`` (frozen weights, one teacher-forced
  forward, batched per-token backwards, row-vector propagation); its teacher-only time is reported too;
* ``forward``: one forward pass (no graph) over the prompt and the generated tokens, the unit in which the teacher's
  cost is best read: an exact gradient teacher needs one backward per token, and a backward costs about a forward;
* ``naive``: the LVLM-Interpret way (tests/teacher_reference.py): weights requiring grad, eager attention, the graph
  kept through the (cached) decoding steps, one ``backward()`` per token, full ``n x n`` products.

Times are medians of ``--repeats`` runs after ``--warmup`` runs (the naive method: ``--naive-repeats``, no warm-up).
Peak memory:
on CUDA ``torch.cuda.max_memory_allocated`` (reset before each run; all methods share one process and one model);
on CPU the peak resident set size (VmHWM from /proc/self/status) of a fresh process per method, reset through
/proc/self/clear_refs after the model is built and freed heap returned with ``malloc_trim``, so each figure is the
whole process's peak while running that method (model weights included, as on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hf_fastrm.teacher import gradient_relevancy  # noqa: E402
from hf_fastrm.testing_utils import benchmark_inputs, benchmark_llava  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # Fewer new tokens than the GPU preset so that the naive method fits in a few CPU minutes.
    "cpu-mid": {"device": "cpu", "new_tokens": 8, "repeats": 3, "naive_repeats": 1, "warmup": 0, "chunk": 2},
    # 8 tokens per backward: fastest on an H200 (1.01 s against 1.09 s with 4), 1.26x plain generate's memory.
    "llava-7b": {"device": "cuda", "new_tokens": 32, "repeats": 5, "naive_repeats": 1, "warmup": 1, "chunk": 8},
}
METHODS = ("generate", "forward", "lean", "naive")
GOALS = {"cpu": "goal: lean >= 5x faster than naive", "cuda": "goals: lean >= 25x faster, memory <= 1.3x generate"}


class PeakMemory:
    """Peak memory of a region: the CUDA allocator's peak, or this process's peak resident set on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):  # hand freed heap back, so the peak that follows is this run's own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")

    def read(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmHWM not found in /proc/self/status")


def build(args: argparse.Namespace):
    model = benchmark_llava(args.preset, args.device, num_layers=args.num_layers, tiny=args.tiny)
    inputs = benchmark_inputs(model, text_tokens=args.text_tokens)
    return model, inputs


def run_method(method: str, model, inputs: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Times and peak memory of `method` on this process's model; also its maps (for the lean/naive check)."""
    from teacher_reference import naive_gradient_relevancy

    device = torch.device(args.device)
    memory = PeakMemory(device)
    generate_kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sequences = model.generate(**inputs, **generate_kwargs) if method in ("naive", "forward") else None
    times, teacher_times, peaks = [], [], []
    relevancy = None
    repeats = args.naive_repeats if method == "naive" else args.repeats
    # The naive method is not warmed up: a run takes seconds to minutes, and the other methods warmed the kernels.
    warmup = 0 if method == "naive" else args.warmup
    for run in range(warmup + repeats):
        memory.reset()
        start = time.perf_counter()
        if method == "generate":
            model.generate(**inputs, **generate_kwargs)
        elif method == "forward":
            with torch.no_grad():
                model(
                    input_ids=sequences,
                    attention_mask=torch.ones_like(sequences),
                    pixel_values=inputs["pixel_values"],
                    use_cache=False,
                    logits_to_keep=args.new_tokens,
                )
        elif method == "lean":
            generated = model.generate(**inputs, **generate_kwargs)
            synchronize()
            teacher_start = time.perf_counter()
            relevancy = gradient_relevancy(
                model,
                inputs,
                generated,
                token_chunk_size=args.token_chunk_size,
                attention_block_rows=args.attention_block_rows,
            ).relevancy
            synchronize()
            teacher_time = time.perf_counter() - teacher_start
        else:
            relevancy = naive_gradient_relevancy(model, inputs, sequences)["relevancy"]
        synchronize()
        elapsed = time.perf_counter() - start
        peak = memory.read()
        if run >= warmup:
            times.append(elapsed)
            peaks.append(peak)
            if method == "lean":
                teacher_times.append(teacher_time)
        print(f"  {method} run {run + 1}: {elapsed:.3f} s, peak {peak / 2**30:.3f} GiB", file=sys.stderr, flush=True)
    figures: dict[str, Any] = {"time_s": statistics.median(times), "times_s": times, "peak_bytes": max(peaks)}
    if teacher_times:
        figures["teacher_time_s"] = statistics.median(teacher_times)
    if relevancy is not None:
        figures["relevancy"] = relevancy.float().cpu()
    return figures


def run_isolated(method: str, argv: list[str]) -> dict[str, Any]:
    """`run_method` in a fresh Python process (clean peak-RSS figures on CPU)."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.pt"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", method, "--result", str(result)]
        subprocess.run(command, check=True)
        return torch.load(result)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-mid", choices=sorted(PRESETS))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the preset's)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated and explained")
    parser.add_argument(
        "--text-tokens", type=int, default=41, help="text tokens in the prompt (plus 576 image tokens)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of generate and lean (median)")
    parser.add_argument("--naive-repeats", type=int, default=None, help="timed runs of the naive method")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before the timed ones")
    parser.add_argument("--token-chunk-size", type=int, default=None, help="tokens per batched backward (lean)")
    parser.add_argument(
        "--attention-block-rows", type=int, default=None, help="query rows per block in the attention backward (lean)"
    )
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive method (slow, memory-hungry)")
    parser.add_argument("--tiny", action="store_true", help="tiny widths, same code path (smoke-test a preset)")
    parser.add_argument("--num-layers", type=int, default=None, help="override the language model's depth")
    parser.add_argument("--isolation", choices=["process", "none"], default=None, help="default: process on CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for name in ("device", "new_tokens", "repeats", "naive_repeats", "warmup"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    if args.token_chunk_size is None:
        args.token_chunk_size = preset["chunk"]
    device = torch.device(args.device)
    if args.isolation is None:
        args.isolation = "none" if device.type == "cuda" else "process"

    if args.worker is not None:
        model, inputs = build(args)
        torch.save(run_method(args.worker, model, inputs, args), args.result)
        return {}

    methods = [m for m in METHODS if not (args.skip_naive and m == "naive")]
    results: dict[str, dict[str, Any]] = {}
    if args.isolation == "process":
        for method in methods:
            results[method] = run_isolated(method, argv)
    else:
        model, inputs = build(args)
        for method in methods:
            try:
                results[method] = run_method(method, model, inputs, args)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                if method != "naive":
                    raise
                # Keep the other figures when the naive method does not fit.
                print(f"naive method failed: {type(error).__name__}: {error}", file=sys.stderr)
                args.naive_error = f"{type(error).__name__}: {str(error)[:300]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return report(args, results)


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    plain, lean, naive = results["generate"], results["lean"], results.get("naive")
    figures: dict[str, Any] = {
        "preset": args.preset + (" (tiny)" if args.tiny else ""),
        "device": device_name,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "new_tokens": args.new_tokens,
        "image_tokens": 576,
        "text_tokens": args.text_tokens,
        "token_chunk_size": args.token_chunk_size,
        "attention_block_rows": args.attention_block_rows,
        "repeats": args.repeats,
        "naive_repeats": args.naive_repeats if naive else 0,
        "memory_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS (VmHWM) of "
        + ("a fresh process per method" if args.isolation == "process" else "one process, reset before each run"),
    }
    for name, result in results.items():
        figures[f"{name}_time_s"] = result["time_s"]
        figures[f"{name}_times_s"] = result["times_s"]
        figures[f"{name}_peak_bytes"] = result["peak_bytes"]
    figures["lean_teacher_time_s"] = lean["teacher_time_s"]
    forward = results.get("forward")
    if forward:
        # An exact teacher backpropagates once per token; a backward costs about one forward.
        figures["teacher_forward_equivalents_per_token"] = lean["teacher_time_s"] / args.new_tokens / forward["time_s"]
    figures["lean_memory_vs_generate"] = lean["peak_bytes"] / plain["peak_bytes"]
    if naive:
        figures["naive_memory_vs_generate"] = naive["peak_bytes"] / plain["peak_bytes"]
        figures["speedup_vs_naive"] = naive["time_s"] / lean["time_s"]
        figures["teacher_speedup_vs_naive"] = naive["time_s"] / lean["teacher_time_s"]
        figures["memory_lean_vs_naive"] = lean["peak_bytes"] / naive["peak_bytes"]
        difference = (lean["relevancy"] - naive["relevancy"]).abs().nan_to_num()
        scale = naive["relevancy"].abs().nan_to_num().max().clamp(min=1e-30)
        figures["max_abs_map_difference"] = float(difference.max())
        figures["max_relative_map_difference"] = float(difference.max() / scale)

    gib = 2**30
    print(
        f"\nGradient teacher, {figures['preset']} on {device_name}: 576 image + {args.text_tokens} text tokens, "
        f"{args.new_tokens} new tokens; median of {args.repeats} runs (naive: {figures['naive_repeats']})."
    )
    if args.preset == "cpu-mid" and args.new_tokens < PRESETS["llava-7b"]["new_tokens"]:
        print(f"(CPU preset: {args.new_tokens} new tokens rather than 32, to keep the naive method to a few minutes.)")
    print(f"{'method':<26}{'time (s)':>10}{'vs naive':>10}{'peak (GiB)':>12}{'vs generate':>13}")
    rows = [("plain generate", plain["time_s"], plain["peak_bytes"])]
    if forward:
        rows.append(("one forward (no graph)", forward["time_s"], forward["peak_bytes"]))
    rows.append(("lean (generate + teacher)", lean["time_s"], lean["peak_bytes"]))
    rows.append(("  of which teacher", lean["teacher_time_s"], None))
    if naive:
        rows.append(("naive (LVLM-Interpret)", naive["time_s"], naive["peak_bytes"]))
    for name, seconds, peak in rows:
        speed = f"{naive['time_s'] / seconds:>9.1f}x" if naive else f"{'-':>10}"
        memory = f"{peak / gib:>12.3f}{peak / plain['peak_bytes']:>12.2f}x" if peak is not None else ""
        print(f"{name:<26}{seconds:>10.3f}{speed}{memory}")
    if naive:
        print(
            f"lean vs naive: {figures['speedup_vs_naive']:.1f}x faster (teacher alone {figures['teacher_speedup_vs_naive']:.1f}x), "
            f"{figures['memory_lean_vs_naive']:.2f}x the memory; maps agree to {figures['max_abs_map_difference']:.2e} "
            f"(relative {figures['max_relative_map_difference']:.2e}); {GOALS[device.type]}."
        )
    else:
        skipped = f"naive failed ({args.naive_error})" if getattr(args, "naive_error", None) else "naive skipped"
        figures["naive_error"] = getattr(args, "naive_error", None)
        print(f"lean peak memory {figures['lean_memory_vs_generate']:.2f}x plain generate; {skipped}.")
    if forward:
        print(
            f"The teacher costs {figures['teacher_forward_equivalents_per_token']:.2f} forward passes per explained "
            "token (an exact gradient teacher needs one backward per token; a backward costs about a forward)."
        )
    print(f"Memory: {figures['memory_method']}.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"Figures written to {args.json}")
    return figures


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"CPU, {os.cpu_count()} cores ({model or platform.processor() or platform.machine()})"


if __name__ == "__main__":
    main()
