"""The question-aware head (``head_type="question_aware"``, outside the paper): config, computation, generate(),
shards with text states, training through the pipeline and the CLI; old heads keep loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_fastrm import FastRMConfig, FastRMHead, FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.cli import main as cli_main
from hf_fastrm.constants import CONFIG_NAME
from hf_fastrm.distill import evaluate_head, train_head
from hf_fastrm.distill import shards as shards_module
from hf_fastrm.distill.shards import ShardDataset, ShardExample, collate_examples, write_shard
from hf_fastrm.testing_utils import tiny_head_config, tiny_llava_inputs
from hf_fastrm.text_tokens import text_token_index
from hf_fastrm.toy import DEFAULT_HEAD_DIR

GREEDY = {"do_sample": False, "max_new_tokens": 5}


def question_head(model, head_dim: int = 16, seed: int = 0) -> FastRMHead:
    """A question-aware head for `model` with random (non-zero) text values, so the question term matters."""
    torch.manual_seed(seed)
    head = FastRMHead(tiny_head_config(model, head_dim, head_type="question_aware"))
    with torch.no_grad():
        for layer in (head.query, head.key, head.text_key, head.text_value):
            torch.nn.init.normal_(layer.weight, std=1.0)
    return head.to(next(model.parameters()).dtype).eval()


def test_shipped_head_is_the_papers_kind_and_old_configs_load(tmp_path):
    with open(os.path.join(DEFAULT_HEAD_DIR, CONFIG_NAME), encoding="utf-8") as handle:
        written = json.load(handle)
    written.pop("head_type", None)  # a config from before the field existed
    folder = tmp_path / "old-head"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(json.dumps(written), encoding="utf-8")
    os.symlink(os.path.join(DEFAULT_HEAD_DIR, "fastrm_head.safetensors"), folder / "fastrm_head.safetensors")
    head = FastRMHead.from_pretrained(folder)
    assert head.config.head_type == "fastrm" and not head.reads_text
    assert not hasattr(head, "text_key")
    shipped = FastRMHead.from_pretrained(DEFAULT_HEAD_DIR)
    assert shipped.state_dict().keys() == head.state_dict().keys()


def test_unknown_head_type_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="head_type.*question_aware"):
        FastRMConfig(hidden_size=8, head_type="two_heads")


def test_question_aware_head_round_trip_and_kind_mismatch_refused(tmp_path, llava):
    head = question_head(llava)
    head.save_pretrained(tmp_path / "qa")
    loaded = FastRMHead.from_pretrained(tmp_path / "qa")
    assert loaded.config.head_type == "question_aware"
    for name, tensor in head.state_dict().items():
        # same process, safetensors stores float32 exactly: only the file format sits between the two
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    config = json.loads((tmp_path / "qa" / CONFIG_NAME).read_text())
    config["head_type"] = "fastrm"
    (tmp_path / "qa" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unexpected.*text_key"):
        FastRMHead.from_pretrained(tmp_path / "qa")


def test_zero_text_values_reduce_to_the_papers_head_and_text_is_required():
    torch.manual_seed(0)
    paper = FastRMHead(FastRMConfig(hidden_size=12, head_dim=6))
    question = FastRMHead(FastRMConfig(hidden_size=12, head_dim=6, head_type="question_aware"))
    question.load_state_dict({**question.state_dict(), **paper.state_dict()})  # text_value starts at zero
    tokens, images, text = torch.randn(2, 3, 12), torch.randn(2, 5, 12), torch.randn(2, 4, 12)
    torch.testing.assert_close(question(tokens, images, text), paper(tokens, images), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="text_states"):
        question(tokens, images)
    with torch.no_grad():
        question.text_value.weight.normal_()
    assert not torch.allclose(question(tokens, images, text), paper(tokens, images), atol=1e-3)


def test_padded_text_tokens_do_not_change_the_map():
    torch.manual_seed(1)
    head = FastRMHead(FastRMConfig(hidden_size=12, head_dim=6, head_type="question_aware"))
    with torch.no_grad():
        head.text_value.weight.normal_()
    tokens, images, text = torch.randn(1, 2, 12), torch.randn(1, 5, 12), torch.randn(1, 3, 12)
    padded = torch.cat([text, 100 * torch.randn(1, 2, 12)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(head(tokens, images, padded, mask), head(tokens, images, text), rtol=1e-6, atol=1e-7)


def test_text_token_index_leaves_out_padding_and_image_tokens(llava):
    inputs = tiny_llava_inputs(llava, batch_size=2, num_images=[1, 2], text_lengths=[3, 6])
    from hf_fastrm.architectures import get_adapter

    layouts = get_adapter(llava).image_layout(llava.config, inputs["input_ids"], inputs)
    index, mask = text_token_index(inputs["input_ids"].shape[1], layouts, inputs["attention_mask"])
    image_id = llava.config.image_token_index
    for row in range(2):
        positions = index[row][mask[row]]
        expected = ((inputs["attention_mask"][row] == 1) & (inputs["input_ids"][row] != image_id)).nonzero().flatten()
        assert torch.equal(positions, expected)


def test_generate_maps_equal_the_head_on_one_separate_forward(llava64):
    head = question_head(llava64).double()
    inputs = tiny_llava_inputs(llava64, batch_size=3, num_images=[1, 2, 1])
    plain = llava64.generate(**inputs, **GREEDY)
    out = FastRMWrapper(llava64, head).generate(**inputs, **GREEDY, return_relevancy=True)
    assert torch.equal(out.sequences, plain)
    prompt_length = inputs["input_ids"].shape[1]
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(out.sequences[:, prompt_length:])], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    with torch.no_grad():
        last = llava64(
            input_ids=out.sequences,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=inputs["pixel_values"],
            output_hidden_states=True,
        ).hidden_states[-1]
    for row, layout in enumerate(out.image_layouts):
        text_positions = (
            ((inputs["attention_mask"][row] == 1) & (inputs["input_ids"][row] != llava64.config.image_token_index))
            .nonzero()
            .flatten()
        )
        num_new = out.sequences.shape[1] - prompt_length
        expected = head(
            last[row, prompt_length - 1 : prompt_length - 1 + num_new].unsqueeze(0),
            last[row, layout.image_positions].unsqueeze(0),
            last[row, text_positions].unsqueeze(0),
        )[0]
        valid = out.token_mask[row]
        n = layout.num_image_tokens
        # float64 throughout; incremental decoding vs one full forward differ by ~1e-12
        torch.testing.assert_close(out.relevancy[row, valid, :n], expected[valid], rtol=1e-9, atol=1e-9)


def test_processor_refuses_nothing_and_reuses_for_the_papers_head(llava, head):
    # the paper's head never asks the tap for text states
    with FastRMLogitsProcessor(llava, head) as fastrm:
        assert not fastrm._tap.gather_text
        llava.generate(**tiny_llava_inputs(llava), **GREEDY, logits_processor=[fastrm])
        assert fastrm._tap.text_states is None


# ---------------------------------------------------------------------------------------------- training
def planted_question_shards(directory, num_examples: int, seed: int, hidden: int = 16, num_image: int = 8) -> str:
    """Shards where the relevant patch is the one the *question* names: each patch shows a distinct "colour" (a
    basis vector plus noise), the text state shows the target patch's colour, the answer token's state is noise. The
    paper's head cannot find the patch; a question-aware one can."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(num_examples):
        colours = torch.randperm(hidden, generator=generator)[:num_image]
        image = torch.eye(hidden)[colours] + 0.05 * torch.randn(num_image, hidden, generator=generator)
        target = int(torch.randint(num_image, (1,), generator=generator))
        text = torch.eye(hidden)[colours[target]].unsqueeze(0) + 0.05 * torch.randn(1, hidden, generator=generator)
        maps = 0.05 * torch.rand(1, num_image, generator=generator)
        maps[0, target] = 1.0
        examples.append(
            ShardExample(
                example_id=f"q-{seed}-{index}",
                image_states=image,
                token_states=torch.randn(1, hidden, generator=generator),
                teacher_maps=maps,
                token_mask=torch.ones(1, dtype=torch.bool),
                answer_token_ids=torch.tensor([5]),
                text_states=text,
            )
        )
    info = {
        "model_name_or_path": "synthetic/vlm",
        "model_revision": None,
        "model_type": "llava",
        "hidden_size": hidden,
    }
    os.makedirs(directory, exist_ok=True)
    write_shard(os.path.join(directory, shards_module.shard_name(0, 0)), examples, info, storage_dtype=torch.float32)
    return str(directory)


