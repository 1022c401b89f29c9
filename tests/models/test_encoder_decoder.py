"""Encoder-decoder families with the image in the encoder (Florence-2, T5Gemma 2, Pix2Struct, VisionEncoderDecoder):
the shared suite's criteria.

The head reads the decoder's last hidden state of each generated token against the encoder's last hidden states at
the image placeholder positions. Checks, per family (tiny models from configs, sizes as transformers' ModelTesters):

* the layout: grids from the model's own vision tower output or patch ids (not from the adapter), every cell an image
  position of the encoder's input;
* greedy and beam search (3 beams returning 2): tokens identical to plain generate(), maps equal to the head on ONE
  separate forward (encoder states at the layout's positions, decoder states of the returned sequences), values in
  [0, 1], maps of each image's grid shape, no hook or wrapper left on the model;
* the teacher (Chefer et al.'s encoder-decoder rules) equals a naive reference: eager attention weights kept in the
  graph, one autograd gradient per token, full-matrix rules in a plain loop.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from test_families import hook_state
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from hf_fastrm import FastRMLogitsProcessor, FastRMWrapper
from hf_fastrm.architectures import get_adapter
from hf_fastrm.teacher import gradient_relevancy
from hf_fastrm.teacher.attention import _configs, _get_implementation, _set_implementation
from hf_fastrm.testing_utils import tiny_head

NEW_TOKENS = 4
GREEDY = {"do_sample": False, "max_new_tokens": NEW_TOKENS}
BEAMS = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "num_beams": 3, "num_return_sequences": 2}
PAD, BOS, EOS = 1, 0, 2


@dataclass
class EncoderDecoderCase:
    """A tiny model, its prompt inputs and what its layout must be.

    Attributes:
        build: `() -> (model, inputs, expected)`, `expected` per row a list of grid shapes (one per image) and the
            offset of each image's first grid cell among its placeholder tokens.
        attention_order: `model -> [(kind, module)]` in the order the model runs them (``"encoder"``, ``"self"``,
            ``"cross"``, ``"merged"``), written from the model's code, for the naive teacher reference; None where
            the teacher refuses the family.
        image_positions: `(model, inputs) -> per row the encoder positions that hold the image`.
    """

    name: str
    build: Callable[[], tuple[torch.nn.Module, dict, list[list[tuple[tuple[int, int], int]]]]]
    attention_order: Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module]]] | None
    image_positions: Callable[[torch.nn.Module, dict], list[torch.Tensor]]


def placeholder_positions(model, inputs) -> list[torch.Tensor]:
    return [(row == int(model.config.image_token_id)).nonzero().flatten() for row in inputs["input_ids"]]


def right_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


def suppress(model: torch.nn.Module, token_ids: list[int]) -> None:
    """Keeps special tokens (placeholders, image markers) out of the generated text, as real checkpoints do."""
    model.generation_config.suppress_tokens = sorted(set(token_ids))
    model.generation_config.forced_eos_token_id = None


def florence2_build():
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    torch.manual_seed(0)
    image_token = 4
    # the sizes of transformers' Florence2VisionText2TextModelTester, with 2 + 2 language layers and 2 heads
    text_config = {
        "model_type": "bart",
        "vocab_size": 99,
        "max_position_embeddings": 64,
        "encoder_layers": 2,
        "encoder_ffn_dim": 16,
        "encoder_attention_heads": 2,
        "decoder_layers": 2,
        "decoder_ffn_dim": 16,
        "decoder_attention_heads": 2,
        "d_model": 16,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "eos_token_id": EOS,
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "decoder_start_token_id": EOS,
    }
    vision_config = {
        "drop_path_rate": 0.0,
        "patch_size": [7],
        "depths": [1],
        "patch_stride": [4],
        "patch_padding": [3],
        "patch_prenorm": [False],
        "embed_dim": [16],
        "num_heads": [1],
        "num_groups": [1],
        "window_size": 12,
        "projection_dim": 16,
    }
    config = Florence2Config(text_config=text_config, vision_config=vision_config, image_token_id=image_token)
    model = Florence2ForConditionalGeneration(config).eval()
    suppress(model, [image_token, PAD, BOS])
    pixel_values = torch.randn(2, 3, 16, 24)  # not square: rows and columns must not be swapped
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values)
    tokens = features.pooler_output.shape[1]
    rows, cols = features.last_hidden_state.shape[-2:]  # the last stage's (batch, channels, rows, cols)
    assert tokens == 1 + rows * cols  # the projector's global token, then the patches
    input_ids, attention_mask = right_padded(
        [[image_token] * tokens + [BOS, 10, 11, 12, EOS], [image_token] * tokens + [BOS, 13, 14, EOS]]
    )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    return model, inputs, [[((int(rows), int(cols)), 1)], [((int(rows), int(cols)), 1)]]


def florence2_attention(model):
    language_model = model.model.language_model
    order = [("encoder", layer.self_attn) for layer in language_model.encoder.layers]
    for layer in language_model.decoder.layers:
        order += [("self", layer.self_attn), ("cross", layer.encoder_attn)]
    return order


def t5gemma2_build():
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

    torch.manual_seed(0)
    image_token, boi, eoi = 4, 5, 6
    text = {
        "vocab_size": 99,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "max_position_embeddings": 64,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 16,
        "patch_size": 4,
    }
    encoder = {
        "text_config": text,
        "vision_config": vision,
        "mm_tokens_per_image": 4,
        "boi_token_index": boi,
        "eoi_token_index": eoi,
        "image_token_index": image_token,
    }
    config = T5Gemma2Config(encoder=encoder, decoder=dict(text), image_token_index=image_token, eoi_token_index=eoi)
    model = T5Gemma2ForConditionalGeneration(config).eval()
    model.generation_config.decoder_start_token_id = BOS
    suppress(model, [image_token, boi, eoi, PAD, BOS])
    pixel_values = torch.randn(3, 3, 16, 16)  # row 0 holds two images, row 1 one
    with torch.no_grad():
        features = model.get_image_features(pixel_values, return_dict=True).pooler_output
    tokens = features.shape[1]
    side = math.isqrt(tokens)
    assert side * side == tokens  # the tower average-pools its patch grid into a square (as Gemma 3)
    image = [boi] + [image_token] * tokens + [eoi]
    input_ids, attention_mask = right_padded([[BOS, *image, 10, 11, *image, 12], [BOS, *image, 13, 14, 15, EOS]])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    return model, inputs, [[((side, side), 0), ((side, side), 0)], [((side, side), 0)]]


def t5gemma2_attention(model):
    order = [("encoder", layer.self_attn) for layer in model.model.encoder.text_model.layers]
    return order + [("merged", layer.self_attn) for layer in model.model.decoder.layers]


def pix2struct_build():
    from transformers import Pix2StructConfig, Pix2StructForConditionalGeneration

    torch.manual_seed(0)
    # sizes of transformers' Pix2Struct ModelTesters (hidden 32, 2 layers, 4 heads, patch 2), 2 + 2 layers
    text = {
        "vocab_size": 99,
        "hidden_size": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }
    vision = {
        "hidden_size": 32,
        "patch_embed_hidden_size": 12,
        "d_ff": 37,
        "d_kv": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "dropout_rate": 0.0,
        "attention_dropout": 0.0,
        "seq_len": 16,
        "patch_size": 2,
    }
    model = Pix2StructForConditionalGeneration(Pix2StructConfig(text_config=text, vision_config=vision)).eval()
    suppress(model, [0])
    # as its image processor writes them: per row the patches in row-major order, each (row id, col id, 2*2*3 pixel
    # values) with 1-based ids, then padding (all zero) up to max_patches
    grids = [(3, 4), (2, 5)]
    patches = torch.zeros(2, 16, 2 + 12)
    attention_mask = torch.zeros(2, 16, dtype=torch.long)
    for row, (height, width) in enumerate(grids):
        for index in range(height * width):
            patches[row, index, :2] = torch.tensor([index // width + 1, index % width + 1])
            patches[row, index, 2:] = torch.randn(12)
            attention_mask[row, index] = 1
    inputs = {"flattened_patches": patches, "attention_mask": attention_mask}
    return model, inputs, [[(grid, 0)] for grid in grids]


def pix2struct_attention(model):
    order = [("encoder", layer.attention) for layer in model.encoder.encoder.layer]
    for layer in model.decoder.layer:
        order += [("self", layer.self_attention.attention), ("cross", layer.encoder_decoder_attention.attention)]
    return order


def vision_encoder_decoder_build():
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    torch.manual_seed(0)
    # ViT and GPT-2 at their ModelTesters' sizes; the widths differ, so the model projects the encoder's states
    encoder = ViTConfig(
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=16,
        patch_size=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    decoder = GPT2Config(
        vocab_size=99,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
    model = VisionEncoderDecoderModel(config=config).eval()
    assert isinstance(model.enc_to_dec_proj, torch.nn.Linear)
    suppress(model, [BOS, PAD])
    pixel_values = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        states = model.encoder(pixel_values=pixel_values).last_hidden_state
    side = 16 // 4
    assert states.shape[1] == 1 + side * side  # ViT: CLS, then the patches
    return model, {"pixel_values": pixel_values}, [[((side, side), 1)], [((side, side), 1)]]


def vision_encoder_decoder_attention(model):
    order = [("encoder", layer.attention) for layer in model.encoder.layers]
    for block in model.decoder.transformer.h:
        order += [("self", block.attn), ("cross", block.crossattention)]
    return order


def every_encoder_state(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        length = model.encoder(pixel_values=inputs["pixel_values"]).last_hidden_state.shape[1]
    return [torch.arange(length) for _ in range(inputs["pixel_values"].shape[0])]


def pp_formulanet_build():
    from transformers import PPFormulaNetConfig, PPFormulaNetForConditionalGeneration

    torch.manual_seed(0)
    vision = {
        "hidden_size": 32,
        "output_channels": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 8,
        "window_size": 4,
        "global_attn_indexes": [1],
        "mlp_dim": 37,
        "post_conv_in_channels": 16,
        "post_conv_mid_channels": 16,
        "post_conv_out_channels": 32,
        "decoder_hidden_size": 32,
    }
    text = {
        "vocab_size": 99,
        "max_position_embeddings": 64,
        "decoder_layers": 2,
        "decoder_ffn_dim": 37,
        "decoder_attention_heads": 4,
        "d_model": 32,
        "dropout": 0.0,
        "forced_eos_token_id": None,
    }
    model = PPFormulaNetForConditionalGeneration(PPFormulaNetConfig(text_config=text, vision_config=vision)).eval()
    suppress(model, [BOS, PAD])
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model.get_encoder()(pixel_values=pixel_values)
        patches = pooled.last_hidden_state  # (batch, channels, rows, cols) before the projector
        projector = model.get_encoder().multi_modal_projector
        rows, cols = projector.conv2(projector.conv1(patches)).shape[-2:]
    assert pooled.pooler_output.shape[1] == rows * cols  # what the decoder cross-attends to, row-major
    return model, {"pixel_values": pixel_values}, [[((int(rows), int(cols)), 0)] for _ in range(2)]


def pooled_positions(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        length = model.get_encoder()(pixel_values=inputs["pixel_values"]).pooler_output.shape[1]
    return [torch.arange(length) for _ in range(inputs["pixel_values"].shape[0])]


def patch_positions(model, inputs) -> list[torch.Tensor]:
    return [(row[:, 0] > 0).nonzero().flatten() for row in inputs["flattened_patches"]]


CASES = {
    case.name: case
    for case in (
        EncoderDecoderCase("florence2", florence2_build, florence2_attention, placeholder_positions),
        EncoderDecoderCase("t5gemma2", t5gemma2_build, t5gemma2_attention, placeholder_positions),
        EncoderDecoderCase("pix2struct", pix2struct_build, pix2struct_attention, patch_positions),
        EncoderDecoderCase(
            "vision-encoder-decoder",
            vision_encoder_decoder_build,
            vision_encoder_decoder_attention,
            every_encoder_state,
        ),
        EncoderDecoderCase("pp_formulanet", pp_formulanet_build, None, pooled_positions),
    )
}


@functools.cache
def built(name: str):
    model, inputs, expected = CASES[name].build()
    return model, inputs, expected, tiny_head(model)


def select_rows(inputs: dict, images_per_row: list[int], rows: list[int]) -> dict:
    """The prompt inputs of `rows` (in that order, repeats allowed); pixel values follow each row's images."""
    starts = [sum(images_per_row[:row]) for row in range(len(images_per_row))]
    images = torch.tensor([starts[row] + i for row in rows for i in range(images_per_row[row])])
    return {
        key: value[images] if key == "pixel_values" else value[torch.tensor(rows)] for key, value in inputs.items()
    }


