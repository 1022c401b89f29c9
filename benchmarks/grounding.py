"""Grounding of the shipped toy model's relevancy maps, checked against the scenes' true object boxes.

    python benchmarks/grounding.py                                  # 1,000 held-out scenes, CPU
    python benchmarks/grounding.py --num-examples 2000 --seed 7 --json grounding.json --pictures docs/images/grounding
    python benchmarks/grounding.py --num-examples 2000 --seed 1 --noise 0.3         # harder scenes: real mistakes

Scenes and questions come from the seed stream ``grounding:<seed>`` (`hf_fastrm.toy.scenes.make_examples`), which
no training script uses (`hf_fastrm.toy.train` draws from ``train:``, ``validation:``, ``test:``;
`hf_fastrm.toy.build_head` from ``head-train:`` and ``head-test:``). Each question is answered greedily by
`FastRMWrapper.generate(..., return_relevancy=True)` (FastRM maps and confidence); the teacher's gradient maps are
computed for the same tokens (`gradient_relevancy_for_outputs`). Measured:

* pointing game, on questions about an object in the scene: the peak patch of the map of the answer's first token
  (its content word: the colour, shape, side, or the first word of the corner) lies among the patches the asked-about
  object's box overlaps; for the teacher and for FastRM;
* FastRM's agreement with the teacher over every answer token with a non-constant teacher map: F1 of the two maps
  each min-max normalised and cut at ``--threshold`` (0.3), and AUROC of FastRM's map against the teacher's labels;
* AUROC of confidence (one minus the normalised entropy of the map, `hf_fastrm.confidence`) for correct versus wrong
  answers (sequence confidence) and for questions about present versus absent objects (the answer token's
  confidence); the model's own probability of the answer token is shown beside it as a reference. An AUROC is
  reported as not defined (null) when either class has fewer than ``--min-class`` examples.

The shipped model makes almost no mistakes on in-distribution scenes, so correct versus wrong needs harder ones:
``--noise`` (Gaussian pixel noise, std in units of the 0-255 range) and ``--contrast`` (objects faded towards the
background) corrupt the same stream's scenes (same layouts and questions; `hf_fastrm.toy.scenes.draw_scene`). For
correct versus wrong the report gives the AUROC of (a) FastRM's sequence confidence, (b) the teacher map's sequence
confidence (same definition, on the gradient maps), (c) the model's own probability of its answer (the product of
its answer tokens' probabilities), over all questions and over questions about present objects only (absent
questions are both less confident and more often wrong under corruption, which alone would lift an AUROC).

It also reports a score combining both signals available inside generate(), the map's confidence ``c`` and the
probability ``p`` the model gave the chosen token: ``c^(1 - w) * p^w`` with ``w = lam / (1 + lam)`` (see
`combined_score`), for correct vs wrong and present vs absent. ``lam`` is chosen on the tuning stream only:

    tune="python benchmarks/grounding.py --stream grounding-tune --seed 0 --num-examples 2000"
    $tune --json tune-clean.json
    for level in 0.2 0.25 0.3 0.35; do $tune --noise $level --json tune-noise$level.json; done
    for level in 0.7 0.5; do $tune --contrast $level --json tune-contrast$level.json; done
    python benchmarks/grounding.py --sweep tune-*.json      # prints the sweep and the max-min choice
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch

STREAM = "grounding"
TUNE_STREAM = "grounding-tune"  # where measures and weights are chosen; never the reported STREAM


def special_token_ids(model: Any) -> list[int]:
    """The eos, pad and bos ids of the model's generation config (what FastRM leaves out of sequence summaries)."""
    config = getattr(model, "generation_config", None)
    ids: set[int] = set()
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if value is not None:
            ids.update(int(item) for item in (value if isinstance(value, (list, tuple)) else [value]))
    return sorted(ids)


# ---------------------------------------------------------------------------------------------- metric helpers
def pointing_hit(relevancy_map: np.ndarray | torch.Tensor, target_patches: np.ndarray) -> bool:
    """Whether the map's peak lies inside the target.

    Args:
        relevancy_map (`(h, w)` or `(N,)`): one token's map; NaN entries are ignored.
        target_patches (`(h, w)` or `(N,)`, bool): the object's patches, same layout.

    Ties for the peak count as a hit only when every tied patch is in the target (a flat map points nowhere).
    """
    values = np.asarray(relevancy_map, dtype=np.float64).ravel()
    target = np.asarray(target_patches, dtype=bool).ravel()
    if values.shape != target.shape:
        raise ValueError(f"The map has {values.size} patches but the target mask {target.size}.")
    finite = np.isfinite(values)
    if not finite.any():
        return False
    peak = values[finite].max()
    peaks = finite & (values == peak)
    return bool(target[peaks].all())


