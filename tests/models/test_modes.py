"""Every family (the shared suite's `CASES`) crossed with every generation mode.

Each case's inputs are what its processor gives: left-padded batches of different prompts, several images per row
and, where the family has video, a video (see tests/models/family_builders.py). Each mode runs through
`FastRMWrapper.generate(..., return_relevancy=True)` and through a `FastRMLogitsProcessor` with `result_for`, and
must give:

* tokens identical to plain `generate()` with the same settings and seed;
* maps equal to the head on ONE separate forward of the *returned* sequences (for beam search: the returned beams,
  followed through `beam_indices`), at the positions the layout names;
* per returned row, as many image tokens in the relevancy as the row's prompt holds image/video placeholder ids, and
  values in [0, 1].

The default run covers every family in beam search (greedy is in test_families.py); the full matrix is `slow`.
"""

from __future__ import annotations

import pytest
import torch
from family_table import EXPANDED_IMAGES_PERMUTED
from test_families import BY_NAME, CASES, built, hook_state, image_token_marks, reference_relevancy
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper

NEW_TOKENS = 4
SEED = 1234

# name -> (generate() settings, returned rows per prompt row, in the default run)
MODES: dict[str, tuple[dict, int, bool]] = {
    "greedy": ({"do_sample": False}, 1, False),
    "sample": ({"do_sample": True, "top_k": 0}, 1, False),
    "sample-return3": ({"do_sample": True, "top_k": 0, "num_return_sequences": 3}, 3, False),
    "beam2": ({"num_beams": 2, "do_sample": False}, 1, False),
    "beam3-return2": ({"num_beams": 3, "num_return_sequences": 2, "do_sample": False}, 2, True),
    "beam4-return4": (
        {"num_beams": 4, "num_return_sequences": 4, "do_sample": False, "length_penalty": 0.0},
        4,
        False,
    ),
    "streamer-stopping": ({"do_sample": False}, 1, False),  # plus a streamer and row-wise stopping criteria
}


# GLM-4V and the types built on it: when generate() expands the rows (beam search, num_return_sequences) the tokens
# equal plain generate() and every independent check holds, but the maps differ from the separate forward's by up to
# ~3e-3. The model itself causes it: without FastRM, generate(output_hidden_states=True) with num_return_sequences=3
# gives decoding states that differ from one forward of the same sequences by 0.17-0.29 on two of every three rows
# (0 without expansion), so the expanded rows decode at other positions than a full forward gives (transformers 5.24).
# FastRM's maps follow the states the model really had.
GLM_BEAM_MISMATCH = {"glm4v", "glm46v", "glm_ocr", "glmga", "glm4v_moe"}


def matrix() -> list:
    params = []
    for case in CASES:
        for mode, (_, _, default) in MODES.items():
            marks = [pytest.mark.slow] if case.slow or not default else []
            expands = MODES[mode][1] > 1 or "beam" in mode  # generate() repeats the rows
            if case.name in GLM_BEAM_MISMATCH and expands:
                marks.append(
                    pytest.mark.xfail(
                        reason="GLM decodes expanded rows at other positions than a full forward (transformers 5.24)",
                        strict=False,
                    )
                )
            if case.name in EXPANDED_IMAGES_PERMUTED and expands:
                marks.append(
                    pytest.mark.xfail(
                        reason=EXPANDED_IMAGES_PERMUTED[case.name],
                        strict=False,
                    )
                )
            params.append(pytest.param(case.name, mode, id=f"{case.name}-{mode}", marks=marks))
    return params


class RecordingStreamer(BaseStreamer):
    """Keeps what generate() streams: the prompt first, then one `(batch,)` tensor of new tokens a step."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.values.append(value.clone())

    def end(self) -> None:
        self.ended = True

    def new_tokens(self) -> torch.Tensor:
        """`(batch, steps)` of the tokens streamed after the prompt."""
        return torch.stack([value.reshape(-1) for value in self.values[1:]], dim=1)


class StopRowsAfter(StoppingCriteria):
    """Stops row `b` once it has `1 + b % NEW_TOKENS` new tokens: rows end at different steps."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return input_ids.shape[1] - self.prompt_length >= 1 + rows % NEW_TOKENS


