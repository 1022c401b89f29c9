"""Faithfulness of every relevancy method on held-out toy scenes: deletion and insertion curves (RISE).

    python benchmarks/faithfulness.py                                   # 200 scenes, both modes, CPU
    python benchmarks/faithfulness.py --num-examples 300 --seed 1 --head question_aware=path/to/head \\
        --json faithfulness.json --plot docs/images/faithfulness-curves.png

Scenes and questions come from the seed stream ``faithfulness:<seed>``, used by no training script (`toy.train`
draws from ``train:``, ``validation:``, ``test:``; `toy.build_head` from ``head-train:``, ``head-test:``;
`benchmarks/grounding.py` from ``grounding:``). Each question is answered greedily by the shipped toy model; every
method's map of each answer token is then tested with `hf_fastrm.faithfulness.faithfulness_curves`: remove the
patches the map ranks highest, step by step, and follow the probability of the generated token (answer
teacher-forced), or put them back into an image with every patch removed. Areas are relative to the unperturbed
probability; intervals are 95 % percentile bootstrap intervals resampling scenes.

Methods: each FastRM head given (``--head name=folder``; the shipped head as ``fastrm`` by default), the gradient
teacher (``teacher``), a random map (``random``, the floor), and ``attention`` / ``rollout`` through
`hf_fastrm.methods.get_method` (any registered name can be given to --methods). Next to faithfulness,
each head's agreement with the teacher (F1 at ``--threshold`` of both min-max maps, AUROC) on the same tokens.

By default the end-of-sequence token is left out of the curves (``--include-eos`` keeps it): the toy model gives it
probability ~1 whatever is removed, so its curves are flat for every method and only dilute the differences.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STREAM = "faithfulness"
BASELINE_METHODS = ("attention", "rollout")


def agreement(maps: np.ndarray, teacher_maps: np.ndarray, threshold: float) -> dict[str, float]:
    """F1 and AUROC of `maps` against the teacher, both `(tokens, N)` min-max normalised and cut at `threshold`."""
    from grounding import binary_f1, minmax

    from hf_fastrm.distill import auroc

    usable = np.isfinite(teacher_maps).all(-1) & (np.ptp(np.nan_to_num(teacher_maps), axis=-1) > 0)
    reference = minmax(teacher_maps[usable]).ravel() >= threshold
    predicted = minmax(np.nan_to_num(maps[usable])).ravel()
    return {
        "f1": binary_f1(predicted >= threshold, reference),
        "auroc": float(auroc(predicted, reference)) if reference.size else math.nan,
        "num_tokens": int(usable.sum()),
    }


def evaluate(
    num_examples: int = 200,
    seed: int = 0,
    *,
    heads: dict[str, str | None] | None = None,
    methods: tuple[str, ...] = ("teacher", "random", *BASELINE_METHODS),
    modes: tuple[str, ...] = ("embedding", "pixel"),
    steps: int = 6,
    include_eos: bool = False,
    batch_size: int = 50,
    forward_batch: int = 256,
    threshold: float = 0.3,
    num_resamples: int = 1000,
    stream: str = STREAM,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Runs the benchmark (module docstring) and returns its JSON-ready report (mean curves included)."""
    from grounding import TOKEN_KINDS, special_token_ids, token_kind
    from transformers.utils import logging

    from hf_fastrm import FastRMWrapper
    from hf_fastrm.faithfulness import FaithfulnessCurves, faithfulness_curves, random_relevancy, summarize_areas
    from hf_fastrm.head import FastRMHead
    from hf_fastrm.methods import available_methods, get_method
    from hf_fastrm.teacher import gradient_relevancy_for_outputs
    from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
    from hf_fastrm.toy.modeling import format_prompt
    from hf_fastrm.toy.scenes import make_examples

    started = time.perf_counter()
    heads = heads or {"fastrm": None}
    model = load_default_model()
    processor = load_default_processor()
    loaded = {
        name: (FastRMHead.from_pretrained(path) if path else load_default_head()) for name, path in heads.items()
    }
    special_ids = set(special_token_ids(model))
    tokenizer = processor.tokenizer
    notes: list[str] = []
    wanted = list(methods)
    unknown = sorted(set(wanted) - {"teacher", "random", *available_methods()})
    if unknown:
        raise ValueError(
            f"Unknown methods {unknown}; registered: {', '.join(available_methods())}, plus teacher, random."
        )
    method_names = [*loaded, *wanted]
    examples = make_examples(num_examples, seed=f"{stream}:{seed}")

    parts: dict[tuple[str, str], list[FaithfulnessCurves]] = {(m, mode): [] for m in method_names for mode in modes}
    kinds_per_batch: list[np.ndarray] = []
    scene_ids: list[np.ndarray] = []
    maps: dict[str, list[np.ndarray]] = {name: [] for name in [*loaded, "teacher"]}
    for start in logging.tqdm(
        range(0, len(examples), batch_size), desc="faithfulness", unit="batch", disable=not show_progress
    ):
        batch = examples[start : start + batch_size]
        inputs = dict(
            processor(
                images=[scene.image for scene, _ in batch],
                text=[format_prompt(question.text) for _, question in batch],
                return_tensors="pt",
                padding=True,
            )
        )
        relevancy: dict[str, torch.Tensor] = {}
        outputs = None
        for name, head in loaded.items():
            result = FastRMWrapper(model, head).generate(
                **inputs, max_new_tokens=4, do_sample=False, return_relevancy=True, return_dict_in_generate=True
            )
            if outputs is not None and not torch.equal(result.sequences, outputs.sequences):
                raise AssertionError("FastRM changed the generated tokens")
            outputs = result if outputs is None else outputs
            relevancy[name] = result.relevancy.float()
        sequences = outputs.sequences
        teacher = gradient_relevancy_for_outputs(model, outputs, inputs)
        for name in wanted:
            if name == "teacher":
                relevancy[name] = teacher.relevancy.float()
            elif name == "random":
                relevancy[name] = random_relevancy(outputs.relevancy, seed=seed * 100_003 + start)
            else:
                relevancy[name] = get_method(name).attribute(model, inputs, sequences).relevancy.float()
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = sequences[:, prompt_length:][:, : outputs.token_mask.shape[1]]
        kinds = np.array(
            [[token_kind(int(token), special_ids, tokenizer) for token in row] for row in new_tokens.tolist()]
        )
        token_mask = outputs.token_mask.bool().cpu()
        if not include_eos:
            token_mask &= torch.from_numpy(kinds != "end of sequence")
        kinds_per_batch.append(kinds)
        scene_ids.append(np.arange(start, start + len(batch)))
        for name in maps:
            maps[name].append(relevancy.get(name, teacher.relevancy).float().cpu()[token_mask].numpy())
        for mode in modes:
            cache: dict = {}  # a set of removed patches two methods share runs once
            for name in method_names:
                parts[(name, mode)].append(
                    faithfulness_curves(
                        model,
                        inputs,
                        sequences,
                        relevancy[name],
                        mode=mode,
                        steps=steps,
                        token_mask=token_mask,
                        batch_size=forward_batch,
                        seed=seed,
                        cache=cache,
                    )
                )

    report: dict[str, Any] = {
        "command": "python benchmarks/faithfulness.py " + " ".join(sys.argv[1:]),
        "seed_stream": f"{stream}:{seed}",
        "num_examples": len(examples),
        "steps": steps,
        "include_eos": include_eos,
        "heads": {name: path or "hf_fastrm/toy/assets/head" for name, path in heads.items()},
        "notes": notes,
        "results": {},
        "agreement": {},
        "paired_vs_teacher": {},
    }
    teacher_maps = np.concatenate(maps["teacher"])  # the toy model: 36 image tokens in every row
    for name in loaded:
        report["agreement"][name] = agreement(np.concatenate(maps[name]), teacher_maps, threshold)
    differences: dict[tuple[str, str], np.ndarray] = {}  # per token: insertion area - deletion area
    clusters = np.concatenate(scene_ids)
    for (name, mode), pieces in parts.items():
        curves = _concatenate(pieces)
        differences[(name, mode)] = (curves.area("insertion") - curves.area("deletion")).numpy()
        kinds = _pad_kinds(kinds_per_batch, curves.token_mask.shape[1])
        groups = {kind: kinds == kind for kind in TOKEN_KINDS}
        summary = summarize_areas(curves, groups=groups, clusters=clusters, num_resamples=num_resamples, seed=seed)
        mask = curves.token_mask
        report["results"].setdefault(mode, {})[name] = {
            "summary": {group: numbers for group, numbers in summary.items() if numbers["num_tokens"]},
            "mean_deletion_curve": curves.curve("deletion")[mask].mean(0).tolist(),
            "mean_insertion_curve": curves.curve("insertion")[mask].mean(0).tolist(),
            "fractions": curves.fractions.tolist(),
        }
    # paired on the same tokens: (insertion - deletion) of each method minus the teacher's, scenes resampled
    from hf_fastrm.faithfulness import bootstrap_interval

    if "teacher" in method_names:
        for mode in modes:
            reference = differences[("teacher", mode)]
            token_clusters = np.broadcast_to(clusters[:, None], reference.shape)
            report["paired_vs_teacher"][mode] = {
                name: list(
                    bootstrap_interval(
                        (differences[(name, mode)] - reference).ravel(),
                        token_clusters.ravel(),
                        num_resamples=num_resamples,
                        seed=seed,
                    )
                )
                for name in method_names
                if name != "teacher"
            }
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _concatenate(pieces: list[Any]) -> Any:
    """One `FaithfulnessCurves` from several batches (padded to the longest answer)."""
    from hf_fastrm.faithfulness import FaithfulnessCurves

    width = max(piece.token_mask.shape[1] for piece in pieces)

    def pad(tensor: torch.Tensor, value: float | bool) -> torch.Tensor:
        extra = width - tensor.shape[1]
        if extra == 0:
            return tensor
        shape = (tensor.shape[0], extra, *tensor.shape[2:])
        return torch.cat([tensor, torch.full(shape, value, dtype=tensor.dtype)], dim=1)

    return FaithfulnessCurves(
        fractions=pieces[0].fractions,
        deletion=torch.cat([pad(p.deletion, math.nan) for p in pieces]),
        insertion=torch.cat([pad(p.insertion, math.nan) for p in pieces]),
        base_probability=torch.cat([pad(p.base_probability, math.nan) for p in pieces]),
        token_mask=torch.cat([pad(p.token_mask, False) for p in pieces]),
        mode=pieces[0].mode,
    )