TOKEN_KINDS = ("answer word", "none", "end of sequence")
"""Kinds of answer tokens the agreement is also broken down by: the answer's word about an object, the word "none"
(an absent object), and the end-of-sequence token."""


def token_kind(token_id: int, special_ids: set[int], tokenizer: Any) -> str:
    """Which of `TOKEN_KINDS` a generated token is."""
    if token_id in special_ids:
        return "end of sequence"
    return "none" if tokenizer.decode([token_id]).strip() == "none" else "answer word"


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation along the last axis (a constant row becomes zeros)."""
    values = np.asarray(values, dtype=np.float64)
    low = values.min(axis=-1, keepdims=True)
    span = values.max(axis=-1, keepdims=True) - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0)


def binary_f1(predicted: np.ndarray, reference: np.ndarray) -> float:
    """F1 of boolean `predicted` against boolean `reference` (NaN when both are empty)."""
    predicted = np.asarray(predicted, dtype=bool).ravel()
    reference = np.asarray(reference, dtype=bool).ravel()
    true_positives = int((predicted & reference).sum())
    denominator = int(predicted.sum()) + int(reference.sum())
    return math.nan if denominator == 0 else 2.0 * true_positives / denominator


def defined_auroc(scores: list[float], labels: list[bool], min_class: int) -> tuple[float | None, str | None]:
    """AUROC of `scores` for `labels`, or (None, why) when a class has fewer than `min_class` examples.

    Examples whose score is NaN (a map with no relevance anywhere has no confidence) are left out, and the note says
    how many; an AUROC over NaN ranks would be meaningless.
    """
    from hf_fastrm.distill import auroc

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    scored = np.isfinite(scores)
    dropped = f"; {int((~scored).sum())} examples without a score left out" if not scored.all() else ""
    scores, labels = scores[scored], labels[scored]
    positives = int(labels.sum())
    negatives = labels.size - positives
    if min(positives, negatives) < max(1, min_class):
        why = f"not defined: {positives} positive and {negatives} negative examples (need {min_class} each)"
        return None, why + dropped
    return float(auroc(scores, labels)), dropped[2:] or None


# ---------------------------------------------------------------------------------------------- combined score
# A score combining the map's confidence c with the probability p the model gave the chosen token (both known inside
# generate()): g = c^(1 - w) * p^w with w = lam / (1 + lam), i.e. log g = (log c + lam * log p) / (1 + lam), ranked
# like c * p^lam. Per sequence: the mean of g over the answer's non-special tokens (as `sequence_confidence` is the
# mean of c). lam was chosen on the tuning stream only (`--sweep`, see `sweep_combination`): the value on
# COMBINATION_GRID maximising the smallest of the seven tuning AUROCs (present vs absent on clean scenes, correct vs
# wrong at each of TUNING_CORRUPTIONS). It is that large because a correct answer's p differs from 1 by 1e-5 to 1e-3.
COMBINATION_GRID = (0.0, 1.0, 10.0, 100.0, 1e3, 3e3, 1e4, 2e4, 3e4, 4e4, 5e4, 6e4, 7e4, 1e5, 1e6, 1e7)
COMBINATION_LAMBDA = 6e4  # the max-min choice on grounding-tune:0 (2,000 questions per condition)
COMBINATION_LAMBDA_PRESENCE_KEPT = 1e4  # the largest grid value keeping present vs absent >= 0.9 on the same stream
TUNING_CORRUPTIONS = (
    {"noise": 0.2, "contrast": 1.0},
    {"noise": 0.25, "contrast": 1.0},
    {"noise": 0.3, "contrast": 1.0},
    {"noise": 0.35, "contrast": 1.0},
    {"noise": 0.0, "contrast": 0.7},
    {"noise": 0.0, "contrast": 0.5},
)


def combined_score(confidence: np.ndarray | float, probability: np.ndarray | float, lam: float) -> np.ndarray:
    """``c^(1 - w) * p^w`` with ``w = lam / (1 + lam)`` (elementwise; computed in log space, float64).

    Args:
        confidence (`(...)`): the map's confidence, in [0, 1] (NaN stays NaN).
        probability (`(...)`): the probability the model gave the chosen token, in [0, 1].
        lam (`float` >= 0): the probability's weight against the confidence; 0 gives `confidence` itself.
    """
    if lam < 0:
        raise ValueError(f"`lam` must be >= 0, got {lam}.")
    confidence = np.asarray(confidence, dtype=np.float64)
    probability = np.asarray(probability, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_score = (np.log(confidence) + lam * np.log(probability)) / (1.0 + lam) if lam else np.log(confidence)
    return np.exp(log_score)


def sequence_combined_score(row: dict[str, Any], lam: float) -> float:
    """Mean `combined_score` over a report row's non-special answer tokens (NaN without one)."""
    keep = ~np.asarray(row["token_special"], dtype=bool)
    if not keep.any():
        return math.nan
    scores = combined_score(
        np.asarray(row["token_confidences"])[keep], np.asarray(row["token_probabilities"])[keep], lam
    )
    return float(np.mean(scores))


