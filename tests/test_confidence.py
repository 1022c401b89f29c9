"""Confidence of a map: 1 - normalised entropy; uniform maps give 0, one-hot maps give 1; masks and NaN ignored."""

import math

import torch

from hf_fastrm.confidence import map_confidence, sequence_confidence


def test_uniform_map_has_confidence_zero_and_one_hot_map_one():
    uniform = torch.full((3, 16), 0.25)
    one_hot = torch.zeros(3, 16).index_fill_(1, torch.tensor([5]), 0.9)
    torch.testing.assert_close(map_confidence(uniform), torch.zeros(3))
    torch.testing.assert_close(map_confidence(one_hot), torch.ones(3))


def test_confidence_is_one_minus_the_normalised_entropy():
    relevancy = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    p = relevancy / relevancy.sum()
    expected = 1 + (p * p.log()).sum() / math.log(4)
    torch.testing.assert_close(map_confidence(relevancy), expected.reshape(1))


def test_padding_slots_and_nan_entries_are_left_out():
    padded = torch.tensor([[0.5, 0.5, 0.9, 0.1], [0.5, 0.5, math.nan, math.nan]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    torch.testing.assert_close(map_confidence(padded, mask), torch.zeros(2))  # two equal real entries: uniform


def test_an_empty_or_all_zero_map_has_no_confidence():
    confidence = map_confidence(torch.tensor([[math.nan, math.nan], [0.0, 0.0]]))
    assert torch.isnan(confidence).all()


def test_sequence_confidence_averages_the_counted_tokens_only():
    confidence = torch.tensor([[0.2, 0.4, 1.0, math.nan], [math.nan, math.nan, math.nan, math.nan]])
    counted = torch.tensor([[True, True, False, True], [True, True, True, True]])
    result = sequence_confidence(confidence, counted)
    torch.testing.assert_close(result[0], torch.tensor(0.3))
    assert torch.isnan(result[1])
