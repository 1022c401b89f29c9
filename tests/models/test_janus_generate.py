"""Janus' text-mode `generate()` drops `logits_processor` (transformers 5.24); while a FastRM processor is attached,
the tap routes text-mode calls given logits processors to the call Janus' text mode makes, with them."""

from __future__ import annotations

import torch
from test_families import GREEDY, NEW_TOKENS, built
from transformers import LogitsProcessor

from hf_fastrm import FastRMLogitsProcessor


class CountingProcessor(LogitsProcessor):
    """Counts its calls; leaves the scores alone."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls += 1
        return scores


def test_janus_text_mode_runs_logits_processors_while_fastrm_is_attached():
    model, inputs, head = built("janus")
    with torch.no_grad():
        plain = model.generate(**inputs, **GREEDY)
        dropped = CountingProcessor()
        model.generate(**inputs, **GREEDY, logits_processor=[dropped])
    with FastRMLogitsProcessor(model, head) as fastrm:
        assert "generate" in vars(model), "the tap did not wrap Janus' generate()"
        counted = CountingProcessor()
        with torch.no_grad():
            routed = model.generate(**inputs, **GREEDY, logits_processor=[counted, fastrm])
        untouched = model.generate(**inputs, **GREEDY)  # no logits processors: Janus' own generate(), unchanged
    assert "generate" not in vars(model), "the wrapper outlived the processor"
    # what the wrapper is for: without it Janus never calls a user's processor
    assert dropped.calls == 0, "Janus' generate() now hands logits_processor on: hf_fastrm's Janus wrapper may go"
    assert counted.calls == NEW_TOKENS
    torch.testing.assert_close(routed, plain, rtol=0, atol=0)
    torch.testing.assert_close(untouched, plain, rtol=0, atol=0)
    assert fastrm.result_for(routed).relevancy.shape[:2] == (inputs["input_ids"].shape[0], NEW_TOKENS)
