"""Deletion and insertion curves (`hf_fastrm.faithfulness`): endpoints, both perturbation modes against a hand-made
perturbation, the symmetry between a map's insertion and its reverse's deletion, the shared cache, the summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_fastrm.faithfulness import (
    bootstrap_interval,
    faithfulness_curves,
    random_relevancy,
    summarize_areas,
)
from hf_fastrm.testing_utils import tiny_llava_inputs

STEPS = 4  # the tiny LLaVA has 16 image tokens: 4 per step, no rounding


@pytest.fixture(scope="module")
def generated(llava):
    inputs = tiny_llava_inputs(llava, batch_size=2, text_lengths=[4, 6])
    sequences = llava.generate(**inputs, do_sample=False, max_new_tokens=3, min_new_tokens=3)
    relevancy = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(0))
    return inputs, sequences, relevancy


def forced_probabilities(model, inputs, sequences, **overrides) -> torch.Tensor:
    """`(batch, 3)`: each new token's probability from one full forward (the reference)."""
    prompt_length = inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones(sequences.shape[0], 2, dtype=torch.long)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    kwargs = {"input_ids": sequences[:, :-1], "pixel_values": inputs["pixel_values"], **overrides}
    if "inputs_embeds" in kwargs:
        kwargs.pop("input_ids"), kwargs.pop("pixel_values")
    with torch.no_grad():
        logits = model(attention_mask=mask, position_ids=position_ids, **kwargs).logits[:, prompt_length - 1 :]
    return logits.softmax(-1).gather(-1, sequences[:, prompt_length:].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("mode", ["embedding", "pixel"])
def test_endpoints_are_the_unperturbed_and_the_empty_input(llava, generated, mode):
    inputs, sequences, relevancy = generated
    curves = faithfulness_curves(llava, inputs, sequences, relevancy, mode=mode, steps=STEPS)
    expected = forced_probabilities(llava, inputs, sequences)
    # float32 forwards of different batch shapes: equal to ~1e-6
    torch.testing.assert_close(curves.deletion[..., 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(curves.insertion[..., -1], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(curves.deletion[..., -1], curves.insertion[..., 0])
    other = faithfulness_curves(llava, inputs, sequences, -relevancy, mode=mode, steps=STEPS)
    torch.testing.assert_close(other.deletion[..., -1], curves.deletion[..., -1])  # no map in the empty input
    assert torch.equal(curves.fractions, torch.linspace(0, 1, STEPS + 1))


def test_embedding_mode_equals_replacing_the_top_tokens_by_hand(llava, generated):
    inputs, sequences, relevancy = generated
    curves = faithfulness_curves(llava, inputs, sequences, relevancy, mode="embedding", steps=STEPS)
    captured = {}

    def capture(module, args, kwargs):
        captured.setdefault("embeds", kwargs["inputs_embeds"])

    handle = llava.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        forced_probabilities(llava, inputs, sequences)
    finally:
        handle.remove()
    embeds = captured["embeds"].clone()
    image = (sequences[:, :-1] == llava.config.image_token_index).nonzero()
    token, row = 1, 0
    positions = image[image[:, 0] == row, 1]
    top = torch.argsort(relevancy[row, token], descending=True)[: 2 * 16 // STEPS]  # step 2 of 4
    mean = embeds[row, positions].mean(0)
    embeds[row, positions[top]] = mean
    expected = forced_probabilities(llava, inputs, sequences, inputs_embeds=embeds)[row, token]
    torch.testing.assert_close(curves.deletion[row, token, 2], expected, rtol=1e-4, atol=1e-5)


def test_pixel_mode_equals_blanking_the_patches_by_hand(llava, generated):
    inputs, sequences, relevancy = generated
    curves = faithfulness_curves(llava, inputs, sequences, relevancy, mode="pixel", steps=STEPS)
    row, token = 1, 2
    keep = torch.argsort(relevancy[row, token], descending=True)[: 16 // STEPS]  # insertion step 1: 4 patches back
    pixels = inputs["pixel_values"].clone()
    mean = pixels[row].mean(dim=(-2, -1), keepdim=True)
    patch = llava.config.vision_config.patch_size
    for index in range(16):
        if index not in keep:
            r, c = divmod(index, 4)
            pixels[row, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = mean
    expected = forced_probabilities(llava, inputs, sequences, pixel_values=pixels)[row, token]
    torch.testing.assert_close(curves.insertion[row, token, 1], expected, rtol=1e-4, atol=1e-5)


def test_insertion_of_a_map_is_deletion_of_its_reverse(llava, generated):
    inputs, sequences, relevancy = generated
    curves = faithfulness_curves(llava, inputs, sequences, relevancy, steps=STEPS)
    reverse = faithfulness_curves(llava, inputs, sequences, -relevancy, steps=STEPS)
    # keeping the top k of a map removes the bottom N - k: what the reversed map deletes first
    torch.testing.assert_close(curves.insertion, reverse.deletion.flip(-1), rtol=1e-5, atol=1e-6)
    monotone = faithfulness_curves(llava, inputs, sequences, 3 * relevancy + 1, steps=STEPS)
    torch.testing.assert_close(monotone.deletion, curves.deletion)  # only the ranking counts


def test_a_shared_cache_runs_each_perturbation_once(llava, generated):
    inputs, sequences, relevancy = generated
    calls = []
    handle = llava.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        cache: dict = {}
        first = faithfulness_curves(llava, inputs, sequences, relevancy, steps=STEPS, cache=cache)
        used = len(calls)
        again = faithfulness_curves(llava, inputs, sequences, relevancy * 2, steps=STEPS, cache=cache)
    finally:
        handle.remove()
    assert len(calls) == used + 1  # only the capture of the merged embeddings; every perturbation was cached
    torch.testing.assert_close(again.deletion, first.deletion)


def test_masked_tokens_and_padding_slots_stay_out(llava, generated):
    inputs, sequences, relevancy = generated
    masked = relevancy.clone()
    masked[0, 2] = math.nan  # a token after the end of its row
    curves = faithfulness_curves(llava, inputs, sequences, masked, steps=2)
    assert not curves.token_mask[0, 2] and curves.token_mask.sum() == 5
    assert torch.isnan(curves.deletion[0, 2]).all() and torch.isnan(curves.area("deletion")[0, 2])
    assert torch.isfinite(curves.area("insertion")[curves.token_mask]).all()


def test_bad_arguments_are_refused(llava, generated):
    inputs, sequences, relevancy = generated
    with pytest.raises(ValueError, match="mode"):
        faithfulness_curves(llava, inputs, sequences, relevancy, mode="blur")
    with pytest.raises(ValueError, match="batch, new_tokens, image_tokens"):
        faithfulness_curves(llava, inputs, sequences, relevancy[0])
    with pytest.raises(ValueError, match="only 8 entries"):
        faithfulness_curves(llava, inputs, sequences, relevancy[..., :8])
    two_images = tiny_llava_inputs(llava, num_images=2)
    sequences2 = llava.generate(**two_images, do_sample=False, max_new_tokens=2, min_new_tokens=2)
    with pytest.raises(NotImplementedError, match="mode='embedding'"):
        faithfulness_curves(llava, two_images, sequences2, torch.rand(1, 2, 32), mode="pixel")


def test_bootstrap_interval_resamples_clusters():
    values = np.array([1.0, 1.0, 3.0, 3.0, math.nan])
    mean, low, high = bootstrap_interval(values, np.array([0, 0, 1, 1, 2]), num_resamples=2000)
    assert mean == 2.0 and 1.0 <= low < 2.0 < high <= 3.0
    # whole clusters move together: a resample mean is always one of 1, 2, 3
    assert low in (1.0, 2.0) and high in (2.0, 3.0)
    assert bootstrap_interval(np.full(10, 0.5)) == (0.5, 0.5, 0.5)
    assert all(math.isnan(value) for value in bootstrap_interval(np.array([math.nan])))


def test_summaries_split_by_group_and_random_keeps_the_nan_pattern(llava, generated):
    inputs, sequences, relevancy = generated
    masked = relevancy.clone()
    masked[1, :, 10:] = math.nan
    noise = random_relevancy(masked, seed=3)
    assert torch.equal(torch.isnan(noise), torch.isnan(masked)) and not torch.equal(noise, random_relevancy(masked))
    curves = faithfulness_curves(llava, inputs, sequences, relevancy, steps=2)
    first = torch.zeros(2, 3, dtype=torch.bool)
    first[:, 0] = True
    summary = summarize_areas(curves, groups={"first token": first}, num_resamples=100)
    assert summary["all"]["num_tokens"] == 6 and summary["first token"]["num_tokens"] == 2
    deletion = curves.area("deletion")
    assert summary["first token"]["deletion"][0] == pytest.approx(float(deletion[:, 0].mean()), rel=1e-6)
    mean, low, high = summary["all"]["difference"]
    assert low <= mean <= high


# ---------------------------------------------------------------------------------------------- the benchmark
def _load_benchmark():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "faithfulness.py")
    spec = importlib.util.spec_from_file_location("faithfulness_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_on_two_toy_scenes(tmp_path):
    from PIL import Image

    from hf_fastrm.toy import default_model_available

    if not default_model_available():
        pytest.skip("the shipped toy model is not in this tree")
    benchmark = _load_benchmark()
    report = benchmark.evaluate(
        2,
        0,
        methods=("teacher", "random", "attention"),
        modes=("embedding",),
        steps=2,
        num_resamples=50,
        show_progress=False,
    )
    results = report["results"]["embedding"]
    assert list(results) == ["fastrm", "teacher", "random", "attention"]
    for result in results.values():
        assert result["mean_deletion_curve"][0] == pytest.approx(1.0)  # relative to the unperturbed probability
        assert result["mean_insertion_curve"][-1] == pytest.approx(1.0)
        assert "end of sequence" not in result["summary"]  # left out unless --include-eos
    assert 0.0 <= report["agreement"]["fastrm"]["f1"] <= 1.0
    paired = report["paired_vs_teacher"]["embedding"]
    assert "teacher" not in paired and paired["fastrm"][1] <= paired["fastrm"][0] <= paired["fastrm"][2]
    with pytest.raises(ValueError, match="Unknown methods"):
        benchmark.evaluate(1, 0, methods=("no-such-method",), show_progress=False)
    table = benchmark.format_table(report)
    assert "fastrm" in table and "insertion - deletion" in table
    benchmark.plot(report, str(tmp_path / "curves.png"))
    assert Image.open(tmp_path / "curves.png").size == (840, 300)