def token_combined_score(row: dict[str, Any], lam: float) -> float:
    """`combined_score` of a report row's first answer token (the one present vs absent is judged on)."""
    return float(combined_score(row["token_confidences"][0], row["token_probabilities"][0], lam))


def combination_aurocs(rows: list[dict[str, Any]], lam: float, min_class: int) -> dict[str, Any]:
    """AUROCs of the combined score with weight `lam`: correct vs wrong (sequence score; all questions and present
    objects only) and present vs absent (first answer token)."""
    present = [row for row in rows if row["present"]]
    return {
        "lambda": lam,
        "correct_vs_wrong": defined_auroc(
            [sequence_combined_score(row, lam) for row in rows], [row["correct"] for row in rows], min_class
        )[0],
        "correct_vs_wrong_present_only": defined_auroc(
            [sequence_combined_score(row, lam) for row in present], [row["correct"] for row in present], min_class
        )[0],
        "present_vs_absent": defined_auroc(
            [token_combined_score(row, lam) for row in rows], [row["present"] for row in rows], min_class
        )[0],
    }


def sweep_combination(reports: list[dict[str, Any]], grid: tuple[float, ...] = COMBINATION_GRID) -> dict[str, Any]:
    """Chooses the combined score's weight on tuning reports: the `grid` value maximising the smallest AUROC over
    present vs absent on the clean report and correct vs wrong on each corrupted one.

    Args:
        reports: `evaluate` reports (with per-example rows) of the tuning stream only: one clean, one or more
            corrupted. A report from the stream whose figures are published is refused.

    Returns:
        ``{"lambda": chosen, "min_auroc": its smallest AUROC, "rows": [{"lambda", "present_vs_absent",
        "correct_vs_wrong": {condition: AUROC}}, ...]}``.
    """
    for report in reports:
        if not report["seed_stream"].startswith(f"{TUNE_STREAM}:"):
            raise ValueError(
                f"The sweep chooses a weight, so it reads tuning reports only ({TUNE_STREAM}:<seed>), got "
                f"{report['seed_stream']}; rerun with --stream {TUNE_STREAM}."
            )
    clean = [report for report in reports if report["corruption"] == {"noise": 0.0, "contrast": 1.0}]
    corrupted = [report for report in reports if report["corruption"] != {"noise": 0.0, "contrast": 1.0}]
    if len(clean) != 1 or not corrupted:
        raise ValueError(
            f"Pass one clean and at least one corrupted report; got {len(clean)} clean, {len(corrupted)}."
        )
    rows = []
    for lam in grid:
        presence = combination_aurocs(clean[0]["examples"], lam, min_class=1)["present_vs_absent"]
        correctness = {
            f"noise {report['corruption']['noise']}, contrast {report['corruption']['contrast']}": combination_aurocs(
                report["examples"], lam, min_class=1
            )["correct_vs_wrong"]
            for report in corrupted
        }
        undefined = [name for name, value in {"clean": presence, **correctness}.items() if value is None]
        if undefined:
            raise ValueError(
                f"An AUROC is not defined on {', '.join(undefined)} (a class without examples); use more examples."
            )
        rows.append({"lambda": lam, "present_vs_absent": presence, "correct_vs_wrong": correctness})
    worst = [min([row["present_vs_absent"], *row["correct_vs_wrong"].values()]) for row in rows]
    best = int(np.argmax(worst))
    return {"lambda": rows[best]["lambda"], "min_auroc": worst[best], "rows": rows}