def _pad_kinds(kinds_per_batch: list[np.ndarray], width: int) -> np.ndarray:
    rows = []
    for kinds in kinds_per_batch:
        padded = np.full((kinds.shape[0], width), "", dtype=object)
        padded[:, : kinds.shape[1]] = kinds
        rows.append(padded)
    return np.concatenate(rows)


def format_table(report: dict[str, Any]) -> str:
    """The printable table: per mode and method, mean areas [95 % interval], all tokens and by kind."""

    def shown(numbers: list[float]) -> str:
        mean, low, high = numbers
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"

    lines = [f"{report['num_examples']} scenes ({report['seed_stream']}), {report['steps']} steps"]
    for mode, methods in report["results"].items():
        lines.append("")
        lines.append(f"mode: {mode}   (deletion: lower is better; insertion and difference: higher is better)")
        header = (
            f"{'method':<16} {'tokens':>6}  {'deletion AUC':<24} {'insertion AUC':<24} {'insertion - deletion':<24}"
        )
        lines += [header, "-" * len(header)]
        for name, result in methods.items():
            for group, numbers in result["summary"].items():
                label = name if group == "all" else f"  {group}"
                lines.append(
                    f"{label:<16} {numbers['num_tokens']:>6}  {shown(numbers['deletion']):<24} "
                    f"{shown(numbers['insertion']):<24} {shown(numbers['difference']):<24}"
                )
        for name, numbers in report.get("paired_vs_teacher", {}).get(mode, {}).items():
            lines.append(f"{name} minus teacher, insertion - deletion (paired): {shown(numbers)}")
    lines.append("")
    for name, numbers in report["agreement"].items():
        lines.append(
            f"agreement with the teacher, {name}: F1 {numbers['f1']:.3f}, AUROC {numbers['auroc']:.3f} "
            f"({numbers['num_tokens']} tokens)"
        )
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(f"{report['seconds']:.0f} s")
    return "\n".join(lines)


COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (127, 127, 127), (148, 103, 189), (255, 127, 14))


def plot(report: dict[str, Any], path: str, panel: tuple[int, int] = (420, 300)) -> None:
    """Mean relative deletion and insertion curves per method, one row of two panels per mode, as a PNG (drawn with
    PIL: no plotting library needed)."""
    from PIL import Image, ImageDraw

    modes = list(report["results"])
    width, height = panel
    margin_left, margin_bottom, margin_top = 48, 34, 22
    canvas = Image.new("RGB", (2 * width, len(modes) * height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top_value = max(
        1.0,
        *(
            max(value for value in result[f"mean_{curve}_curve"] if math.isfinite(value))
            for results in report["results"].values()
            for result in results.values()
            for curve in ("deletion", "insertion")
        ),
    )
    for row, mode in enumerate(modes):
        for column, curve in enumerate(("deletion", "insertion")):
            left, top = column * width + margin_left, row * height + margin_top
            right, bottom = (column + 1) * width - 12, (row + 1) * height - margin_bottom

            def point(
                x: float, y: float, left: float = left, right: float = right, top: float = top, bottom: float = bottom
            ) -> tuple[float, float]:
                return left + x * (right - left), bottom - y / top_value * (bottom - top)

            draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
            for tick in np.linspace(0, 1, 5):
                x, _ = point(tick, 0)
                _, y = point(0, tick * top_value)
                draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
                draw.text((x - 8, bottom + 6), f"{tick:.2f}", fill=(0, 0, 0))
                draw.line((left - 4, y, left, y), fill=(0, 0, 0))
                draw.text((left - 40, y - 6), f"{tick * top_value:.2f}", fill=(0, 0, 0))
            action = "removed" if curve == "deletion" else "put back"
            draw.text((left, row * height + 4), f"{curve}, {mode} mode: p(token) / p unperturbed", fill=(0, 0, 0))
            draw.text((left + 80, bottom + 20), f"share of image patches {action}", fill=(0, 0, 0))
            for index, (name, result) in enumerate(report["results"][mode].items()):
                colour = COLOURS[index % len(COLOURS)]
                points = [point(x, y) for x, y in zip(result["fractions"], result[f"mean_{curve}_curve"], strict=True)]
                draw.line(points, fill=colour, width=2)
                for x, y in points:
                    draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
                area = result["summary"]["all"][curve][0]
                legend_y = bottom - 16 - 13 * index
                draw.text((right - 150, legend_y), f"{name} (area {area:.3f})", fill=colour)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="names the scene stream <stream>:<seed>")
    parser.add_argument("--stream", default=STREAM)
    parser.add_argument(
        "--head",
        action="append",
        default=None,
        metavar="NAME=FOLDER",
        help="a head to test (repeatable); default: the shipped head as 'fastrm'. NAME=shipped is the shipped one",
    )
    parser.add_argument(
        "--methods", nargs="+", default=["teacher", "random", *BASELINE_METHODS], help="other methods besides heads"
    )
    parser.add_argument("--modes", nargs="+", default=["embedding", "pixel"], choices=["embedding", "pixel"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--include-eos", action="store_true", help="also score end-of-sequence tokens")
    parser.add_argument("--batch-size", type=int, default=50, help="scenes per generate() call")
    parser.add_argument("--forward-batch", type=int, default=256, help="perturbed sequences per forward pass")
    parser.add_argument("--threshold", type=float, default=0.3, help="agreement: min-max cut of both maps")
    parser.add_argument("--num-resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--plot", default=None, help="write the mean curves as a PNG here")
    args = parser.parse_args(argv)
    heads: dict[str, str | None] = {}
    for item in args.head or ["fastrm=shipped"]:
        name, _, folder = item.partition("=")
        if not name or not folder:
            parser.error(f"--head takes NAME=FOLDER, got {item!r}")
        heads[name] = None if folder == "shipped" else folder
    report = evaluate(
        args.num_examples,
        args.seed,
        heads=heads,
        methods=tuple(args.methods),
        modes=tuple(args.modes),
        steps=args.steps,
        include_eos=args.include_eos,
        batch_size=args.batch_size,
        forward_batch=args.forward_batch,
        threshold=args.threshold,
        num_resamples=args.num_resamples,
        stream=args.stream,
    )
    print(format_table(report))
    if args.json:
        from hf_fastrm.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