def test_shards_keep_text_states_and_batches_pad_them(tmp_path):
    folder = planted_question_shards(tmp_path / "s", num_examples=4, seed=0)
    dataset = ShardDataset(folder)
    assert dataset.has_text_states
    assert dataset[2].text_states.shape == (1, 16)
    batch = collate_examples([dataset[i] for i in range(3)])
    assert batch.text_states.shape == (3, 1, 16) and batch.text_token_mask.all()


def test_question_aware_head_learns_what_the_papers_head_cannot(tmp_path):
    train = planted_question_shards(tmp_path / "train", num_examples=160, seed=0)
    held_out = planted_question_shards(tmp_path / "held-out", num_examples=60, seed=1)
    settings = ["--head-dim", "16", "--epochs", "5", "--batch-size", "16", "--learning-rate", "3e-2", "--cpu"]
    common = ["--val-fraction", "0.1", "--save-total-limit", "1", "--no-progress", *settings]
    assert cli_main(["train", "--shards", train, "--output-dir", str(tmp_path / "qa"), "--head-type", "question_aware",
                     *common]) == 0  # fmt: skip
    train_head(
        train, tmp_path / "paper", head_dim=16, epochs=5, batch_size=16, learning_rate=3e-2, val_fraction=0.1,
        save_total_limit=1, show_progress=False,
    )  # fmt: skip
    question_f1 = evaluate_head(str(tmp_path / "qa"), held_out, show_progress=False)["metrics"]["f1"]
    paper_f1 = evaluate_head(str(tmp_path / "paper"), held_out, show_progress=False)["metrics"]["f1"]
    assert FastRMHead.from_pretrained(tmp_path / "qa").config.head_type == "question_aware"
    # one relevant patch in 8 that only the question names (measured 0.82 against 0.10 on one machine)
    assert question_f1 > 0.7 and paper_f1 < 0.4, (question_f1, paper_f1)


