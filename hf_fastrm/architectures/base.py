"""What FastRM needs to know about a model family: where the language model is and where the image tokens are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ImageStateReader = Callable[[tuple, dict[str, Any]], "torch.Tensor | None"]
"""``reader(args, kwargs) -> (batch, image_states, hidden) or None``: see [`ArchitectureAdapter.image_state_source`]."""

InlineAttentionForward = Callable[..., Any]
"""``forward(module, attention_function, *args, **kwargs)``: see [`ArchitectureAdapter.inline_attention`]."""


def bert_style_attention(
    module: nn.Module,
    attention_function: Callable[..., Any],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    input_shape: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The end of a BERT-style self-attention forward (GIT, BLIP's text decoder) whose inline ``softmax(q k^T /
    sqrt(d) + mask) v`` is done by `attention_function` (see [`ArchitectureAdapter.inline_attention`]): the module's
    ``attention_head_size`` gives the scaling, its ``dropout`` the dropout (in training mode only).

    Args:
        query (`torch.Tensor` of shape `(batch, heads, q_len, head_dim)`), key and value (`(batch, heads, k_len,
            head_dim)`), attention_mask (additive, broadcastable to `(batch, 1, q_len, k_len)`, or None).
        input_shape: the query states' leading shape, `(batch, q_len)`.

    Returns:
        `(context (batch, q_len, heads * head_dim), weights or None)`, as the module's own forward returns them.
    """
    output, weights = attention_function(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=module.dropout.p if module.training else 0.0,
        scaling=module.attention_head_size**-0.5,
    )
    return output.reshape(*input_shape, module.all_head_size), weights


@dataclass
class RowImageLayout:
    """Where one batch row's images sit in its token sequence.

    Attributes:
        image_positions (`torch.LongTensor` of shape `(image_tokens,)`):
            sequence positions of the row's image tokens, in order; relevancy is reported over these.
        image_grids (`list[torch.LongTensor]`): one per image, of shape `(height, width)` (or `(frames, height,
            width)` for video); each entry indexes into `image_positions` (the token holding that patch), -1 where
            no token does. Tokens that belong to no grid cell (newline or separator tokens) are left out.
        grid_labels (`list[str]`): one per grid, what it shows (``"image 0"``, ``"image 0 tiles"``, ``"image 0 base"``,
            ``"video 0"``, ...); empty when the adapter does not name its grids.
        source (`str`): what `image_positions` index. ``"sequence"`` (the default): positions of the decoder's token
            sequence, whose last hidden states are the image tokens' states. ``"cross_attention"``: indices into the
            row's image states that the decoder's cross-attention layers attend to (`(image_states, hidden)` per row,
            read by [`ArchitectureAdapter.image_state_source`]); the decoder's sequence holds no image tokens then.
    """

    image_positions: torch.Tensor
    image_grids: list[torch.Tensor] = field(default_factory=list)
    grid_labels: list[str] = field(default_factory=list)
    source: str = "sequence"

    @property
    def cross_attention(self) -> bool:
        """Whether the image tokens are cross-attention image states rather than positions of the sequence."""
        return self.source == "cross_attention"

    @property
    def num_image_tokens(self) -> int:
        return int(self.image_positions.numel())


def check_image_tokens(layouts: list[RowImageLayout], alternative: str | None = None) -> None:
    """Refuses a prompt with a row that holds no image tokens (there would be nothing to explain), saying how to
    build one; `alternative` (e.g. ``"or generate without relevancy"``) ends the message with another way out."""
    for row, layout in enumerate(layouts):
        if layout.num_image_tokens == 0:
            way_out = f", {alternative}" if alternative else ""
            raise ValueError(
                f"Row {row} of the prompt holds no image tokens, so there is nothing to explain. Build the prompt "
                "with the model's processor from an image and a text holding its image placeholder (for example "
                f"'<image>' for LLaVA){way_out}."
            )


