"""The distillation pipeline end to end on a tiny LLaVA: distill -> train -> evaluate -> push.

The tiny model is saved with a processor built offline (a word-level tokenizer, a CLIP image processor from
parameters), so the pipeline loads it by path exactly as it would load a Hub model.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from hf_fastrm import FastRMConfig, FastRMHead
from hf_fastrm.cli import main as cli_main
from hf_fastrm.distill import (
    ShardDataset,
    ShardExample,
    auroc,
    average_ranks,
    build_prompt,
    distill,
    evaluate_head,
    load_corpus,
    push_head,
    read_shard_info,
    spearman_rows,
    split_example_ids,
    train_head,
    write_shard,
)
from hf_fastrm.distill import shards as shards_module
from hf_fastrm.distill import train as train_module
from hf_fastrm.testing_utils import tiny_llava, tiny_llava_processor

NUM_EXAMPLES = 12
DISTILL_KWARGS = {"max_new_tokens": 4, "batch_size": 2, "examples_per_shard": 4, "storage_dtype": "float32"}


# ---------------------------------------------------------------------------------------------- fixtures
def tiny_processor():
    """A LlavaProcessor for `tiny_llava()`: word-level tokenizer over its 99 ids, 8 px images, 2 px patches."""
    return tiny_llava_processor()


def make_questions(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{rng.integers(3, 96)}" for _ in range(3)) for _ in range(count)]


def make_images(count: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((10, 10, 3)) * 255).astype("uint8")) for _ in range(count)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def model_dir(workdir):
    path = workdir / "tiny-llava"
    tiny_llava().save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def image_folder(workdir):
    folder = workdir / "images"
    folder.mkdir()
    with open(folder / "questions.jsonl", "w", encoding="utf-8") as handle:
        for index, (image, question) in enumerate(
            zip(make_images(NUM_EXAMPLES), make_questions(NUM_EXAMPLES), strict=True)
        ):
            image.save(folder / f"scene-{index}.png")
            handle.write(json.dumps({"image": f"scene-{index}.png", "question": question, "id": f"q{index}"}) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def reference_shards(workdir, model_dir, image_folder):
    """One uninterrupted single-process run (the reference the other runs must reproduce)."""
    output = str(workdir / "reference-shards")
    summary = distill(model_dir, image_folder, output, show_progress=False, **DISTILL_KWARGS)
    assert summary.num_examples == NUM_EXAMPLES and summary.num_new_examples == NUM_EXAMPLES
    return output


def shard_contents(directory) -> dict[str, ShardExample]:
    dataset = ShardDataset(directory)
    return {dataset[i].example_id: dataset[i] for i in range(len(dataset))}


def ids_per_shard(directory) -> list[list[str]]:
    return [read_shard_info(path).example_ids for path in shards_module.list_shards(directory)]


def assert_same_examples(directory, reference, atol: float = 0.0) -> None:
    got, expected = shard_contents(directory), shard_contents(reference)
    assert sorted(got) == sorted(expected)
    for example_id, example in expected.items():
        other = got[example_id]
        assert torch.equal(other.answer_token_ids, example.answer_token_ids), example_id
        assert torch.equal(other.token_mask, example.token_mask), example_id
        for name in ("image_states", "token_states", "teacher_maps"):
            torch.testing.assert_close(
                getattr(other, name), getattr(example, name), atol=atol, rtol=0 if not atol else 1e-4
            )


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_text(path) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def read_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def no_leftovers(directory) -> bool:
    return not [name for name in os.listdir(directory) if name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- distill
def test_distill_writes_each_example_once_with_the_teachers_maps(reference_shards, model_dir, image_folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hf_fastrm.teacher import gradient_relevancy

    per_shard = ids_per_shard(reference_shards)
    flat = [i for ids in per_shard for i in ids]
    assert sorted(flat) == sorted(f"q{i}" for i in range(NUM_EXAMPLES)) and len(set(flat)) == len(flat)
    assert [len(ids) for ids in per_shard] == [4, 4, 4]
    manifest = read_json(os.path.join(reference_shards, "manifest.json"))
    assert manifest["complete"] and manifest["num_examples"] == NUM_EXAMPLES
    info = read_shard_info(shards_module.list_shards(reference_shards)[0])
    assert info.metadata["hidden_size"] == 32 and info.metadata["model_type"] == "llava"
    assert info.metadata["model_name_or_path"] == model_dir and len(info.metadata["answers"]) == 4

    # Example q5 alone, computed directly: same answer, same hidden states, same teacher maps.
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    corpus = load_corpus(image_folder)
    example = corpus[5]
    inputs = processor(images=[example.image], text=[build_prompt(processor, example.question)], return_tensors="pt")
    sequences = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    teacher = gradient_relevancy(model, dict(inputs), sequences, return_hidden_states=True)
    tokens = teacher.result.token_mask[0]
    stored = shard_contents(reference_shards)["q5"]
    assert torch.equal(stored.answer_token_ids, sequences[0, inputs["input_ids"].shape[1] :][tokens])
    torch.testing.assert_close(stored.teacher_maps, teacher.result.relevancy[0][tokens].float())
    torch.testing.assert_close(stored.token_states, teacher.token_hidden_states[0][tokens])
    torch.testing.assert_close(stored.image_states, teacher.image_hidden_states[0])
    assert stored.image_states.shape == (16, 32) and stored.teacher_maps.shape == (int(tokens.sum()), 16)


def test_distill_from_a_saved_dataset_through_the_cli(workdir, model_dir, capsys):
    import datasets

    dataset = datasets.Dataset.from_dict(
        {"picture": make_images(5, seed=1), "prompt": make_questions(5, seed=1), "qid": [10, 11, 12, 13, 14]}
    ).cast_column("picture", datasets.Image())
    dataset.save_to_disk(str(workdir / "dataset"))
    output = str(workdir / "dataset-shards")
    argv = ["distill", "--model", model_dir, "--corpus", str(workdir / "dataset"), "--output-dir", output]
    argv += ["--image-column", "picture", "--question-column", "prompt", "--id-column", "qid", "--no-progress"]
    argv += ["--max-new-tokens", "3", "--batch-size", "3", "--examples-per-shard", "2", "--token-chunk-size", "2"]
    assert cli_main(argv) == 0
    assert "5 examples in complete shards" in capsys.readouterr().out
    assert sorted(i for ids in ids_per_shard(output) for i in ids) == ["10", "11", "12", "13", "14"]
    with safe_open(shards_module.list_shards(output)[0], "pt") as handle:
        assert handle.get_slice("image_states").get_dtype() == "BF16"  # the default storage dtype
    # Running it again finds everything done and writes nothing.
    before = sorted(os.listdir(output))
    assert cli_main(argv) == 0
    assert sorted(os.listdir(output)) == before


def test_killed_distill_resumes_to_the_same_result(workdir, model_dir, image_folder, reference_shards, monkeypatch):
    output = str(workdir / "crashed-shards")
    real_save = shards_module.save_file
    calls = []

    def save_then_die(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:  # dies in the middle of writing the third shard
            with open(path, "wb") as handle:
                handle.write(b"half a shard")
            raise RuntimeError("simulated kill")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(shards_module, "save_file", save_then_die)
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(model_dir, image_folder, output, show_progress=False, **DISTILL_KWARGS)
    assert len(ids_per_shard(output)) == 2 and no_leftovers(output)
    monkeypatch.setattr(shards_module, "save_file", real_save)
    summary = distill(model_dir, image_folder, output, show_progress=False, **DISTILL_KWARGS)
    assert summary.num_skipped_examples == 8 and summary.num_new_examples == 4
    assert_same_examples(output, reference_shards)


def test_full_disk_leaves_nothing_half_written(workdir, model_dir, image_folder, monkeypatch):
    output = str(workdir / "full-disk")

    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards_module, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left on the device while writing the shard") as caught:
        distill(model_dir, image_folder, output, show_progress=False, limit=4, **DISTILL_KWARGS)
    assert caught.value.errno == errno.ENOSPC
    assert shards_module.list_shards(output) == [] and no_leftovers(output)


def test_distill_refuses_an_output_dir_of_another_model(workdir, model_dir, image_folder, reference_shards):
    other = workdir / "other-model"
    tiny_llava(hidden_size=48).save_pretrained(other)
    tiny_processor().save_pretrained(other)
    with pytest.raises(ValueError, match="holds shards of another model"):
        distill(str(other), image_folder, reference_shards, show_progress=False, **DISTILL_KWARGS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(script_args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    """Two CPU processes in one gloo group. accelerate 1.x starts a single process for ``--cpu --num_processes 2``
    unless MPI is set up; ``--multi_gpu`` goes through torchrun, and ACCELERATE_USE_CPU=1 keeps it on the CPU."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), *script_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["ACCELERATE_USE_CPU"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def test_accelerate_launch_two_processes_distill_and_train(workdir, model_dir, image_folder, reference_shards):
    output, head_dir = str(workdir / "launched-shards"), str(workdir / "launched-head")
    script = workdir / "launched.py"
    distill_args = ["distill", "--model", model_dir, "--corpus", image_folder, "--output-dir", output]
    distill_args += ["--max-new-tokens", "4", "--batch-size", "2", "--examples-per-shard", "4"]
    distill_args += ["--storage-dtype", "float32", "--no-progress"]
    train_args = ["train", "--shards", output, "--output-dir", head_dir, "--head-dim", "8", "--epochs", "2"]
    train_args += ["--batch-size", "2", "--val-fraction", "0.25", "--no-progress"]
    script.write_text(
        "import sys\nfrom hf_fastrm.cli import main\n"
        f"assert main({distill_args!r}) == 0\nassert main({train_args!r}) == 0\n"
    )
    accelerate_launch([str(script)])
    ranks = sorted({shards_module.parse_shard_name(p)[0] for p in shards_module.list_shards(output)})
    assert ranks == [0, 1]
    flat = [i for ids in ids_per_shard(output) for i in ids]
    assert sorted(flat) == sorted(f"q{i}" for i in range(NUM_EXAMPLES)) and len(set(flat)) == len(flat)
    assert_same_examples(output, reference_shards, atol=1e-5)
    head = FastRMHead.from_pretrained(head_dir)
    assert head.config.metrics["epoch"] in (1, 2) and "f1" in head.config.metrics
    assert len(read_json(os.path.join(head_dir, "training_info.json"))["history"]) == 2