def test_training_a_question_aware_head_on_shards_without_text_is_refused(tmp_path):
    folder = tmp_path / "old"
    info = {"model_name_or_path": "synthetic/vlm", "model_revision": None, "model_type": "llava", "hidden_size": 8}
    example = ShardExample(
        example_id="a",
        image_states=torch.randn(4, 8),
        token_states=torch.randn(1, 8),
        teacher_maps=torch.rand(1, 4),
        token_mask=torch.ones(1, dtype=torch.bool),
        answer_token_ids=torch.tensor([3]),
    )
    os.makedirs(folder)
    write_shard(os.path.join(folder, shards_module.shard_name(0, 0)), [example, example.__class__(**{
        **example.__dict__, "example_id": "b"})], info, storage_dtype=torch.float32)  # fmt: skip
    with pytest.raises(ValueError, match="lack.*distil"):
        train_head(str(folder), tmp_path / "out", head_type="question_aware", show_progress=False)


def test_teacher_returns_the_prompts_text_states(llava64):
    from hf_fastrm.teacher import gradient_relevancy

    inputs = tiny_llava_inputs(llava64, batch_size=2, text_lengths=[3, 6])
    sequences = llava64.generate(**inputs, do_sample=False, max_new_tokens=2, min_new_tokens=2)
    teacher = gradient_relevancy(llava64, inputs, sequences, return_hidden_states=True)
    with torch.no_grad():
        mask = inputs["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        last = llava64(**inputs, position_ids=position_ids, output_hidden_states=True).hidden_states[-1]
    for row in range(2):
        text = ((mask[row] == 1) & (inputs["input_ids"][row] != llava64.config.image_token_index)).nonzero().flatten()
        got = teacher.text_hidden_states[row][teacher.text_token_mask[row]]
        # float64; the teacher's forward covers the answer too (causal: prompt states unchanged) to ~1e-12
        torch.testing.assert_close(got, last[row, text], rtol=1e-9, atol=1e-9)


def test_shipped_question_aware_head_runs_in_generate_with_identical_tokens():
    from hf_fastrm.toy import (
        QUESTION_AWARE_HEAD_DIR,
        default_model_available,
        load_default_model,
        load_default_processor,
    )
    from hf_fastrm.toy.modeling import format_prompt
    from hf_fastrm.toy.scenes import make_examples

    if not default_model_available():
        pytest.skip("the shipped toy model is not in this tree")
    head = FastRMHead.from_pretrained(QUESTION_AWARE_HEAD_DIR)
    assert head.config.head_type == "question_aware" and head.config.metrics["test_f1"] > 0.79
    model, processor = load_default_model(), load_default_processor()
    examples = make_examples(3, seed="question-aware-test:0")
    inputs = dict(
        processor(
            images=[scene.image for scene, _ in examples],
            text=[format_prompt(question.text) for _, question in examples],
            return_tensors="pt",
            padding=True,
        )
    )
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=4)
    out = FastRMWrapper(model, head).generate(**inputs, do_sample=False, max_new_tokens=4, return_relevancy=True)
    assert torch.equal(out.sequences, plain)
    first = out.relevancy[:, 0]
    assert torch.isfinite(first).all() and ((first >= 0) & (first <= 1)).all()