def expanded(inputs: dict, images_per_row: list[int], repeat: int) -> dict:
    """The prompts repeated `repeat` times each (generate()'s order)."""
    rows = [row for row in range(len(images_per_row)) for _ in range(repeat)]
    return select_rows(inputs, images_per_row, rows)


def reference_maps(model, head, inputs, sequences, layouts) -> torch.Tensor:
    """`(rows, new_tokens, image_tokens)` (zero-padded): the head on ONE separate forward over the sequences: the
    encoder's last hidden states at the layout's positions, the decoder's at the positions that chose each token."""
    with torch.no_grad():
        out = model(**inputs, decoder_input_ids=sequences[:, :-1], output_hidden_states=True)
        encoder_states, decoder_states = out.encoder_last_hidden_state, out.decoder_hidden_states[-1]
        if hasattr(model, "enc_to_dec_proj"):  # VisionEncoderDecoder: the states its decoder's cross-attention reads
            encoder_states = model.enc_to_dec_proj(encoder_states)
        if model.config.model_type == "pp_formulanet":  # its decoder reads the projector's pooled states
            encoder_states = model.get_encoder()(pixel_values=inputs["pixel_values"]).pooler_output
        width = max(layout.num_image_tokens for layout in layouts)
        maps = torch.zeros(sequences.shape[0], sequences.shape[1] - 1, width)
        for row, layout in enumerate(layouts):
            keys = encoder_states[row, layout.image_positions]
            maps[row, :, : layout.num_image_tokens] = head(decoder_states[row : row + 1], keys.unsqueeze(0))[0]
    return maps


