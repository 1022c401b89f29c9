"""The grounding evaluation's helpers, the toy head's build script (tiny) and the shipped head."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from hf_fastrm import FastRMWrapper
from hf_fastrm.head import FastRMHead
from hf_fastrm.toy import DEFAULT_HEAD_DIR, default_model_available, load_default_model, load_default_processor
from hf_fastrm.toy.modeling import format_prompt
from hf_fastrm.toy.scenes import make_examples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_model = pytest.mark.skipif(not default_model_available(), reason="the shipped toy model is not in this tree")


def _load_grounding():
    spec = importlib.util.spec_from_file_location(
        "grounding_benchmark", os.path.join(ROOT, "benchmarks", "grounding.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grounding = _load_grounding()


# ---------------------------------------------------------------------------------------------- helpers
def test_pointing_hit_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = rng.integers(0, 4, size=(3, 3)).astype(float)
        if rng.random() < 0.2:
            values[rng.integers(0, 3), rng.integers(0, 3)] = np.nan
        target = rng.random((3, 3)) < 0.4
        peak = np.nanmax(values)
        expected = all(target[i, j] for i, j in itertools.product(range(3), range(3)) if values[i, j] == peak)
        assert grounding.pointing_hit(values, target) == expected
    assert not grounding.pointing_hit(np.full(4, np.nan), np.ones(4, dtype=bool))
    assert not grounding.pointing_hit(np.ones(4), np.array([True, True, False, True]))  # flat map points nowhere
    with pytest.raises(ValueError, match="patches"):
        grounding.pointing_hit(np.ones(4), np.ones(5, dtype=bool))


def test_auroc_and_f1_match_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=40).astype(float)
    labels = rng.random(40) < 0.4
    pairs = [(p, n) for p in scores[labels] for n in scores[~labels]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    value, note = grounding.defined_auroc(list(scores), list(labels), min_class=1)
    assert note is None and value == pytest.approx(expected)

    value, note = grounding.defined_auroc([0.1, 0.2, 0.3], [True, True, True], min_class=1)
    assert value is None and "not defined" in note
    value, note = grounding.defined_auroc([0.1, 0.2, 0.3, 0.4], [True, True, True, False], min_class=2)
    assert value is None and "1 negative" in note

    predicted = rng.random(50) < 0.5
    reference = rng.random(50) < 0.5
    tp = sum(p and r for p, r in zip(predicted, reference, strict=True))
    fp = sum(p and not r for p, r in zip(predicted, reference, strict=True))
    fn = sum(r and not p for p, r in zip(predicted, reference, strict=True))
    assert grounding.binary_f1(predicted, reference) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert np.isnan(grounding.binary_f1(np.zeros(3, bool), np.zeros(3, bool)))

    rows = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(grounding.minmax(rows), [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------- the head
def _assert_head_runs_with_model(head: FastRMHead) -> None:
    model, processor = load_default_model(), load_default_processor()
    head.check_compatible(model.config)  # names, widths and model type agree with the shipped model
    scene, question = make_examples(1, seed="test-grounding")[0]
    inputs = dict(processor(images=scene.image, text=format_prompt(question.text), return_tensors="pt"))
    plain = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    out = FastRMWrapper(model, head).generate(**inputs, max_new_tokens=4, do_sample=False, return_relevancy=True)
    assert torch.equal(out.sequences, plain)
    maps = out.relevancy[0][out.token_mask[0].bool()]
    assert maps.shape[-1] == 36 and torch.isfinite(maps).all()


@needs_model
def test_build_head_tiny_end_to_end(tmp_path):
    from hf_fastrm.toy.build_head import BUILD_INFO_NAME, main

    output = tmp_path / "head"
    output.mkdir()
    (output / "stale.txt").write_text("replaced atomically")
    argv = ["--output-dir", str(output), "--work-dir", str(tmp_path / "work"), "--train-examples", "24"]
    argv += ["--test-examples", "8", "--epochs", "1", "--head-dim", "16", "--val-fraction", "0.25"]
    assert main(argv) == 0
    assert not (output / "stale.txt").exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith((".tmp", ".old"))]
    head = FastRMHead.from_pretrained(output)
    assert head.config.head_dim == 16 and head.config.label_threshold == 0.3
    assert 0.0 <= head.config.metrics["test_f1"] <= 1.0 and head.config.metrics["test_examples"] == 8
    record = json.loads((output / BUILD_INFO_NAME).read_text())
    assert record["seed_streams"] == {"train": "head-train:0", "test": "head-test:0"}
    assert "F1" in (output / "README.md").read_text()
    _assert_head_runs_with_model(head)


@needs_model
@pytest.mark.skipif(not os.path.isdir(DEFAULT_HEAD_DIR), reason="the shipped head is not in this tree")
def test_shipped_head_loads_and_matches_the_shipped_model():
    from hf_fastrm.toy import load_default_head

    head = load_default_head()
    assert head.config.metrics["test_f1"] > 0.5
    _assert_head_runs_with_model(head)


def test_load_default_head_names_the_fix_when_missing(monkeypatch, tmp_path):
    import hf_fastrm.toy as toy

    monkeypatch.setattr(toy, "DEFAULT_HEAD_DIR", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="hf_fastrm.toy.build_head"):
        toy.load_default_head()


# ---------------------------------------------------------------------------------------------- the benchmark
@needs_model
@pytest.mark.skipif(not os.path.isdir(DEFAULT_HEAD_DIR), reason="the shipped head is not in this tree")
def test_grounding_script_tiny(tmp_path, capsys):
    path = tmp_path / "grounding.json"
    argv = ["--num-examples", "8", "--batch-size", "4", "--json", str(path), "--pictures", str(tmp_path / "pics")]
    argv += ["--num-pictures", "1"]
    assert grounding.main(argv) == 0
    assert "pointing game, FastRM" in capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["num_examples"] == 8 and len(report["examples"]) == 8
    assert report["seed_stream"] == "grounding:0"
    assert report["num_present"] + report["num_absent"] == 8
    hits = [row["fastrm_hit"] for row in report["examples"] if row["present"]]
    assert report["pointing_game"]["fastrm"] == pytest.approx(sum(hits) / len(hits))
    if report["num_wrong"] < 5:  # too few wrong answers: not defined, never a made-up number
        assert report["confidence_auroc"]["correct_vs_wrong"] is None
    assert len(report["pictures"]) == 1 and os.path.isfile(report["pictures"][0])
    # Agreement by answer-token kind: every compared token counted once; the pooled F1 lies between the kinds' F1s.
    agreement = report["agreement"]
    by_kind = agreement["by_token_kind"]
    assert set(by_kind) <= set(grounding.TOKEN_KINDS) and "end of sequence" in by_kind
    assert sum(numbers["num_tokens"] for numbers in by_kind.values()) * 36 == agreement["num_entries"]
    scores = [numbers["f1"] for numbers in by_kind.values()]
    assert min(scores) - 1e-12 <= agreement["f1"] <= max(scores) + 1e-12


def test_token_kind():
    tokenizer = load_default_processor().tokenizer
    none_id, red_id = tokenizer.convert_tokens_to_ids(["none", "red"])
    assert grounding.token_kind(none_id, {2}, tokenizer) == "none"
    assert grounding.token_kind(red_id, {2}, tokenizer) == "answer word"
    assert grounding.token_kind(2, {2}, tokenizer) == "end of sequence"


def test_defined_auroc_leaves_out_unscored_examples():
    # hand case: correct answers (True) score 0.9 and 0.7, wrong ones 0.8 and 0.1: 3 of 4 pairs ordered, AUROC 0.75
    value, note = grounding.defined_auroc([0.9, 0.7, 0.8, 0.1], [True, True, False, False], min_class=1)
    assert value == pytest.approx(0.75) and note is None
    value, note = grounding.defined_auroc(
        [0.9, float("nan"), 0.7, 0.8, 0.1, float("nan")], [True, True, True, False, False, False], min_class=1
    )
    assert value == pytest.approx(0.75) and "2 examples without a score" in note
    value, note = grounding.defined_auroc([0.9, float("nan")], [True, False], min_class=1)
    assert value is None and "0 negative" in note and "1 examples without a score" in note


@needs_model
@pytest.mark.skipif(not os.path.isdir(DEFAULT_HEAD_DIR), reason="the shipped head is not in this tree")
def test_grounding_script_harder_scenes(tmp_path, capsys):
    path = tmp_path / "hard.json"
    argv = ["--num-examples", "16", "--batch-size", "8", "--noise", "0.4", "--min-class", "1", "--json", str(path)]
    assert grounding.main(argv) == 0
    printed = capsys.readouterr().out
    assert "noise 0.4" in printed and "model's answer probability" in printed
    report = json.loads(path.read_text())
    assert report["corruption"] == {"noise": 0.4, "contrast": 1.0}
    rows = report["examples"]
    clean = make_examples(16, seed="grounding:0")
    assert [row["question"] for row in rows] == [question.text for _, question in clean]  # same questions, noisier
    assert report["num_wrong"] == sum(not row["correct"] for row in rows) > 0  # this noise level makes mistakes
    by_measure = report["confidence_auroc"]["correct_vs_wrong_by_measure"]
    for subset, chosen in (("all", rows), ("present", [row for row in rows if row["present"]])):
        numbers = by_measure[subset]
        correct = [row["correct"] for row in chosen]
        assert numbers["num_wrong"] == correct.count(False) and numbers["num_correct"] == correct.count(True)
        for measure, key in (
            ("fastrm", "sequence_confidence"),
            ("teacher", "teacher_sequence_confidence"),
            ("model_answer_probability", "answer_probability"),
        ):
            expected, _ = grounding.defined_auroc([row[key] for row in chosen], correct, min_class=1)
            assert numbers[measure] == expected
            assert expected is None or 0.0 <= expected <= 1.0
    assert by_measure["all"]["fastrm"] == report["confidence_auroc"]["correct_vs_wrong"]
    for combined in report["combined_score"]:  # the report's combined rows are the documented formula on its rows
        assert combined == grounding.combination_aurocs(rows, combined["lambda"], min_class=1)
    assert [combined["lambda"] for combined in report["combined_score"]] == [
        grounding.COMBINATION_LAMBDA,
        grounding.COMBINATION_LAMBDA_PRESENCE_KEPT,
    ]
    for row in rows:
        assert 0.0 < row["answer_probability"] <= row["token_probability"] + 1e-6  # a product of probabilities
        assert row["token_probabilities"][0] == pytest.approx(row["token_probability"])
        assert math.prod(row["token_probabilities"]) == pytest.approx(row["answer_probability"], rel=1e-5)
        assert len(row["token_confidences"]) == len(row["token_special"]) == len(row["token_probabilities"])
        assert row["token_confidences"][0] == pytest.approx(row["token_confidence"])
        assert 0.0 <= row["teacher_sequence_confidence"] <= 1.0


# ---------------------------------------------------------------------------------------------- combined score
def _row(confidences, probabilities, special, *, correct=True, present=True):
    return {
        "token_confidences": confidences,
        "token_probabilities": probabilities,
        "token_special": special,
        "correct": correct,
        "present": present,
    }


def test_combined_score_matches_hand_computation():
    # c^(1 - w) * p^w with w = lam / (1 + lam): lam = 3 gives c^0.25 * p^0.75
    assert grounding.combined_score(0.16, 0.5, lam=3.0) == pytest.approx(0.16**0.25 * 0.5**0.75)
    assert grounding.combined_score(0.3, 0.2, lam=0.0) == pytest.approx(0.3)  # lam 0: the map's confidence itself
    # no underflow where c * p^lam would (0.5^60000 is below float64's range); ranks follow c * p^lam
    tiny = grounding.combined_score(np.array([0.9, 0.1]), np.array([0.5, 0.5]), lam=6e4)
    assert (tiny > 0).all() and tiny[0] > tiny[1]
    assert np.isnan(grounding.combined_score(math.nan, 0.9, lam=1.0))
    with pytest.raises(ValueError, match="lam"):
        grounding.combined_score(0.5, 0.5, lam=-1.0)
    # the sequence score averages the non-special tokens only; the token score is the first token's
    row = _row([0.4, 0.9, 0.05], [0.5, 0.8, 1.0], [False, False, True])
    expected = ((0.4**0.5 * 0.5**0.5) + (0.9**0.5 * 0.8**0.5)) / 2
    assert grounding.sequence_combined_score(row, lam=1.0) == pytest.approx(expected)
    assert grounding.token_combined_score(row, lam=1.0) == pytest.approx(0.4**0.5 * 0.5**0.5)
    assert math.isnan(grounding.sequence_combined_score(_row([0.2], [1.0], [True]), lam=1.0))


def test_sweep_chooses_the_max_min_weight_on_tuning_reports_only():
    # clean: the map's confidence separates present from absent, the probability does not;
    # corrupted: the probability separates correct from wrong, the map's confidence is reversed
    clean_rows = [_row([0.9], [0.99], [False], present=True), _row([0.8], [0.999], [False], present=True)]
    clean_rows += [_row([0.2], [0.999], [False], present=False), _row([0.1], [0.99], [False], present=False)]
    hard_rows = [_row([0.1], [0.99], [False], correct=True), _row([0.2], [0.95], [False], correct=True)]
    hard_rows += [_row([0.9], [0.5], [False], correct=False), _row([0.8], [0.4], [False], correct=False)]
    clean = {"seed_stream": "grounding-tune:0", "corruption": {"noise": 0.0, "contrast": 1.0}, "examples": clean_rows}
    hard = {"seed_stream": "grounding-tune:0", "corruption": {"noise": 0.3, "contrast": 1.0}, "examples": hard_rows}
    sweep = grounding.sweep_combination([clean, hard], grid=(0.0, 10.0, 1e7))
    by_lambda = {row["lambda"]: row for row in sweep["rows"]}
    assert (
        by_lambda[0.0]["present_vs_absent"] == 1.0
        and by_lambda[0.0]["correct_vs_wrong"]["noise 0.3, contrast 1.0"] == 0.0
    )
    # lam 10: on clean rows p hardly varies, so c still orders them; on corrupted rows p's spread outweighs c's
    assert by_lambda[10.0]["present_vs_absent"] == 1.0
    assert by_lambda[10.0]["correct_vs_wrong"]["noise 0.3, contrast 1.0"] == 1.0
    assert sweep["lambda"] == 10.0 and sweep["min_auroc"] == 1.0
    assert "chosen lambda: 10" in grounding.format_sweep(sweep)
    with pytest.raises(ValueError, match="tuning reports only"):
        grounding.sweep_combination([{**clean, "seed_stream": "grounding:1"}, hard])
    all_correct = {**hard, "examples": [{**row, "correct": True} for row in hard_rows]}
    with pytest.raises(ValueError, match="not defined on noise 0.3"):
        grounding.sweep_combination([clean, all_correct])
    with pytest.raises(ValueError, match="one clean"):
        grounding.sweep_combination([hard])


@needs_model
@pytest.mark.skipif(not os.path.isdir(DEFAULT_HEAD_DIR), reason="the shipped head is not in this tree")
def test_sweep_command_reads_tuning_stream_reports(tmp_path, capsys):
    paths = []
    for name, corruption in (("clean", []), ("noisy", ["--noise", "0.4"])):
        paths.append(str(tmp_path / f"{name}.json"))
        argv = ["--num-examples", "12", "--batch-size", "12", "--stream", "grounding-tune", "--json", paths[-1]]
        assert grounding.main(argv + corruption) == 0
    report = json.loads((tmp_path / "clean.json").read_text())
    assert report["seed_stream"] == "grounding-tune:0"
    tuning_questions = [row["question"] for row in report["examples"]]
    assert tuning_questions == [question.text for _, question in make_examples(12, seed="grounding-tune:0")]
    assert tuning_questions != [question.text for _, question in make_examples(12, seed="grounding:0")]
    capsys.readouterr()
    assert grounding.main(["--sweep", *paths]) == 0
    assert "chosen lambda" in capsys.readouterr().out