def format_sweep(sweep: dict[str, Any]) -> str:
    """The printable table of `sweep_combination`."""
    conditions = list(sweep["rows"][0]["correct_vs_wrong"])
    lines = ["lambda    present vs absent  " + "  ".join(f"cw {name}" for name in conditions) + "  min"]
    for row in sweep["rows"]:
        values = [row["present_vs_absent"], *row["correct_vs_wrong"].values()]
        lines.append(
            f"{row['lambda']:<9g} {values[0]:17.3f}  "
            + "  ".join(f"{value:{len('cw ' + name)}.3f}" for value, name in zip(values[1:], conditions, strict=True))
            + f"  {min(values):.3f}"
        )
    lines.append(f"chosen lambda: {sweep['lambda']:g} (smallest AUROC {sweep['min_auroc']:.3f})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the evaluation
def evaluate(
    num_examples: int = 1000,
    seed: int = 0,
    *,
    head_dir: str | None = None,
    batch_size: int = 32,
    threshold: float = 0.3,
    min_class: int = 5,
    device: str = "cpu",
    pictures_dir: str | None = None,
    num_pictures: int = 3,
    show_progress: bool = True,
    noise: float = 0.0,
    contrast: float = 1.0,
    stream: str = STREAM,
    combination_lambdas: tuple[float, ...] = (COMBINATION_LAMBDA, COMBINATION_LAMBDA_PRESENCE_KEPT),
) -> dict[str, Any]:
    """Runs the evaluation (see the module docstring) and returns its report (JSON-ready).

    `noise` and `contrast` corrupt the scenes (`hf_fastrm.toy.scenes.draw_scene`; 0.0 and 1.0 leave them as the
    model was trained on them).
    """
    from transformers.utils import logging

    from hf_fastrm import FastRMWrapper
    from hf_fastrm.head import FastRMHead
    from hf_fastrm.teacher import gradient_relevancy_for_outputs
    from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
    from hf_fastrm.toy.modeling import format_prompt
    from hf_fastrm.toy.scenes import make_examples

    started = time.perf_counter()
    model = load_default_model(device=device)
    processor = load_default_processor()
    head = (FastRMHead.from_pretrained(head_dir) if head_dir else load_default_head()).to(device).eval()
    wrapper = FastRMWrapper(model, head)
    patch_size = int(model.config.vision_config.patch_size)
    tokenizer = processor.tokenizer
    examples = make_examples(num_examples, seed=f"{stream}:{seed}", noise=noise, contrast=contrast)
    special_ids = set(special_token_ids(model))

    rows: list[dict[str, Any]] = []
    teacher_entries: list[np.ndarray] = []
    fastrm_entries: list[np.ndarray] = []
    kind_entries: list[np.ndarray] = []  # per entry: the kind of answer token it belongs to (TOKEN_KINDS)
    token_kinds: list[str] = []  # per compared token
    pictures: list[str] = []
    for start in logging.tqdm(
        range(0, len(examples), batch_size), desc="grounding", unit="batch", disable=not show_progress
    ):
        batch = examples[start : start + batch_size]
        inputs = processor(
            images=[scene.image for scene, _ in batch],
            text=[format_prompt(question.text) for _, question in batch],
            return_tensors="pt",
            padding=True,
        ).to(device)
        inputs = dict(inputs)
        outputs = wrapper.generate(
            **inputs,
            max_new_tokens=4,
            do_sample=False,
            return_relevancy=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
        teacher = gradient_relevancy_for_outputs(model, outputs, inputs)
        prompt_length = inputs["input_ids"].shape[1]
        probabilities = torch.stack([score.float().softmax(-1) for score in outputs.scores], dim=1)
        new_tokens = outputs.sequences[:, prompt_length : prompt_length + probabilities.shape[1]]
        chosen_probabilities = probabilities.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1).cpu()  # (B, T)
        for row, (scene, question) in enumerate(batch):
            token_mask = outputs.token_mask[row].bool().cpu()
            image_mask = outputs.image_token_mask[row].bool().cpu()
            answer_ids = outputs.sequences[row, prompt_length:].cpu()[: token_mask.shape[0]][token_mask]
            answer = tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
            fastrm_maps = outputs.relevancy[row].float().cpu()[token_mask][:, image_mask].numpy()
            teacher_maps = teacher.relevancy[row].float().cpu()[token_mask][:, image_mask].numpy()
            first = int(torch.nonzero(token_mask)[0])
            record: dict[str, Any] = {
                "index": start + row,
                "kind": question.kind,
                "question": question.text,
                "expected": question.answer,
                "answer": answer,
                "correct": answer == question.answer,
                "present": question.present,
                "sequence_confidence": float(outputs.sequence_confidence[row]),
                "teacher_sequence_confidence": float(teacher.sequence_confidence[row]),
                "token_confidence": float(outputs.confidence[row, first]),
                "teacher_token_confidence": float(teacher.confidence[row, first]),
                "token_probability": float(probabilities[row, first, answer_ids[0]]),
                "answer_probability": float(chosen_probabilities[row, : token_mask.shape[0]][token_mask].prod()),
                # per generated token (up to and including EOS): the map's confidence, the chosen token's
                # probability, and whether it is a special token (left out of the sequence summaries)
                "token_confidences": [float(value) for value in outputs.confidence[row].float().cpu()[token_mask]],
                "token_probabilities": [
                    float(value) for value in chosen_probabilities[row, : token_mask.shape[0]][token_mask]
                ],
                "token_special": [int(token) in special_ids for token in answer_ids],
            }
            if question.present:
                target = question.target_object.patch_mask(patch_size).ravel()
                record["fastrm_hit"] = pointing_hit(fastrm_maps[0], target)
                record["teacher_hit"] = pointing_hit(teacher_maps[0], target)
            rows.append(record)
            usable = np.isfinite(teacher_maps).all(-1) & (np.ptp(np.nan_to_num(teacher_maps), axis=-1) > 0)
            teacher_entries.append(minmax(teacher_maps[usable]).ravel())
            fastrm_entries.append(minmax(np.nan_to_num(fastrm_maps[usable])).ravel())
            kinds = np.array([token_kind(int(token), special_ids, tokenizer) for token in answer_ids])
            kind_entries.append(np.repeat(kinds[usable], teacher_maps.shape[1]))
            token_kinds.extend(kinds[usable].tolist())
            if pictures_dir and question.present and len(pictures) < num_pictures:
                grid = round(math.sqrt(fastrm_maps.shape[1]))
                path = os.path.join(pictures_dir, f"grounding-{len(pictures)}.png")
                side_by_side(
                    scene.image,
                    teacher_maps[0].reshape(grid, grid),
                    fastrm_maps[0].reshape(grid, grid),
                    question.target_object.box,
                    processor,
                    path,
                )
                pictures.append(path)

    teacher_all = np.concatenate(teacher_entries) if teacher_entries else np.zeros(0)
    fastrm_all = np.concatenate(fastrm_entries) if fastrm_entries else np.zeros(0)
    teacher_labels = teacher_all >= threshold
    kinds_all = np.concatenate(kind_entries) if kind_entries else np.zeros(0, dtype=str)
    from hf_fastrm.distill import auroc

    present = [row for row in rows if row["present"]]
    correct_present = [row for row in present if row["correct"]]
    correctness_auroc, correctness_note = defined_auroc(
        [row["sequence_confidence"] for row in rows], [row["correct"] for row in rows], min_class
    )
    presence_auroc, presence_note = defined_auroc(
        [row["token_confidence"] for row in rows], [row["present"] for row in rows], min_class
    )
    teacher_presence_auroc, _ = defined_auroc(
        [row["teacher_token_confidence"] for row in rows], [row["present"] for row in rows], min_class
    )
    probability_correct_auroc, _ = defined_auroc(
        [row["token_probability"] for row in rows], [row["correct"] for row in rows], min_class
    )
    probability_presence_auroc, _ = defined_auroc(
        [row["token_probability"] for row in rows], [row["present"] for row in rows], min_class
    )
    correctness = {"all": rows, "present": present}
    correctness_by_measure = {
        subset_name: {
            "num_correct": sum(row["correct"] for row in subset),
            "num_wrong": sum(not row["correct"] for row in subset),
            **{
                measure: defined_auroc([row[key] for row in subset], [row["correct"] for row in subset], min_class)[0]
                for measure, key in (
                    ("fastrm", "sequence_confidence"),
                    ("teacher", "teacher_sequence_confidence"),
                    ("model_answer_probability", "answer_probability"),
                )
            },
        }
        for subset_name, subset in correctness.items()
    }

    def rate(key: str, subset: list[dict[str, Any]]) -> float | None:
        return float(np.mean([row[key] for row in subset])) if subset else None

    report = {
        "command": "python benchmarks/grounding.py " + " ".join(sys.argv[1:]),
        "seed_stream": f"{stream}:{seed}",
        "corruption": {"noise": noise, "contrast": contrast},
        "num_examples": len(rows),
        "num_present": len(present),
        "num_absent": len(rows) - len(present),
        "accuracy": rate("correct", rows),
        "num_wrong": sum(not row["correct"] for row in rows),
        "accuracy_by_kind": {
            kind: rate("correct", [row for row in rows if row["kind"] == kind])
            for kind in sorted({row["kind"] for row in rows})
        }
        | {
            "present": rate("correct", present),
            "absent": rate("correct", [row for row in rows if not row["present"]]),
        },
        "pointing_game": {
            "teacher": rate("teacher_hit", present),
            "fastrm": rate("fastrm_hit", present),
            "teacher_correct_answers": rate("teacher_hit", correct_present),
            "fastrm_correct_answers": rate("fastrm_hit", correct_present),
            "by_kind": {
                kind: {"teacher": rate("teacher_hit", subset), "fastrm": rate("fastrm_hit", subset), "n": len(subset)}
                for kind in sorted({row["kind"] for row in present})
                for subset in [[row for row in present if row["kind"] == kind]]
            },
        },
        "agreement": {
            "threshold": threshold,
            "f1": binary_f1(fastrm_all >= threshold, teacher_labels),
            "auroc": float(auroc(fastrm_all, teacher_labels)) if teacher_all.size else None,
            "num_entries": int(teacher_all.size),
            "by_token_kind": {
                kind: {
                    "f1": binary_f1(fastrm_all[chosen] >= threshold, teacher_labels[chosen]),
                    "teacher_positive_rate": float(teacher_labels[chosen].mean()),
                    "num_tokens": token_kinds.count(kind),
                }
                for kind in TOKEN_KINDS
                for chosen in [kinds_all == kind]
                if chosen.any()
            },
        },
        "combined_score": [combination_aurocs(rows, lam, min_class) for lam in combination_lambdas],
        "confidence_auroc": {
            "correct_vs_wrong": correctness_auroc,
            "correct_vs_wrong_note": correctness_note,
            "present_vs_absent": presence_auroc,
            "present_vs_absent_note": presence_note,
            "teacher_present_vs_absent": teacher_presence_auroc,
            "model_probability_correct_vs_wrong": probability_correct_auroc,
            "model_probability_present_vs_absent": probability_presence_auroc,
            "correct_vs_wrong_by_measure": correctness_by_measure,
        },
        "head": head_dir or "hf_fastrm/toy/assets/head",
        "head_dim": head.config.head_dim,
        "pictures": pictures,
        "seconds": round(time.perf_counter() - started, 1),
        "examples": rows,
    }
    return report


def side_by_side(
    image: Any, teacher_map: np.ndarray, fastrm_map: np.ndarray, box: tuple, processor: Any, path: str, size: int = 144
) -> None:
    """Writes a PNG: the image with the object's box, the teacher's map and FastRM's map, side by side."""
    from PIL import Image, ImageDraw

    from hf_fastrm.viz import overlay
    from hf_fastrm.viz.explain import model_view

    view = model_view(image, processor.image_processor)
    scale = size / view.size[0]
    framed = view.resize((size, size), Image.Resampling.NEAREST)
    left, top, right, bottom = box
    ImageDraw.Draw(framed).rectangle(
        (left * scale, top * scale, right * scale - 1, bottom * scale - 1), outline=(0, 0, 0), width=2
    )
    panels = [framed, overlay(view, teacher_map, size=(size, size)), overlay(view, fastrm_map, size=(size, size))]
    canvas = Image.new("RGB", (3 * size + 8, size), (255, 255, 255))
    for index, panel in enumerate(panels):
        canvas.paste(panel, (index * (size + 4), 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def format_table(report: dict[str, Any]) -> str:
    """The printable summary of a report."""

    def shown(value: float | None) -> str:
        return "not defined" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    pointing, agreement, confidence = report["pointing_game"], report["agreement"], report["confidence_auroc"]
    corruption = report.get("corruption") or {}
    by_measure = confidence.get("correct_vs_wrong_by_measure", {})
    rows = [
        ("corruption", f"noise {corruption.get('noise', 0.0)}, contrast {corruption.get('contrast', 1.0)}"),
        (
            "examples (present / absent)",
            f"{report['num_examples']} ({report['num_present']} / {report['num_absent']})",
        ),
        ("answer accuracy", f"{shown(report['accuracy'])} ({report['num_wrong']} wrong)"),
        ("pointing game, teacher", shown(pointing["teacher"])),
        ("pointing game, FastRM", shown(pointing["fastrm"])),
        (f"F1 vs teacher at {agreement['threshold']}", shown(agreement["f1"])),
        ("AUROC vs teacher", shown(agreement["auroc"])),
        *(
            (f"  F1 on {kind} tokens ({numbers['num_tokens']})", shown(numbers["f1"]))
            for kind, numbers in agreement.get("by_token_kind", {}).items()
        ),
        ("confidence AUROC, correct vs wrong (FastRM)", shown(confidence["correct_vs_wrong"])),
    ]
    for subset, label in (("all", "all questions"), ("present", "present objects only")):
        if subset in by_measure:
            numbers = by_measure[subset]
            rows.append((f"correct vs wrong, {label}", f"{numbers['num_correct']} / {numbers['num_wrong']}"))
            rows += [
                (f"  {name}", shown(numbers[key]))
                for name, key in (
                    ("FastRM sequence confidence", "fastrm"),
                    ("teacher's map confidence", "teacher"),
                    ("model's answer probability", "model_answer_probability"),
                )
            ]
    rows += [
        ("confidence AUROC, present vs absent", shown(confidence["present_vs_absent"])),
        ("  teacher's map confidence", shown(confidence["teacher_present_vs_absent"])),
        ("  model probability, present vs absent", shown(confidence["model_probability_present_vs_absent"])),
    ]
    for combined in report.get("combined_score", []):
        name = f"combined c*p^lam, lam={combined['lambda']:g}"
        rows += [
            (f"{name}: correct vs wrong", shown(combined["correct_vs_wrong"])),
            ("  present objects only", shown(combined["correct_vs_wrong_present_only"])),
            ("  present vs absent", shown(combined["present_vs_absent"])),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'measure':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    for note in (confidence["correct_vs_wrong_note"], confidence["present_vs_absent_note"]):
        if note:
            lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="names the scene stream <stream>:<seed>")
    parser.add_argument(
        "--stream",
        default=STREAM,
        help=f"seed stream name ({STREAM!r} for reported figures; {TUNE_STREAM!r} for choosing anything)",
    )
    parser.add_argument("--head", default=None, help="a head folder (the shipped head by default)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--min-class", type=int, default=5, help="fewest examples per class for an AUROC")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the report (with per-example rows) here")
    parser.add_argument("--pictures", default=None, help="folder for side-by-side PNGs (image, teacher, FastRM)")
    parser.add_argument("--num-pictures", type=int, default=3)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="Gaussian pixel noise std, in units of 0-255 (harder scenes; 0: off)"
    )
    parser.add_argument(
        "--contrast", type=float, default=1.0, help="object contrast in (0, 1] (harder scenes below 1; 1: off)"
    )
    parser.add_argument(
        "--sweep",
        nargs="+",
        default=None,
        metavar="REPORT_JSON",
        help=f"choose the combined score's weight from --json reports of the {TUNE_STREAM!r} stream (one clean, the "
        "others corrupted) and print the sweep; runs no evaluation",
    )
    args = parser.parse_args(argv)
    if args.sweep:
        reports = []
        for path in args.sweep:
            with open(path) as file:
                reports.append(json.load(file))
        print(format_sweep(sweep_combination(reports)))
        return 0
    report = evaluate(
        args.num_examples,
        args.seed,
        head_dir=args.head,
        batch_size=args.batch_size,
        threshold=args.threshold,
        min_class=args.min_class,
        device=args.device,
        pictures_dir=args.pictures,
        num_pictures=args.num_pictures,
        noise=args.noise,
        contrast=args.contrast,
        stream=args.stream,
    )
    print(format_table(report))
    if args.json:
        from hf_fastrm.utils.io import atomic_write_text

        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            if isinstance(value, list):
                return [clean(item) for item in value]
            return None if isinstance(value, float) and not math.isfinite(value) else value

        atomic_write_text(args.json, json.dumps(clean(report), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