class ArchitectureAdapter:
    """Family-specific knowledge. Subclass it and register with [`register_architecture`].

    A subclass sets `model_types` and implements [`ArchitectureAdapter.image_layout`]; the defaults of the other
    methods fit models built like LLaVA (``model.model.language_model`` with a final ``norm``).
    """

    model_types: tuple[str, ...] = ()
    """``config.model_type`` values this adapter serves."""

    grid_description: str = "one grid per image"
    """One line for docs/supported-models.md: how image tokens map onto patch grids."""

    def language_model(self, model: nn.Module) -> nn.Module:
        """The text decoder (its layers hold the self-attention modules the teacher taps)."""
        inner = getattr(model, "model", model)
        language_model = getattr(inner, "language_model", None)
        if language_model is None:
            raise ValueError(
                f"Cannot find the language model of {type(model).__name__} (expected `model.model.language_model`)."
            )
        return language_model

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The module whose output is the last hidden state (what ``lm_head`` reads)."""
        language_model = self.language_model(model)
        norm = getattr(language_model, "norm", None)
        if norm is None:
            raise ValueError(f"Cannot find the final norm of {type(language_model).__name__} (expected `.norm`).")
        return norm

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The language model's decoder layers, first to last."""
        return self.language_model(model).layers

    is_encoder_decoder: bool = False
    """Whether the image tokens live in an encoder's sequence that the text decoder cross-attends to (Florence-2,
    T5Gemma 2): then the layouts' positions index the encoder's input, and [`image_key_states`] the encoder's
    states. Such adapters subclass `hf_fastrm.architectures.encoder_decoder.EncoderDecoderAdapter`, which adds the
    `encoder_layout` the tap calls."""

    def image_key_states(
        self, model: nn.Module, decoder_states: torch.Tensor, forward_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The states the layouts' image positions index, from which the head computes its keys.

        Args:
            model (`nn.Module`): the top-level model.
            decoder_states (`torch.Tensor` of shape `(rows, seq, hidden)`): the final norm's output of the prefill
                (the decoder's last hidden states).
            forward_kwargs (`dict`): the keyword arguments of that prefill's forward (``encoder_outputs``, ...).

        Returns:
            `(rows, positions, width)`: here the decoder's own states, where decoder-only families write the image
            features; an encoder-decoder adapter returns the encoder's last hidden states.
        """
        return decoder_states

    def generation_module(self, model: nn.Module) -> nn.Module:
        """The module whose forward `generate()` calls at every step: `model` itself, except for families whose
        own `generate()` writes the image features into ``inputs_embeds`` and hands them to the language model's
        `generate()` (BLIP-2 and kin). The tap watches this module's prefill and its batch expansion."""
        return model

    def image_token_id(self, config: Any) -> int:
        token_id = getattr(config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(config, "image_token_index", None)
        if token_id is None:
            raise ValueError(f"{type(config).__name__} has no `image_token_id`.")
        return int(token_id)

    image_inputs: tuple[str, ...] = ("pixel_values",)
    """Processor outputs that image tokens in a prompt need (Qwen-VL adds ``image_grid_thw``)."""

    video_inputs: tuple[str, ...] = ("pixel_values_videos",)
    """Processor outputs that video tokens in a prompt need."""

    def required_inputs(self, config: Any, input_ids: torch.Tensor) -> tuple[str, ...]:
        """The processor outputs the prompt's image and video tokens need (checked before each prefill).

        Args:
            config: the model's `PretrainedConfig`.
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the prompt.
        """
        needed: list[str] = []
        for names, inputs in (
            (("image_token_id", "image_token_index"), self.image_inputs),
            (("video_token_id", "video_token_index"), self.video_inputs),
        ):
            token_ids = [getattr(config, name, None) for name in names]
            token_ids = [int(token_id) for token_id in token_ids if isinstance(token_id, int)]
            if token_ids and bool(torch.isin(input_ids, torch.as_tensor(token_ids, device=input_ids.device)).any()):
                needed.extend(name for name in inputs if name not in needed)
        return tuple(needed)

    def check_required_inputs(self, config: Any, input_ids: torch.Tensor, inputs: dict[str, Any]) -> None:
        """Refuses a prompt whose image or video tokens lack processor outputs they need ([`required_inputs`]):
        the model would read placeholder embeddings instead of the image, and every method would explain those.

        Args:
            config: the model's `PretrainedConfig`.
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the prompt.
            inputs (`dict`): what generate() was given (or, inside it, what reached the encoders and the forward).
        """
        missing = [name for name in self.required_inputs(config, input_ids) if inputs.get(name) is None]
        pixels = {self.image_inputs[0], self.video_inputs[0]}
        if any(name in pixels for name in missing):
            # without the pixels the encoder never ran, so its companions (grids) were not recorded either
            missing = [name for name in missing if name in pixels]
        if missing:
            raise ValueError(
                "The prompt holds image or video tokens but generate() got no "
                f"{', '.join(f'`{name}`' for name in missing)}: "
                "the model would read placeholder embeddings instead of the image, and FastRM would explain those. "
                "Pass everything the model's processor returned, e.g. `model.generate(**processor(images=image, "
                "text=prompt, return_tensors='pt'), ...)`."
            )

    per_token_inputs: tuple[str, ...] = ()
    """Prompt tensors of shape `(batch, seq, ...)` besides ``*token_type_ids`` that the model extends over generated
    tokens with its own ``_update_model_kwargs_for_generation`` (Mllama's ``cross_attention_mask``); a
    teacher-forced forward extends them the same way."""

    def image_state_source(self, model: nn.Module) -> tuple[nn.Module, ImageStateReader] | None:
        """Where the image states come from when they are not positions of the decoder's sequence (cross-attention
        families, whose layouts have ``source="cross_attention"``).

        Returns `None` (the default) when the image tokens' states are the last hidden states at the layout's
        positions. Otherwise `(module, reader)`: the tap registers a forward pre-hook with kwargs on `module`, and at
        each prefill ``reader(args, kwargs)`` returns the image states, `(batch, image_states, hidden)` in the width
        of the decoder's last hidden states (the keys the FastRM head reads; the layout's `image_positions` index
        dim 1), or `None` when the call carries none (decoding steps, which reuse the cached cross-attention keys).
        """
        return None

    def cross_attention_layers(self, model: nn.Module) -> list[int]:
        """Indices of the decoder layers whose attention is cross-attention from the text to the image states (the
        gradient teacher applies Chefer et al.'s bi-modal rule there); empty for placeholder-token families."""
        return []

    def computes_own_positions(self, model: nn.Module) -> bool:
        """Whether the model derives its position ids itself (multimodal rotary positions from the image grids,
        Qwen2-VL and kin: a ``get_rope_index`` method), so a teacher-forced forward must not pass its own."""
        return any(hasattr(module, "get_rope_index") for module in (model, getattr(model, "model", None)) if module)

    def decoding_position_ids(
        self, model: nn.Module, input_ids: torch.Tensor, prompt_length: int
    ) -> torch.Tensor | None:
        """`(batch, seq)`: position ids under which ONE forward over prompt and generated tokens (`input_ids`)
        reproduces the states `generate()` computed, for a family whose decoding positions differ from what its
        forward derives over a whole sequence (Kosmos-2 decodes left-padded rows at cache length + 1). `None` (the
        default): the usual rule (`generate()`'s positions from the attention mask, or the model's own)."""
        return None

    def starts_with_one_token(self, forward_kwargs: dict[str, Any]) -> bool:
        """Whether a forward of the generation module over ONE new token is a prefill (a prompt of one token, BLIP's
        captioning BOS), judged from its keyword arguments. `False` (the default): a one-token call is a decoding step,
        prefills have more than one token."""
        return False

    def sequence_prefix(self, config: Any, model_kwargs: dict[str, Any]) -> int:
        """How many positions the model puts in front of ``input_ids`` in the decoder's sequence (GIT prepends its
        image features; 0, the default, for every family that writes them over tokens of the prompt). Layout
        positions are positions of the decoder's sequence; prompt token ``i`` sits at ``prefix + i``.

        Args:
            config: the model's `PretrainedConfig`.
            model_kwargs: the processor outputs the forward receives (`pixel_values`, ...).
        """
        return 0

    image_mask_inputs: tuple[str, ...] = ()
    """Prompt-length masks of image positions `(batch, seq)` the processor outputs (Kosmos-2's
    ``image_embeds_position_mask``) that a teacher-forced forward over prompt and generated tokens must extend (with
    [`generated_token_types`] values: generated tokens are no images)."""

    def generated_token_types(self, key: str, value: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """`(..., new_tokens)`: the values a per-token prompt tensor (``token_type_ids``, ``mm_token_type_ids``)
        takes on generated tokens, when the model has no generation rule of its own: 0, text."""
        return value.new_zeros(*value.shape[:-1], new_tokens)

    def method_wrappers(self, model: nn.Module) -> dict[str, Callable[[Callable], Callable]]:
        """Methods of `model` the FastRM tap wraps while it is attached (instance attributes, restored when it
        detaches): name -> a function taking the bound method and returning its wrapper. For families whose own
        methods keep FastRM from running (Janus' text-mode `generate()` drops `logits_processor`); none by default."""
        return {}

    def generation_prompt(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs of the generation that produced `generate()`'s sequences, from those the user passed to the
        model's `generate()`: the same (the default), except for families whose own `generate()` rewrites the prompt
        before the decoder's generation starts (BLIP writes BOS over the first token, drops the last and ends at
        ``[SEP]``). The teacher and the attention methods check `sequences` against, and force, this prompt; an
        ``eos_token_id`` entry sets the end of sequence. `inputs` itself is not changed."""
        return inputs

    def inline_attention(self, model: nn.Module) -> dict[nn.Module, InlineAttentionForward]:
        """Language-model attention modules whose forward computes the softmax inline instead of calling
        transformers' `AttentionInterface` (GIT, BLIP's text decoder), each with a replacement forward.

        The gradient teacher and the attention methods record attention through an attention function registered in
        `AttentionInterface`; while they run, each module here gets ``forward = partial(replacement, module,
        attention_function)`` (an instance attribute, removed on exit, also on error), so its attention goes through
        that function. ``replacement(module, attention_function, *args, **kwargs)`` takes the module's own forward
        arguments, computes query, key and value as the module does, calls ``attention_function(module, query, key,
        value, attention_mask, dropout=..., scaling=...)`` (query `(batch, heads, q_len, head_dim)`, key and value
        `(batch, kv_heads, k_len, head_dim)`, additive or boolean mask; it returns `(output (batch, q_len, heads,
        head_dim), weights or None)`) and returns what the module's own forward returns. The module passed to
        the attention function is the one the teacher counts as the layer's attention. Generation and FastRM never
        use these. None (an empty dict) by default.
        """
        return {}

    def image_layout(self, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[RowImageLayout]:
        """Per batch row, the image tokens' positions and each image's patch grid.

        Args:
            config: the model's `PretrainedConfig`.
            input_ids (`torch.LongTensor` of shape `(batch, seq)`): the prompt.
            model_kwargs: what the processor returned besides `input_ids` (`image_sizes`, `image_grid_thw`, ...).
        """
        raise NotImplementedError

    # Helpers for subclasses -------------------------------------------------------------------
    @staticmethod
    def image_token_positions(input_ids: torch.Tensor, token_ids: int | list[int]) -> list[torch.Tensor]:
        """Per row, the positions of tokens equal to `token_ids` (`(batch, seq)` -> list of `(n_row,)`)."""
        ids = torch.as_tensor(token_ids if isinstance(token_ids, list) else [token_ids], device=input_ids.device)
        mask = torch.isin(input_ids, ids)
        return [row.nonzero().flatten().cpu() for row in mask]
