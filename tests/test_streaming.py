"""FastRMStreamer: each token's map streams while generate() runs, equal to the finished result; batches, sampling,
beam search refused (and replayed), errors reach the consumer, and the documented example runs."""

from __future__ import annotations

import math
import queue
import re
from pathlib import Path

import pytest
import torch

from hf_fastrm import FastRMLogitsProcessor
from hf_fastrm.streaming import STREAMING_METHODS, FastRMStreamer, StreamedToken, stream_result
from hf_fastrm.testing_utils import TINY_EOS_TOKEN_ID, tiny_llava_inputs, tiny_llava_processor

ROOT = Path(__file__).resolve().parent.parent

# The streamer computes each map's confidence on one CPU copy of the same numbers the processor keeps; the result
# computes it on the stacked steps. Same operations on the same float32 values, so only summation order differs.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _collect(streamer: FastRMStreamer) -> list[StreamedToken]:
    return list(streamer)


def _rows(tokens: list[StreamedToken], rows: int) -> list[list[StreamedToken]]:
    by_row: list[list[StreamedToken]] = [[] for _ in range(rows)]
    for token in tokens:
        by_row[token.row].append(token)
    return by_row


def _assert_matches_result(tokens, result, sequences, prompt_length):
    by_row = _rows(tokens, sequences.shape[0])
    for row, streamed in enumerate(by_row):
        count = int(result.token_mask[row].sum())
        assert [t.index for t in streamed] == list(range(count))
        assert [t.token_id for t in streamed] == sequences[row, prompt_length : prompt_length + count].tolist()
        maps = result.relevancy_maps(row)
        n = result.image_layouts[row].num_image_tokens
        for token in streamed:
            torch.testing.assert_close(token.relevancy, result.relevancy[row, token.index, :n].cpu(), **TOL)
            assert len(token.maps) == len(maps)
            for grid, expected in zip(token.maps, maps, strict=True):
                torch.testing.assert_close(grid, expected[token.index].cpu(), equal_nan=True, **TOL)
            assert math.isclose(token.confidence, float(result.confidence[row, token.index]), rel_tol=1e-5)


def test_greedy_batch_streams_every_row_as_generated(llava, head):
    processor = tiny_llava_processor()
    inputs = tiny_llava_inputs(llava, batch_size=3, num_images=[1, 2, 1])
    forwards: list[int] = []
    tokens: list[StreamedToken] = []
    seen_at: list[tuple[int, int]] = []  # (token index, forward passes done when it was streamed)

    def on_token(token: StreamedToken) -> None:
        seen_at.append((token.index, len(forwards)))
        tokens.append(token)

    handle = llava.register_forward_hook(lambda *_: forwards.append(1))
    try:
        with FastRMLogitsProcessor(llava, head) as fastrm:
            streamer = FastRMStreamer(fastrm, processor, on_token=on_token)
            out = llava.generate(
                **inputs, logits_processor=[fastrm], streamer=streamer, max_new_tokens=6, do_sample=False,
                return_dict_in_generate=True,
            )  # fmt: skip
            result = fastrm.result_for(out)
    finally:
        handle.remove()
    prompt_length = inputs["input_ids"].shape[1]
    _assert_matches_result(tokens, result, out.sequences, prompt_length)
    # Token i is handed out after forward pass i + 1 and before pass i + 2: while generate() is still running.
    assert all(count == index + 1 for index, count in seen_at), seen_at
    # Row 1 holds two images: two grids.
    assert next(len(t.maps) for t in tokens if t.row == 1) == 2
    assert tokens[0].grid_labels and tokens[0].method in STREAMING_METHODS
    # Text pieces join into the decoded answer.
    for streamed in _rows(tokens, 3):
        ids = [t.token_id for t in streamed]
        assert "".join(t.text for t in streamed) == processor.tokenizer.decode(ids, skip_special_tokens=False)