def streaming(prompt_length: int, **kwargs) -> tuple[dict, RecordingStreamer]:
    """`generate()` settings `kwargs` plus a fresh [`RecordingStreamer`] and [`StopRowsAfter`] stopping criteria
    (rows end at different steps) for a decoder prompt of `prompt_length` tokens; and the streamer."""
    streamer = RecordingStreamer()
    stopping = StoppingCriteriaList([StopRowsAfter(prompt_length)])
    return {**kwargs, "streamer": streamer, "stopping_criteria": stopping}, streamer


def streamed_like_plain(model, head, inputs: dict, prompt_length: int, **kwargs):
    """`FastRMWrapper.generate(..., return_relevancy=True)` with [`streaming`] settings, after checking it gives the
    same sequences as plain generate() and streams the same tokens (each call with a fresh streamer); its output."""
    plain_kwargs, plain_streamer = streaming(prompt_length, **kwargs)
    with torch.no_grad():
        plain = model.generate(**inputs, **plain_kwargs)
    fastrm_kwargs, streamer = streaming(prompt_length, **kwargs)
    out = FastRMWrapper(model, head).generate(**inputs, **fastrm_kwargs, return_relevancy=True)
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    assert streamer.ended
    torch.testing.assert_close(streamer.new_tokens(), plain_streamer.new_tokens(), rtol=0, atol=0)
    torch.testing.assert_close(streamer.new_tokens(), out.sequences[:, prompt_length:], rtol=0, atol=0)
    return out


def settings(mode: str, inputs: dict) -> tuple[dict, RecordingStreamer | None]:
    kwargs = {**MODES[mode][0], "max_new_tokens": NEW_TOKENS}
    if mode == "streamer-stopping":
        return streaming(inputs["input_ids"].shape[1], **kwargs)
    return kwargs, None


def plain_or_skip(model, inputs: dict, mode: str):
    """Plain generate() in this mode; skips when it fails without FastRM (the installed transformers' limit)."""
    kwargs, streamer = settings(mode, inputs)
    torch.manual_seed(SEED)
    try:
        with torch.no_grad():
            out = model.generate(**inputs, **kwargs, return_dict_in_generate=True)
    except (
        AttributeError,
        IndexError,
        ValueError,
    ) as error:  # Llama 4 cannot generate at all; GLM-4V and kin fail in beam search (5.24)
        pytest.skip(f"{type(model).__name__}.generate() fails without FastRM in this transformers: {error}")
    return out, streamer


