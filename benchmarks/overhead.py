"""Cost of FastRM inside generate(): time and peak memory with and without relevancy, as ratios from one run.

    python benchmarks/overhead.py                      # CPU, mid-size random LLaVA (576 image tokens, 1024 x 8 LM)
    python benchmarks/overhead.py --preset llava-7b --device cuda   # LLaVA-1.5-7B shapes, bf16, on a GPU
    python benchmarks/overhead.py --batch-size 8                    # 8 prompts a call
    python benchmarks/overhead.py --num-beams 4                     # beam search (maps of the returned beam)

Runs alternate (plain, FastRM, plain, ...) so drift hits both equally; times are medians. Peak memory: on CUDA
`torch.cuda.max_memory_allocated` (reset before each run); on CPU the process's peak resident set (VmHWM), reset
before each run through /proc/self/clear_refs, so both modes are measured in the same process. On CPU the script
restarts itself with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_=131072``): by default glibc
raises that threshold as large blocks are freed and then serves tensors from a heap it does not hand back, so the
peak resident set would keep memory no tensor holds any more (earlier 4-beam runs read +1.6 % that way, 1.0000 with
the fixed threshold). Set the variable yourself to choose another value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.taps import repeat_rows
from hf_fastrm.testing_utils import benchmark_inputs, benchmark_llava, random_head


class PeakMemory:
    """Peak memory of a region: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")

    def read(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmHWM not found in /proc/self/status")


def isolated_fastrm_seconds(model, head, inputs, kwargs, device: torch.device, repeats: int = 20) -> float:
    """Median time of what FastRM adds to one generate() call, without the model around it: the keys at prefill,
    one head step per new token, and the result's assembly (a noise-free lower bound of the overhead)."""
    with FastRMLogitsProcessor(model, head) as fastrm:
        out = model.generate(**inputs, **kwargs, logits_processor=[fastrm], return_dict_in_generate=True)
        hidden = model.config.get_text_config().hidden_size
        rows, image_tokens = fastrm._tap.image_token_mask.shape  # batch * num_beams rows
        shared = fastrm._tap._shared_rows  # beam copies of a prompt row share its keys (computed once, repeated)
        image_states = torch.randn(rows // shared, image_tokens, hidden, device=device, dtype=model.dtype)
        token_state = torch.randn(rows, hidden, device=device, dtype=model.dtype)
        record = fastrm._record
        steps = len(record.steps)
        samples = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            keys = repeat_rows(fastrm._on_prefill(image_states), shared)
            record.steps = [fastrm.head.relevance_from_keys(token_state, keys) for _ in range(steps)]
            fastrm.result_for(out)
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-mid", choices=["cpu-mid", "llava-7b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per generate() call (each with an image)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
    parser.add_argument("--num-layers", type=int, default=None, help="override the LM depth (smoke tests)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--head-type",
        default="fastrm",
        choices=["fastrm", "question_aware"],
        help="the paper's head, or the question-aware one (also attends over the prompt's text tokens)",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    model = benchmark_llava(args.preset, args.device, num_layers=args.num_layers)
    head = random_head(model, head_type=args.head_type)
    wrapper = FastRMWrapper(model, head)
    inputs = benchmark_inputs(model, batch_size=args.batch_size)
    kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    if args.num_beams > 1:
        kwargs["num_beams"] = args.num_beams
    memory = PeakMemory(device)

    def run(relevancy: bool) -> tuple[float, int, torch.Tensor]:
        memory.reset()
        start = time.perf_counter()
        if relevancy:
            out = wrapper.generate(**inputs, **kwargs, return_relevancy=True)
            sequences = out.sequences
        else:
            sequences = model.generate(**inputs, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, memory.read(), sequences

    run(False), run(True)  # warm-up (allocator, kernels)
    times: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, list[int]] = {False: [], True: []}
    sequences: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    for _ in range(args.repeats):
        for relevancy in (False, True):
            elapsed, peak, tokens = run(relevancy)
            times[relevancy].append(elapsed)
            peaks[relevancy].append(peak)
            sequences[relevancy].append(tokens)
    # Plain generate can itself vary run to run on a GPU (bf16 kernels choose algorithms by memory alignment; random
    # weights give near-ties): FastRM must reproduce plain generate wherever plain generate reproduces itself.
    plain_reproducible = all(torch.equal(s, sequences[False][0]) for s in sequences[False])
    fastrm_identical = sum(torch.equal(a, b) for a, b in zip(sequences[False], sequences[True], strict=True))
    if plain_reproducible and fastrm_identical != args.repeats:
        raise AssertionError("tokens differ with FastRM although plain generate is reproducible")

    isolated = isolated_fastrm_seconds(model, head, inputs, kwargs, device)

    figures = {
        "preset": args.preset,
        "head_type": args.head_type,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "image_tokens": int((inputs["input_ids"][0] == model.config.image_token_id).sum()),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "plain_time_s": statistics.median(times[False]),
        "fastrm_time_s": statistics.median(times[True]),
        "plain_peak_bytes": statistics.median(peaks[False]),
        "fastrm_peak_bytes": statistics.median(peaks[True]),
        "plain_min_time_s": min(times[False]),
        "fastrm_min_time_s": min(times[True]),
        "isolated_fastrm_work_s": isolated,
        "plain_runs_reproducible": plain_reproducible,
        "runs_with_identical_tokens": fastrm_identical,
        "plain_times_s": times[False],
        "fastrm_times_s": times[True],
        # each FastRM run against the plain run just before it: drift between pairs cancels
        "paired_time_ratio_median": statistics.median(
            with_fastrm / plain for plain, with_fastrm in zip(times[False], times[True], strict=True)
        ),
    }
    figures["time_ratio"] = figures["fastrm_time_s"] / figures["plain_time_s"]
    figures["min_time_ratio"] = figures["fastrm_min_time_s"] / figures["plain_min_time_s"]
    figures["memory_ratio"] = figures["fastrm_peak_bytes"] / figures["plain_peak_bytes"]
    gib = 1024**3
    print(
        f"FastRM overhead: {args.preset} on {figures['device']}, batch {args.batch_size}, {args.num_beams} beam(s), "
        f"{figures['image_tokens']} image tokens and {figures['prompt_tokens']} prompt tokens a row, "
        f"{args.new_tokens} new tokens, median of {args.repeats}"
    )
    print(f"{'':14}{'time (s)':>10}{'peak (GiB)':>12}")
    print(f"{'plain':14}{figures['plain_time_s']:>10.3f}{figures['plain_peak_bytes'] / gib:>12.3f}")
    print(f"{'with FastRM':14}{figures['fastrm_time_s']:>10.3f}{figures['fastrm_peak_bytes'] / gib:>12.3f}")
    print(
        f"{'ratio':14}{figures['time_ratio']:>10.4f}{figures['memory_ratio']:>12.4f}"
        "   (goals: time <= 1.02, memory <= 1.005)"
    )
    print(
        f"fastest runs: plain {figures['plain_min_time_s']:.3f} s, with FastRM {figures['fastrm_min_time_s']:.3f} s, "
        f"ratio {figures['min_time_ratio']:.4f}; median of paired ratios {figures['paired_time_ratio_median']:.4f} "
        "(both less sensitive to interference than the ratio of medians)"
    )
    print(
        f"FastRM's own work per call, timed in isolation (keys at prefill, {args.new_tokens} head steps, result "
        f"assembly): {isolated * 1000:.2f} ms = {isolated / figures['plain_time_s']:.2%} of plain generate"
    )
    print(
        f"tokens identical with and without FastRM in {fastrm_identical}/{args.repeats} paired runs; plain generate "
        f"{'is' if plain_reproducible else 'is NOT'} reproducible across runs on this device"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "cuda" not in " ".join(sys.argv):
        # glibc reads it at start-up only (see the module docstring)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