def test_rows_stop_after_their_end_of_sequence(llava, head):
    """A row that ends early streams its eos once and nothing of the padding after it."""
    inputs = tiny_llava_inputs(llava, batch_size=2)

    class EndRowZeroAtStep2:
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - inputs["input_ids"].shape[1] == 2:
                scores[0] = -math.inf
                scores[0, TINY_EOS_TOKEN_ID] = 0.0
            return scores

    with FastRMLogitsProcessor(llava, head) as fastrm:
        streamer = FastRMStreamer(fastrm, timeout=30)
        thread = streamer.run_in_thread(
            llava.generate, **inputs, logits_processor=[fastrm, EndRowZeroAtStep2()], max_new_tokens=6,
            min_new_tokens=0, do_sample=False, return_dict_in_generate=True,
        )  # fmt: skip
        tokens = _collect(streamer)
        thread.join()
        result = fastrm.result_for(streamer.output)
    row0, row1 = _rows(tokens, 2)
    assert [t.token_id for t in row0][-1] == TINY_EOS_TOKEN_ID and len(row0) == 3
    assert row0[-1].is_end and row0[-1].special and not any(t.is_end for t in row0[:-1])
    assert len(row1) == 6
    _assert_matches_result(tokens, result, streamer.output.sequences, inputs["input_ids"].shape[1])


def test_sampling_with_several_returned_sequences_keeps_rows_apart(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2)
    kwargs = {"do_sample": True, "top_k": 20, "temperature": 1.5, "max_new_tokens": 7, "num_return_sequences": 2}
    torch.manual_seed(7)
    plain = llava.generate(**inputs, **kwargs)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        streamer = FastRMStreamer(fastrm, timeout=30)
        torch.manual_seed(7)  # same seed in the generating thread's draws (the CPU generator is global)
        thread = streamer.run_in_thread(
            llava.generate, **inputs, **kwargs, logits_processor=[fastrm], return_dict_in_generate=True
        )
        tokens = _collect(streamer)
        thread.join()
        result = fastrm.result_for(streamer.output)
    sequences = streamer.output.sequences
    assert torch.equal(sequences, plain)  # streaming changes no token
    assert len({tuple(row) for row in sequences.tolist()}) > 1, "sampling should give different rows"
    assert {t.row for t in tokens} == {0, 1, 2, 3}
    _assert_matches_result(tokens, result, sequences, inputs["input_ids"].shape[1])


def test_beam_search_is_refused_and_replayed(llava, head):
    inputs = tiny_llava_inputs(llava, batch_size=2)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        streamer = FastRMStreamer(fastrm)
        with pytest.raises(ValueError, match="beam search"):
            llava.generate(**inputs, logits_processor=[fastrm], streamer=streamer, num_beams=2, max_new_tokens=4)
        out = llava.generate(
            **inputs, logits_processor=[fastrm], num_beams=3, num_return_sequences=2, max_new_tokens=5,
            do_sample=False, return_dict_in_generate=True,
        )  # fmt: skip
        result = fastrm.result_for(out)
    tokens = list(stream_result(result, out.sequences, tiny_llava_processor()))
    assert {t.row for t in tokens} == {0, 1, 2, 3}
    _assert_matches_result(tokens, result, out.sequences, inputs["input_ids"].shape[1])


def test_errors_reach_the_consumer_and_timeouts_raise(llava, head):
    inputs = tiny_llava_inputs(llava)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        streamer = FastRMStreamer(fastrm, timeout=0.2)
        with pytest.raises(queue.Empty):
            next(iter(streamer))  # nothing is generating
        streamer.timeout = 30
        # A streamer whose processor is not in the call: a clear error, raised in the iterating thread.
        thread = streamer.run_in_thread(llava.generate, **inputs, max_new_tokens=3)
        with pytest.raises(RuntimeError, match=re.escape("logits_processor=[streamer.processor]")):
            _collect(streamer)
        thread.join()
        # The same streamer serves the next (correct) call.
        thread = streamer.run_in_thread(llava.generate, **inputs, logits_processor=[fastrm], max_new_tokens=3)
        assert len(_collect(streamer)) == 3
        thread.join()
    with pytest.raises(TypeError, match="FastRMLogitsProcessor"):
        FastRMStreamer(object())


def test_listener_is_held_weakly(llava, head):
    inputs = tiny_llava_inputs(llava)
    with FastRMLogitsProcessor(llava, head) as fastrm:
        streamer = FastRMStreamer(fastrm)
        del streamer
        # No streamer alive: generation runs and no listener is called (a dead one would raise).
        out = llava.generate(**inputs, logits_processor=[fastrm], max_new_tokens=2)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2
        assert all(reference() is None for reference in fastrm._step_listeners)


def test_docs_streaming_example_runs(capsys):
    """The first Python block of docs/streaming.md, run as written (shipped model, offline)."""
    text = (ROOT / "docs" / "streaming.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "docs/streaming.md", "exec"), {"__name__": "docs_streaming"})
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("row ")]
    assert {line.split()[1] for line in lines} == {"0", "1"}, printed  # both rows of the batch streamed
    assert "answer confidence per row" in printed