@pytest.mark.slow
def test_distill_killed_by_a_signal_resumes(workdir, model_dir, image_folder, reference_shards):
    output = str(workdir / "signal-shards")
    argv = [sys.executable, "-m", "hf_fastrm.cli", "distill", "--model", model_dir, "--corpus", image_folder]
    argv += ["--output-dir", output, "--max-new-tokens", "4", "--batch-size", "2", "--examples-per-shard", "4"]
    argv += ["--storage-dtype", "float32", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isdir(output) and shards_module.list_shards(output)):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(ids_per_shard(output)) < 3, "the run finished before it could be killed"
    subprocess.run(argv, env=env, check=True, capture_output=True)
    # Another process computed these states and maps: its thread pool may round differently from the in-process
    # reference (float32), so compare with a tolerance far below the values' scale, as for the launched run.
    assert_same_examples(output, reference_shards, atol=1e-5)
    assert no_leftovers(output)


# ---------------------------------------------------------------------------------------------- train / evaluate
def test_train_evaluate_and_push_on_the_tiny_model(workdir, reference_shards, monkeypatch):
    head_dir = str(workdir / "tiny-head")
    summary = train_head(
        reference_shards, head_dir, head_dim=8, epochs=2, batch_size=4, val_fraction=0.25, show_progress=False
    )
    assert {"fastrm_config.json", "fastrm_head.safetensors", "README.md", "training_info.json"} <= set(
        os.listdir(head_dir)
    )
    head = FastRMHead.from_pretrained(head_dir)
    assert head.config.metrics == pytest.approx(summary.metrics, nan_ok=True)
    assert set(head.config.metrics) >= {"accuracy", "precision", "recall", "f1", "auroc", "spearman"}
    assert "## Metrics" in read_text(os.path.join(head_dir, "README.md"))
    # The head's validation metrics are what evaluate reports on the same split.
    report = evaluate_head(head_dir, reference_shards, split="validation", show_progress=False)  # the head's split
    for name in ("accuracy", "f1", "auroc"):
        assert report["metrics"][name] == pytest.approx(head.config.metrics[name], nan_ok=True)
    json_path = str(workdir / "report.json")
    assert cli_main(["evaluate", "--head", head_dir, "--shards", reference_shards, "--json", json_path]) == 0
    saved = read_json(json_path)
    assert saved["num_examples"] == NUM_EXAMPLES and saved["base_model"].endswith("tiny-llava")