def check_against_separate_forward(model, head, inputs, out, expected) -> None:
    valid = out.token_mask.unsqueeze(-1) & out.image_token_mask.unsqueeze(1)
    assert bool(valid.any())
    assert bool(((out.relevancy[valid] >= 0) & (out.relevancy[valid] <= 1)).all())
    assert bool(out.relevancy[~valid].isnan().all())
    reference = reference_maps(model, head, inputs, out.sequences, out.image_layouts)
    # same float32 arithmetic in a cached step-by-step decode and one full forward: differences are rounding only
    torch.testing.assert_close(out.relevancy[valid], reference[valid], rtol=1e-4, atol=1e-5)
    for row in range(len(out.image_layouts)):
        shapes = [shape for shape, _ in expected[row]]
        maps = out.relevancy_maps(row)
        assert [tuple(m.shape) for m in maps] == [(out.relevancy.shape[1], *shape) for shape in shapes]


# ---------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("name", list(CASES))
def test_layout_matches_the_vision_tower(name):
    """Encoder positions of the placeholders; each image's grid shape as the tower's own output says, cells in
    row-major order over the image's patch tokens (after Florence-2's global token)."""
    model, inputs, expected, _ = built(name)
    adapter = get_adapter(model)
    assert adapter.is_encoder_decoder
    layouts = adapter.encoder_layout(model.config, dict(inputs))
    for row, (layout, positions) in enumerate(zip(layouts, CASES[name].image_positions(model, inputs), strict=True)):
        torch.testing.assert_close(layout.image_positions, positions, rtol=0, atol=0)
        assert [tuple(grid.shape) for grid in layout.image_grids] == [shape for shape, _ in expected[row]]
        start = 0
        for grid, (shape, first_cell) in zip(layout.image_grids, expected[row], strict=True):
            tokens = first_cell + shape[0] * shape[1]
            want = torch.arange(start + first_cell, start + tokens).view(shape)
            torch.testing.assert_close(grid, want, rtol=0, atol=0)
            start += tokens