def check_result(
    name: str, mode: str, model, inputs: dict, head, sequences: torch.Tensor, result, returned: int | None = None
) -> None:
    """The independent checks and the separate-forward reference for one result of `sequences` (`returned` rows per
    prompt row: the mode's own count unless given)."""
    case = BY_NAME[name]
    returned = MODES[mode][1] if returned is None else returned
    prompt_length = inputs["input_ids"].shape[1]
    rows = inputs["input_ids"].shape[0] * returned
    assert sequences.shape[0] == rows and result.relevancy.shape[0] == rows
    assert len(result.image_layouts) == rows

    # the prompt rows' image tokens as the processor marked them; returned row r continues prompt row r // returned
    marks = image_token_marks(case, model.config, inputs, inputs["input_ids"])
    for row in range(rows):
        assert torch.equal(sequences[row, :prompt_length], inputs["input_ids"][row // returned])
        layout = result.image_layouts[row]
        assert int(result.image_token_mask[row].sum()) == layout.num_image_tokens
        if layout.cross_attention:  # image states are no positions of the sequence: one grid per image of the prompt
            assert len(layout.image_grids) == len(case.expected_grids[row // returned])
        else:
            assert layout.num_image_tokens == int(marks[row // returned].sum())

    valid = result.token_mask.unsqueeze(-1) & result.image_token_mask.unsqueeze(1)
    values = result.relevancy[valid]
    assert values.numel() > 0 and bool(values.isfinite().all())
    assert bool(((values >= 0) & (values <= 1)).all()), "relevancy outside [0, 1]"
    assert bool(result.relevancy[~valid].isnan().all())

    # generate() returns the sequences of prompt row b at rows b * returned + j: the rows j, j + returned, ... pair
    # with the processor outputs of the unexpanded batch, so the reference forward runs once per j.
    for offset in range(returned):
        picked = list(range(offset, rows, returned))
        layouts = [result.image_layouts[row] for row in picked]
        expected = reference_relevancy(model, head, inputs, sequences[picked], layouts, case)
        for row, want in zip(picked, expected, strict=True):
            n = result.image_layouts[row].num_image_tokens
            steps = min(want.shape[0], result.relevancy.shape[1])
            tokens = result.token_mask[row, :steps]
            torch.testing.assert_close(
                result.relevancy[row, :steps][tokens, :n], want[:steps][tokens], rtol=1e-4, atol=1e-5
            )


@pytest.mark.parametrize(("name", "mode"), matrix())
def test_mode_tokens_identical_and_maps_equal_head_on_separate_forward(name, mode):
    model, inputs, head = built(name)
    plain, plain_streamer = plain_or_skip(model, inputs, mode)
    before = hook_state(model)  # after a plain generate(): transformers installs hooks of its own lazily

    kwargs, streamer = settings(mode, inputs)
    torch.manual_seed(SEED)
    out = FastRMWrapper(model, head).generate(**inputs, **kwargs, return_relevancy=True)
    assert hook_state(model) == before, "FastRM left hooks or method wrappers on the model"
    torch.testing.assert_close(out.sequences, plain.sequences, rtol=0, atol=0)
    check_result(name, mode, model, inputs, head, out.sequences, out)
    if streamer is not None:
        prompt_length = inputs["input_ids"].shape[1]
        assert streamer.ended
        torch.testing.assert_close(streamer.new_tokens(), out.sequences[:, prompt_length:], rtol=0, atol=0)
        torch.testing.assert_close(streamer.new_tokens(), plain_streamer.new_tokens(), rtol=0, atol=0)

    kwargs, _ = settings(mode, inputs)
    before = hook_state(model)  # the reference forward (output_hidden_states) makes transformers add hooks of its own
    torch.manual_seed(SEED)
    with FastRMLogitsProcessor(model, head) as fastrm:
        again = model.generate(**inputs, **kwargs, logits_processor=[fastrm], return_dict_in_generate=True)
        result = fastrm.result_for(again)
    assert hook_state(model) == before, "FastRM left hooks or method wrappers on the model"
    torch.testing.assert_close(again.sequences, plain.sequences, rtol=0, atol=0)
    # the same computation in the same process: the processor's result is the wrapper's, bit for bit
    torch.testing.assert_close(result.relevancy, out.relevancy, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(result.token_mask, out.token_mask, rtol=0, atol=0)
    assert [lay.grid_labels for lay in result.image_layouts] == [lay.grid_labels for lay in out.image_layouts]


def test_unfollowed_expansion_is_reported_as_ours_not_the_users(monkeypatch):
    """Should the tap not see generate() expand the batch (a future transformers renaming the step), the mismatch
    between the encoded processor outputs and the expanded rows is reported as hf_fastrm's limitation, not blamed on
    the user's inputs."""
    from hf_fastrm.taps import HiddenStateTap

    model, inputs, head = built("qwen2_vl")
    monkeypatch.setattr(HiddenStateTap, "_EXPAND_METHOD", "_no_such_method")
    with pytest.raises(ValueError, match="not a problem with your inputs") as caught:
        FastRMWrapper(model, head).generate(**inputs, num_beams=2, max_new_tokens=2, return_relevancy=True)
    assert "build both with one processor call" in str(caught.value.__cause__)