@pytest.mark.slow
def test_head_learns_the_tiny_models_teacher_maps(workdir, model_dir):
    """On the tiny random LLaVA the teacher's maps are flat (about 64% of patches labelled relevant at 0.3), so F1 is
    not telling (predicting every patch relevant already scores about 0.78); AUROC and Spearman are."""
    folders = {}
    for name, count, seed in (("tiny-train", 200, 10), ("tiny-held-out", 50, 11)):
        folder = workdir / name
        folder.mkdir()
        with open(folder / "questions.jsonl", "w", encoding="utf-8") as handle:
            for index, (image, question) in enumerate(
                zip(make_images(count, seed), make_questions(count, seed), strict=True)
            ):
                image.save(folder / f"{index}.png")
                handle.write(json.dumps({"image": f"{index}.png", "question": question}) + "\n")
        folders[name] = str(workdir / f"{name}-shards")
        distill(model_dir, str(folder), folders[name], max_new_tokens=8, batch_size=8, show_progress=False)
    head_dir = str(workdir / "tiny-learned-head")
    train_head(folders["tiny-train"], head_dir, head_dim=16, epochs=10, learning_rate=1e-2, show_progress=False)
    untrained = FastRMHead(FastRMConfig(hidden_size=32, head_dim=16, base_model_name_or_path=model_dir))
    trained = evaluate_head(head_dir, folders["tiny-held-out"], show_progress=False)["metrics"]
    baseline = evaluate_head(untrained, folders["tiny-held-out"], show_progress=False)["metrics"]
    assert trained["auroc"] > baseline["auroc"] + 0.2 and trained["spearman"] > baseline["spearman"] + 0.4
    assert trained["f1"] > baseline["f1"]