# ---------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", list(CASES))
def test_greedy_tokens_identical_and_maps_equal_head_on_separate_forward(name):
    model, inputs, expected, head = built(name)
    with torch.no_grad():
        plain = model.generate(**inputs, **GREEDY)
    before = hook_state(model)
    out = FastRMWrapper(model, head).generate(**inputs, **GREEDY, return_relevancy=True)
    assert hook_state(model) == before, "FastRM left hooks or wrappers on the model"
    assert type(out).__name__ == "FastRMGenerateEncoderDecoderOutput"
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    assert out.relevancy.shape[:2] == (plain.shape[0], plain.shape[1] - 1)
    check_against_separate_forward(model, head, inputs, out, expected)


@pytest.mark.parametrize("name", list(CASES))
def test_beam_search_3_returning_2(name):
    """Beams: generate() expands the encoder's outputs; the maps follow the returned beams."""
    model, inputs, expected, head = built(name)
    with torch.no_grad():
        plain = model.generate(**inputs, **BEAMS)
    out = FastRMWrapper(model, head).generate(**inputs, **BEAMS, return_relevancy=True)
    assert type(out).__name__ == "FastRMGenerateBeamEncoderDecoderOutput"
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    images = [len(row) for row in expected]
    rows_expected = [row for row in expected for _ in range(2)]
    check_against_separate_forward(model, head, expanded(inputs, images, 2), out, rows_expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_sampling_with_2_return_sequences(name):
    """Seeded sampling, each prompt twice: the same tokens as plain generate() with the same seed."""
    model, inputs, expected, head = built(name)
    sampling = {"do_sample": True, "max_new_tokens": NEW_TOKENS, "num_return_sequences": 2, "top_k": 0}
    torch.manual_seed(7)
    with torch.no_grad():
        plain = model.generate(**inputs, **sampling)
    torch.manual_seed(7)
    out = FastRMWrapper(model, head).generate(**inputs, **sampling, return_relevancy=True)
    torch.testing.assert_close(out.sequences, plain, rtol=0, atol=0)
    images = [len(row) for row in expected]
    rows_expected = [row for row in expected for _ in range(2)]
    check_against_separate_forward(model, head, expanded(inputs, images, 2), out, rows_expected)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_processor_reused_across_calls(name):
    """One processor, two calls (both prompts, then the second alone): each result is its own call's."""
    model, inputs, expected, head = built(name)
    with FastRMLogitsProcessor(model, head) as fastrm:
        first = model.generate(**inputs, **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True)
        first_maps = fastrm.result_for(first).relevancy
        second_inputs = select_rows(inputs, [len(row) for row in expected], [1])
        second = model.generate(**second_inputs, **GREEDY, logits_processor=[fastrm], return_dict_in_generate=True)
        second_maps = fastrm.result_for(second).relevancy
        with pytest.raises(ValueError, match="do not come from the last generate"):
            fastrm.result_for(first)
    width = second_maps.shape[-1]
    # the second prompt alone decodes as in the batch (right padding, no cross-row effects)
    torch.testing.assert_close(second.sequences, first.sequences[1:], rtol=0, atol=0)
    torch.testing.assert_close(second_maps, first_maps[1:, :, :width], rtol=1e-4, atol=1e-5, equal_nan=True)


# ---------------------------------------------------------------------------------------------------- teacher
_RECORDED: list[tuple[torch.nn.Module, torch.Tensor]] = []
_RECORDING = "fastrm_test_recording_eager"


def _recording_eager(module, query, key, value, attention_mask, **kwargs):
    """The module's own eager attention; its probabilities (the tensor the output is computed from) are kept."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)
    _RECORDED.append((module, weights))
    return output, weights


AttentionInterface.register(_RECORDING, _recording_eager)
AttentionMaskInterface.register(_RECORDING, eager_mask)


def _rbar(relevance: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(relevance.shape[0], dtype=relevance.dtype)
    residual = relevance - eye
    for i in range(residual.shape[0]):
        total = residual[i].sum()
        if total > 0:
            residual[i] = residual[i] / total
    return residual + eye


def naive_teacher(model, inputs, sequences, order) -> torch.Tensor:
    """`(rows, new_tokens, encoder_len)`: Chefer et al.'s encoder-decoder rules written out per row and token."""
    saved = [(config, _get_implementation(config)) for config in _configs(model)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    _RECORDED.clear()
    try:
        for config, _ in saved:
            _set_implementation(config, _RECORDING)
        for p, _ in flags:
            p.requires_grad_(True)
        out = model(**inputs, decoder_input_ids=sequences[:, :-1], use_cache=False)
        weights = {id(module): w for module, w in _RECORDED}
        maps_in_order = [(kind, weights[id(module)]) for kind, module in order]
        rows, length = sequences.shape
        e, d = out.encoder_last_hidden_state.shape[1], length - 1
        result = torch.zeros(rows, d, e)
        for t in range(d):
            target = out.logits[:, t].gather(-1, sequences[:, t + 1 : t + 2]).sum()
            grads = torch.autograd.grad(target, [w for _, w in maps_in_order], retain_graph=True)
            abar = [(g * w).clamp(min=0).mean(dim=1).detach() for g, (_, w) in zip(grads, maps_in_order, strict=True)]
            for row in range(rows):
                r_ee, r_dd, r_de = torch.eye(e), torch.eye(d), torch.zeros(d, e)
                for (kind, _), a in zip(maps_in_order, abar, strict=True):
                    a = a[row].double().float()
                    if kind == "encoder":
                        r_ee = r_ee + a @ r_ee
                    elif kind == "self":
                        r_dd, r_de = r_dd + a @ r_dd, r_de + a @ r_de
                    elif kind == "cross":
                        r_de = r_de + _rbar(r_dd.clone()).T @ a @ _rbar(r_ee.clone())
                    else:  # merged: one softmax over [decoder; encoder], both updates from the R before the layer
                        a_dd, a_de = a[:, :d], a[:, d:]
                        cross = _rbar(r_dd.clone()).T @ a_de @ _rbar(r_ee.clone())
                        r_dd, r_de = r_dd + a_dd @ r_dd, r_de + a_dd @ r_de + cross
                result[row, t] = r_de[t]
        return result
    finally:
        _RECORDED.clear()
        for config, value in saved:
            _set_implementation(config, value)
        for p, flag in flags:
            p.requires_grad_(flag)


@pytest.mark.parametrize("name", list(CASES))
def test_teacher_equals_naive_reference(name):
    model, inputs, _, head = built(name)
    out = FastRMWrapper(model, head).generate(**inputs, **GREEDY, return_relevancy=True)
    if CASES[name].attention_order is None:
        with pytest.raises(NotImplementedError, match="convolutions"):
            gradient_relevancy(model, inputs, out.sequences)
        return
    teacher = gradient_relevancy(model, inputs, out.sequences, return_hidden_states=True)
    result = teacher.result
    assert result.relevancy.shape == out.relevancy.shape
    torch.testing.assert_close(result.token_mask, out.token_mask, rtol=0, atol=0)
    valid = result.token_mask.unsqueeze(-1) & result.image_token_mask.unsqueeze(1)
    assert bool((result.relevancy[valid] >= 0).all()) and bool(result.relevancy[valid].isfinite().all())
    assert float(result.relevancy[valid].max()) > 0
    naive = naive_teacher(model, inputs, out.sequences, CASES[name].attention_order(model))
    for row, layout in enumerate(result.image_layouts):
        n = layout.num_image_tokens
        tokens = result.token_mask[row]
        want = naive[row][:, layout.image_positions][tokens]
        # the probed attention recomputes eager's float32 probabilities: rounding-level differences only
        torch.testing.assert_close(result.relevancy[row, tokens, :n], want, rtol=1e-4, atol=1e-7)
    # the hidden states the teacher returns are the ones the head reads inside generate()
    reference = reference_maps(model, head, inputs, out.sequences, out.image_layouts)
    with torch.no_grad():
        recomputed = head(teacher.token_hidden_states, teacher.image_hidden_states)
    valid = out.token_mask.unsqueeze(-1) & out.image_token_mask.unsqueeze(1)
    torch.testing.assert_close(recomputed[valid], reference[valid], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_teacher_on_beam_sequences(name):
    """Returned sequences outnumbering the prompts: each prompt's encoder input and images repeated for its rows."""
    model, inputs, expected, head = built(name)
    if CASES[name].attention_order is None:
        pytest.skip(f"the teacher refuses {name} (test_teacher_equals_naive_reference checks the refusal)")
    out = FastRMWrapper(model, head).generate(**inputs, **BEAMS, return_relevancy="gradient")
    assert out.relevancy.shape[0] == 4
    rows = [len(row) for row in expected]
    naive = naive_teacher(model, expanded(inputs, rows, 2), out.sequences, CASES[name].attention_order(model))
    for row, layout in enumerate(out.image_layouts):
        tokens = out.token_mask[row]
        want = naive[row][:, layout.image_positions][tokens]
        torch.testing.assert_close(out.relevancy[row, tokens, : layout.num_image_tokens], want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["attention", "rollout", "lvlm-interpret", "fastrm"])
def test_decoder_only_methods_refuse_encoder_decoder_models(method):
    """The methods that force a decoder-only sequence (reading relevance at image positions of it) refuse an
    encoder-decoder model with a message naming what works instead, rather than a misleading prompt mismatch."""
    from hf_fastrm.methods import get_method

    model, inputs, _, head = built(next(iter(CASES)))
    with torch.no_grad():
        sequences = model.generate(**inputs, **GREEDY)
    chosen = get_method(method, head=head) if method == "fastrm" else get_method(method)
    with pytest.raises(NotImplementedError, match="encoder-decoder model.*return_relevancy=True.*'gradient'"):
        chosen.attribute(model, dict(inputs), sequences)


@pytest.mark.parametrize("name", list(CASES))
def test_streamer_and_row_wise_stopping_criteria(name):
    """A streamer and stopping criteria that end the rows at different steps: the same tokens and stream as plain
    generate() (the decoder's start token first), maps equal to the head on a separate forward."""
    from test_modes import streamed_like_plain

    model, inputs, expected, head = built(name)
    out = streamed_like_plain(model, head, inputs, 1, **GREEDY)  # the decoder starts from one token
    assert out.sequences.shape[1] - 1 < NEW_TOKENS  # the criteria ended generation early
    check_against_separate_forward(model, head, inputs, out, expected)