# Synthetic shards: teacher maps are a known function of the states (a planted head), so a head can learn them.
def planted_shards(directory, *, num_examples=160, hidden=32, model="synthetic/vlm", revision="abc123", seed=0):
    """Shards whose teacher maps come from one fixed planted head; `seed` draws the states."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(1234)
    planted = FastRMHead(FastRMConfig(hidden_size=hidden, head_dim=8))
    with torch.no_grad():
        planted.query.weight.mul_(6.0)
        planted.key.weight.mul_(6.0)
    examples = []
    for index in range(num_examples):
        num_image, num_tokens = 12 + index % 5, 2 + index % 3
        image_states = torch.randn(num_image, hidden, generator=generator)
        token_states = torch.randn(num_tokens, hidden, generator=generator)
        with torch.no_grad():
            maps = planted(token_states.unsqueeze(0), image_states.unsqueeze(0))[0]
        examples.append(
            ShardExample(
                example_id=f"s{seed}-{index}",
                image_states=image_states,
                token_states=token_states,
                teacher_maps=maps,
                token_mask=torch.ones(num_tokens, dtype=torch.bool),
                answer_token_ids=torch.arange(num_tokens),
            )
        )
    info = {"model_name_or_path": model, "model_revision": revision, "model_type": "llava", "hidden_size": hidden}
    for start in range(0, num_examples, 64):
        write_shard(
            os.path.join(directory, shards_module.shard_name(0, start // 64)),
            examples[start : start + 64],
            info,
            storage_dtype=torch.float32,
            extra_metadata={"corpus": "synthetic-corpus"},
        )
    return str(directory)


@pytest.fixture(scope="module")
def synthetic(workdir):
    return planted_shards(workdir / "synthetic")


def test_trained_head_beats_an_untrained_one_on_held_out_f1(workdir, synthetic):
    held_out = planted_shards(workdir / "synthetic-held-out", num_examples=40, seed=7)
    head_dir = str(workdir / "synthetic-head")
    train_head(
        synthetic, head_dir, head_dim=8, epochs=10, batch_size=16, learning_rate=2e-2, seed=0, show_progress=False
    )
    untrained = FastRMHead(FastRMConfig(hidden_size=32, head_dim=8, base_model_name_or_path="synthetic/vlm"))
    trained_f1 = evaluate_head(head_dir, held_out, show_progress=False)["metrics"]["f1"]
    untrained_f1 = evaluate_head(untrained, held_out, show_progress=False)["metrics"]["f1"]
    assert trained_f1 > 0.8 and trained_f1 > untrained_f1 + 0.3, (trained_f1, untrained_f1)


def test_training_is_seeded_and_resumes_to_the_same_head(workdir, synthetic, monkeypatch):
    kwargs = {"head_dim": 8, "epochs": 2, "batch_size": 32, "learning_rate": 1e-2, "show_progress": False}
    straight, again, crashed = (str(workdir / name) for name in ("straight", "again", "crashed"))
    train_head(synthetic, straight, **kwargs)
    train_head(synthetic, again, **kwargs)
    real_save = train_module._save_checkpoint

    def save_then_die(accelerator, output_dir, state, limit):
        real_save(accelerator, output_dir, state, limit)
        if state["epoch"] == 1:
            raise RuntimeError("simulated kill after epoch 1")

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_head(synthetic, crashed, **kwargs)
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    summary = train_head(synthetic, crashed, resume=True, **kwargs)
    assert [record["epoch"] for record in summary.history] == [1, 2]
    weights = [FastRMHead.from_pretrained(path).state_dict() for path in (straight, again, crashed)]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]) and torch.equal(weights[0][name], weights[2][name])


def test_evaluation_agrees_with_a_brute_force_computation(workdir, synthetic):
    torch.manual_seed(3)
    head = FastRMHead(FastRMConfig(hidden_size=32, head_dim=8, base_model_name_or_path="synthetic/vlm"))
    report = evaluate_head(head, synthetic, label_threshold=0.3, show_progress=False)
    scores, labels, correlations = [], [], []
    for path in shards_module.list_shards(synthetic):
        with safe_open(path, "pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        image_offset = token_offset = map_offset = 0
        for num_image, num_tokens in zip(tensors["num_image_tokens"], tensors["num_tokens"], strict=True):
            num_image, num_tokens = int(num_image), int(num_tokens)
            image = tensors["image_states"][image_offset : image_offset + num_image]
            tokens = tensors["token_states"][token_offset : token_offset + num_tokens]
            maps = tensors["teacher_maps"][map_offset : map_offset + num_image * num_tokens].view(num_tokens, -1)
            with torch.no_grad():
                relevance = head(tokens.unsqueeze(0), image.unsqueeze(0))[0].numpy().astype(np.float64)
            maps = maps.numpy().astype(np.float64)
            for t in range(num_tokens):
                low, high = maps[t].min(), maps[t].max()
                labels.extend(((maps[t] - low) / (high - low) >= 0.3).tolist())
                scores.extend(relevance[t].tolist())
                correlations.append(brute_spearman(relevance[t], maps[t]))
            image_offset, token_offset = image_offset + num_image, token_offset + num_tokens
            map_offset += num_image * num_tokens
    scores, labels = np.array(scores), np.array(labels)
    predicted = scores >= 0.5
    tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
    fn, tn = int((~predicted & labels).sum()), int((~predicted & ~labels).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    metrics = report["metrics"]
    assert report["counts"] == {
        "true_positives": tp,
        "false_positives": fp,
        "true_negatives": tn,
        "false_negatives": fn,
    }
    assert metrics["accuracy"] == pytest.approx((tp + tn) / len(labels))
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert metrics["auroc"] == pytest.approx(brute_auroc(scores[:4000], labels[:4000]), abs=0.02)
    assert metrics["spearman"] == pytest.approx(float(np.mean(correlations)), abs=1e-9)


def brute_auroc(scores, labels) -> float:
    positives, negatives = scores[labels], scores[~labels]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return wins / (len(positives) * len(negatives))


def brute_spearman(a, b) -> float:
    def ranks(values):
        return np.array([(values < v).sum() + ((values == v).sum() + 1) / 2 for v in values])

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def test_rank_metrics_on_small_arrays_with_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(6, 9)).astype(float)  # many ties
    expected = np.array([[(row < v).sum() + ((row == v).sum() + 1) / 2 for v in row] for row in values])
    np.testing.assert_allclose(average_ranks(values), expected)
    scores, labels = rng.integers(0, 5, size=200).astype(float), rng.random(200) < 0.3
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))
    other = rng.integers(0, 3, size=(6, 9)).astype(float)
    np.testing.assert_allclose(
        spearman_rows(values, other), [brute_spearman(a, b) for a, b in zip(values, other, strict=True)]
    )
    assert math.isnan(auroc(scores, np.zeros(200, dtype=bool)))
    assert math.isnan(spearman_rows(np.ones((1, 5)), other[:1, :5])[0])


def test_split_by_example_id_is_deterministic_and_disjoint():
    ids = [f"ex{i}" for i in range(200)]
    train, val = split_example_ids(ids, 0.1, seed=0)
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(ids)
    assert split_example_ids(list(reversed(ids)), 0.1, seed=0)[1] == list(reversed(val))
    assert 5 <= len(val) <= 40 and split_example_ids(ids, 0.1, seed=1)[1] != val
    assert len(split_example_ids(ids[:2], 0.01)[1]) == 1


def test_push_uploads_exactly_the_head_and_its_card(workdir, synthetic, monkeypatch):
    from huggingface_hub import HfApi

    head_dir = str(workdir / "push-head")
    train_head(synthetic, head_dir, head_dim=8, epochs=1, batch_size=32, show_progress=False)
    uploaded = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = {name: read_bytes(os.path.join(folder_path, name)) for name in os.listdir(folder_path)}
        return "https://huggingface.co/org/fastrm-synthetic/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: repo_id)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    assert cli_main(["push", "--head", head_dir, "--repo-id", "org/fastrm-synthetic"]) == 0
    assert uploaded["repo_id"] == "org/fastrm-synthetic"
    assert sorted(uploaded["files"]) == ["README.md", "fastrm_config.json", "fastrm_head.safetensors"]
    config = json.loads(uploaded["files"]["fastrm_config.json"])
    assert config["base_model_name_or_path"] == "synthetic/vlm" and config["base_model_revision"] == "abc123"
    assert config["metrics"] == read_json(os.path.join(head_dir, "fastrm_config.json"))["metrics"]
    card = uploaded["files"]["README.md"].decode()
    assert (
        "base_model: synthetic/vlm" in card
        and "- synthetic-corpus" in card
        and "| base model revision | abc123 |" in card
    )
    assert "| label threshold | 0.3 |" in card and f"| f1 | {config['metrics']['f1']:.4f} |" in card
    with pytest.raises(ValueError, match="org/name"):
        push_head(head_dir, "no-namespace")


# ---------------------------------------------------------------------------------------------- bad input
def test_corpus_without_images_or_questions_is_refused(workdir):
    import datasets

    dataset = datasets.Dataset.from_dict({"image": make_images(2), "text": ["a", "b"]})
    with pytest.raises(ValueError, match=r"no question column 'question'.*\['image', 'text'\].*--question-column"):
        load_corpus(dataset)
    with pytest.raises(ValueError, match="no image column 'img'"):
        load_corpus(dataset, image_column="img", question_column="text")
    folder = workdir / "bad-folder"
    folder.mkdir()
    make_images(1)[0].save(folder / "a.png")
    (folder / "questions.jsonl").write_text(json.dumps({"image": "a.png", "prompt": "w3"}) + "\n")
    with pytest.raises(ValueError, match="line 1 has no question key 'question'"):
        load_corpus(str(folder))
    (folder / "questions.jsonl").write_text(json.dumps({"question": "w3"}) + "\n")
    with pytest.raises(ValueError, match="has no image key 'image'"):
        load_corpus(str(folder))
    (folder / "questions.jsonl").write_text(json.dumps({"image": "missing.png", "question": "w3"}) + "\n")
    with pytest.raises(ValueError, match="names the image 'missing.png'"):
        load_corpus(str(folder))
    os.remove(folder / "questions.jsonl")
    with pytest.raises(ValueError, match="no .jsonl file"):
        load_corpus(str(folder))


def test_prompts_use_the_chat_template_or_the_given_template():
    processor = tiny_processor()
    assert build_prompt(processor, "w5 w6") == "USER: <image>\nw5 w6 ASSISTANT:"
    assert build_prompt(processor, "w5", "w3 {image} {question} w4") == "w3 <image> w5 w4"
    processor.chat_template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:"
    )
    assert build_prompt(processor, "w7") == "USER: <image> w7 ASSISTANT:"
    with pytest.raises(ValueError, match="no '{question}'"):
        build_prompt(processor, "w7", "{image} only")
    with pytest.raises(ValueError, match="image"):
        build_prompt(processor, "w7", "{question} only")


def test_a_head_for_another_model_is_refused(synthetic):
    wide = FastRMHead(FastRMConfig(hidden_size=64, head_dim=8, base_model_name_or_path="synthetic/vlm"))
    with pytest.raises(ValueError, match="hidden size 64.*hidden size 32"):
        evaluate_head(wide, synthetic, show_progress=False)
    renamed = FastRMHead(FastRMConfig(hidden_size=32, head_dim=8, base_model_name_or_path="org/other-vlm"))
    with pytest.raises(ValueError, match="other-vlm"):
        evaluate_head(renamed, synthetic, show_progress=False)
    assert evaluate_head(renamed, synthetic, check_base_model=False, show_progress=False)["num_examples"] == 160


def test_shards_of_different_models_are_refused(workdir, synthetic):
    other = planted_shards(workdir / "synthetic-other", num_examples=8, model="synthetic/other-vlm", seed=2)
    with pytest.raises(ValueError, match=r"different models.*model_name_or_path 'synthetic/vlm' vs 'synthetic/other"):
        train_head([synthetic, other], str(workdir / "never"), epochs=1, show_progress=False)
    wider = planted_shards(workdir / "synthetic-wide", num_examples=8, hidden=48, seed=3)
    with pytest.raises(ValueError, match="hidden_size 32 vs 48"):
        ShardDataset([synthetic, wider])
    shutil.copy(shards_module.list_shards(synthetic)[0], os.path.join(other, "shard-00009-000000.safetensors"))
    with pytest.raises(ValueError, match="different models"):
        ShardDataset(other)
