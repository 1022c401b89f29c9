"""Forward hooks that tap the language model's last hidden states during generation.

Never ``output_hidden_states=True``: that keeps every layer of every step. Two hooks do the job:

* a forward pre-hook on the top-level model (or the module the family's own `generate()` hands generation to, the
  adapter's `generation_module`: BLIP-2's language model) sees each call's ``input_ids`` (and processor outputs
  such as ``image_grid_thw``); a call with more than one new token is a prefill (or one token, where the adapter's
  `starts_with_one_token` says so: BLIP's captioning BOS), whose image layout the family adapter computes. A prefill fed ``inputs_embeds`` only takes the prompt's ids from ``prepare_inputs_for_generation``
  (wrapped like the encoders below);
* a forward hook on the language model's final norm (what ``lm_head`` reads) keeps the newest position's state
  and, at prefill, the image tokens' states, which it turns into the head's keys at once.

transformers 5.x `generate()` encodes the images before prefill (``get_image_features(pixel_values, image_sizes,
...)`` of the base model) and then drops those processor outputs from the forward's kwargs. So the tap also wraps
the base model's ``get_image_features`` / ``get_video_features`` (instance attributes, signature kept) to record the
arguments of such a call; the next prefill sees them merged under its own kwargs.

It encodes them BEFORE it expands the batch for beam search or ``num_return_sequences`` (each row repeated
``expand_size`` times, ``repeat_interleave``): the recorded processor outputs (``image_grid_thw``, ``image_sizes``,
pixel values) describe the unexpanded rows, the prefill's ``input_ids`` the expanded ones. The tap therefore also
records the ``expand_size`` of ``generate()``'s ``_expand_inputs_for_generation`` and computes the layouts of the
unexpanded rows, each repeated ``expand_size`` times.

Encoder-decoder families (the adapter's ``is_encoder_decoder``: Florence-2, T5Gemma 2, Pix2Struct, ...) hold the
image in the encoder's input. ``generate()`` runs the encoder once (``_maybe_prepare_encoder_kwargs_for_generation``,
which the tap wraps to record the prompt: its main input, ``input_ids`` or ``flattened_patches`` or ``pixel_values``,
and the processor outputs) and passes ``encoder_outputs`` to every decoder step; the first decoder forward after that
is the prefill. Its layouts (the adapter's ``encoder_layout``) index the encoder's sequence, the image states come
from the adapter's ``image_key_states`` (the encoder's last hidden states), and `prompt_ids` are the decoder's start
tokens.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .architectures import ArchitectureAdapter, RowImageLayout
from .architectures.base import check_image_tokens


class HiddenStateTap:
    """Records what a FastRM head needs from each forward pass of a generating model.

    Args:
        model (`nn.Module`): the top-level model `generate()` runs on.
        adapter ([`ArchitectureAdapter`]): the model family's adapter.
        on_prefill (`Callable[[torch.Tensor], torch.Tensor]`): called once per prefill with the image tokens'
            last hidden states, shape `(batch, image_tokens, hidden)` (zero-padded); its return value (the head's
            keys) is kept as `image_features`.
        gather_text (`bool`, *optional*, defaults to `False`): also keep, at prefill and before `on_prefill` runs,
            the prompt's text tokens' last hidden states (`text_states`, `(batch, text_tokens, hidden)`, and
            `text_token_mask`; for a question-aware head, see `hf_fastrm.text_tokens.text_token_index`).

    Attributes after a prefill:
        layouts (`list[RowImageLayout]`), image_token_mask (`(batch, image_tokens)`), prompt_length (`int`),
        image_features (whatever `on_prefill` returned), last_state (`(batch, hidden)`, newest position).
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchitectureAdapter,
        on_prefill: Callable[[torch.Tensor], Any] | None = None,
        gather_text: bool = False,
    ) -> None:
        self.model = model
        self.gather_text = gather_text
        self.adapter = adapter
        self.on_prefill = on_prefill
        self._handles: list[RemovableHandle] = []
        self._wrapped_encoders: list[tuple[nn.Module, str, Callable, bool]] = []
        self._encoder_kwargs: dict[str, Any] = {}
        self._encoder_depth = 0
        self._expand_size: int | None = None
        self._encoder_prompt: dict[str, Any] | None = None
        self._read_image_states: Any = None
        self._embedded_prompt_ids: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self.layouts: list[RowImageLayout] | None = None
        self.image_token_mask: torch.Tensor | None = None
        self.prompt_length: int | None = None
        self.image_features: Any = None
        self.last_state: torch.Tensor | None = None
        self.text_states: torch.Tensor | None = None
        self.text_token_mask: torch.Tensor | None = None
        self._text_index: tuple[torch.Tensor, torch.Tensor] | None = None
        self.prefill_count = 0
        self.forward_count = 0
        self._prompt_ids: torch.Tensor | None = None
        self._gather_index: torch.Tensor | None = None
        self._pending_prefill = False
        self._shared_rows = 1
        self._prefill_kwargs: dict[str, Any] = {}
        self._prefill_image_states: torch.Tensor | None = None  # cross-attention families: what the prefill read
        self.prefill_error: ValueError | None = None

    @property
    def prompt_ids(self) -> torch.Tensor | None:
        """`(batch, prompt_length)`: the last prefill's `input_ids` (expanded for beams / return sequences)."""
        return self._prompt_ids

    # ------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> HiddenStateTap:
        if self.attached:
            return self
        norm = self.adapter.final_norm(self.model)
        source = self.adapter.image_state_source(self.model)
        try:
            generator = self.adapter.generation_module(self.model)
            self._handles.append(generator.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            if source is not None:
                module, self._read_image_states = source
                self._handles.append(module.register_forward_pre_hook(self._image_state_hook, with_kwargs=True))
            self._handles.append(norm.register_forward_hook(self._norm_hook))
            self._wrap_encoders()
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        while self._wrapped_encoders:
            owner, name, wrapper, had_own = self._wrapped_encoders.pop()
            if owner.__dict__.get(name) is wrapper:
                # restore the instance attribute that was there before (or none: the class method shows again)
                if had_own:
                    owner.__dict__[name] = wrapper.__wrapped__
                else:
                    del owner.__dict__[name]
            else:  # wrapped again on top of ours: leave the chain intact, only stop recording
                wrapper._fastrm_active = False
        self._encoder_kwargs = {}
        self._expand_size = None
        self._encoder_prompt = None
        self._embedded_prompt_ids = None

    _ENCODER_METHODS = ("get_image_features", "get_video_features")
    _EXPAND_METHOD = "_expand_inputs_for_generation"
    _PREPARE_METHOD = "prepare_inputs_for_generation"
    _ENCODE_PROMPT_METHOD = "_maybe_prepare_encoder_kwargs_for_generation"

    def _wrap_encoders(self) -> None:
        owners = {id(module): module for module in (self.model, getattr(self.model, "base_model", None)) if module}
        for owner in owners.values():
            for name in self._ENCODER_METHODS:
                self._wrap(owner, name, functools.partial(self._recording, needed=self._encoder_inputs(name)))
        generator = self.adapter.generation_module(self.model)
        self._wrap(generator, self._EXPAND_METHOD, self._recording_expansion)
        self._wrap(generator, self._PREPARE_METHOD, self._recording_embedded_prompt)
        if self.adapter.is_encoder_decoder:
            self._wrap(self.model, self._ENCODE_PROMPT_METHOD, self._recording_encoder_prompt)
        for name, make_wrapper in self.adapter.method_wrappers(self.model).items():
            self._wrap(self.model, name, make_wrapper)

    def _recording_encoder_prompt(self, original: Callable) -> Callable:
        """Wraps `generate()`'s encoder step of an encoder-decoder model to record the prompt it encodes (its main
        input, ``input_ids`` or ``flattened_patches``, and the processor outputs, before generate() drops them): the
        encoder's sequence, which the image positions of the layouts index."""

        @functools.wraps(original)
        def recording(*args: Any, **kwargs: Any) -> Any:
            if recording._fastrm_active:
                inputs_tensor = kwargs.get("inputs_tensor", args[0] if args else None)
                model_kwargs = dict(kwargs.get("model_kwargs", args[1] if len(args) > 1 else {}) or {})
                input_name = kwargs.get("model_input_name", args[2] if len(args) > 2 else None)
                if inputs_tensor is not None:
                    model_kwargs[input_name or self.model.main_input_name] = inputs_tensor
                self._encoder_prompt = model_kwargs
            return original(*args, **kwargs)

        recording._fastrm_active = True
        return recording

    def _wrap(self, owner: nn.Module, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
        original = getattr(owner, name, None)
        if original is None or not callable(original):
            return
        had_own = name in owner.__dict__
        wrapper = make_wrapper(original)
        owner.__dict__[name] = wrapper
        self._wrapped_encoders.append((owner, name, wrapper, had_own))

    def _recording_expansion(self, original: Callable) -> Callable:
        """Wraps `generate()`'s `_expand_inputs_for_generation` to record its `expand_size` (num_beams or
        num_return_sequences): the factor by which the prefill's rows outnumber the encoded processor outputs'."""

        @functools.wraps(original)
        def recording(*args: Any, **kwargs: Any) -> Any:
            if recording._fastrm_active:
                expand_size = kwargs.get("expand_size", args[0] if args else 1)
                self._expand_size = int(expand_size) if isinstance(expand_size, int) else None
            return original(*args, **kwargs)

        recording._fastrm_active = True
        return recording

    def _recording_embedded_prompt(self, original: Callable) -> Callable:
        """Wraps `generate()`'s `prepare_inputs_for_generation`: when the first step feeds ``inputs_embeds`` (images
        already written into them, as BLIP-2's own generate() does) and no ``input_ids``, records the prompt's ids,
        `(rows, seq)`, which the step's forward does not receive but the layout needs."""

        @functools.wraps(original)
        def recording(*args: Any, **kwargs: Any) -> Any:
            model_inputs = original(*args, **kwargs)
            if recording._fastrm_active and isinstance(model_inputs, dict):
                input_ids = kwargs.get("input_ids", args[0] if args else None)
                embeds = model_inputs.get("inputs_embeds")
                if (
                    model_inputs.get("input_ids") is None
                    and isinstance(embeds, torch.Tensor)
                    and isinstance(input_ids, torch.Tensor)
                    and input_ids.shape[:2] == embeds.shape[:2]
                ):
                    self._embedded_prompt_ids = input_ids
            return model_inputs

        recording._fastrm_active = True
        return recording

    def _encoder_inputs(self, method_name: str) -> tuple[str, ...]:
        """The processor outputs an encoder call needs: the adapter's image (or video) inputs."""
        return tuple(self.adapter.video_inputs if "video" in method_name else self.adapter.image_inputs)

    def _recording(self, original: Callable, needed: tuple[str, ...] = ()) -> Callable:
        signature = inspect.signature(original)
        # companions of the pixels the encoder takes (Qwen's `image_grid_thw`): without them it fails on a None
        companions = [name for name in needed[1:] if name in signature.parameters]

        @functools.wraps(original)
        def recording(*args: Any, **kwargs: Any) -> Any:
            # only the outermost call: some families encode videos through get_image_features
            if recording._fastrm_active and not self._encoder_depth:
                try:
                    arguments = signature.bind_partial(*args, **kwargs).arguments
                except TypeError:
                    arguments = dict(kwargs)
                missing = [name for name in companions if arguments.get(name) is None]
                if missing and arguments.get(needed[0]) is not None:
                    raise ValueError(
                        f"generate() got `{needed[0]}` but no {', '.join(f'`{m}`' for m in missing)}, which the "
                        "model needs to read them. Pass everything the model's processor returned, e.g. "
                        "`model.generate(**processor(images=image, text=prompt, return_tensors='pt'), ...)`."
                    )
                extra = arguments.pop("kwargs", None)
                self._encoder_kwargs.update(arguments)
                if isinstance(extra, dict):
                    self._encoder_kwargs.update(extra)
            self._encoder_depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._encoder_depth -= 1

        recording._fastrm_active = True
        return recording

    def __enter__(self) -> HiddenStateTap:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            self._read_prefill(args, kwargs)
        except ValueError as error:
            # Kept for the processor's first step to raise: a call on this model that was not given the processor
            # (the hooks are still attached) must run as if they were not there.
            self.reset()
            self._encoder_kwargs = {}
            self.prefill_error = error

    def _read_prefill(self, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.adapter.is_encoder_decoder:
            self._read_encoder_decoder_prefill(kwargs)
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embedded_ids, self._embedded_prompt_ids = self._embedded_prompt_ids, None
        embeds = kwargs.get("inputs_embeds")
        from_embeddings = (
            input_ids is None
            and embedded_ids is not None
            and embeds is not None
            and embedded_ids.shape[:2] == embeds.shape[:2]
        )
        if from_embeddings:
            # generate() feeds the prompt as embeddings (the model's own generate() wrote the images into them):
            # the prompt's ids, recorded as this step's inputs were prepared, say where the image tokens are
            input_ids = embedded_ids
        if input_ids is None:
            if embeds is not None and self.layouts is None:
                raise ValueError(
                    "FastRM needs `input_ids` to find the image tokens, but generate() was called with "
                    "`inputs_embeds` only. Pass the processor's `input_ids` (and pixel values) instead."
                )
            return
        one_token = input_ids.shape[-1] <= 1 and not self.adapter.starts_with_one_token(kwargs)
        if one_token or self._continues_current_sequence(input_ids):
            return
        # what generate() handed to the image/video encoders before prefill, under this call's own kwargs
        encoder_kwargs, self._encoder_kwargs = self._encoder_kwargs, {}
        expand_size, self._expand_size = self._expand_size, None
        # a None the forward was handed means "not passed" (MiniCPM-V's and Inkling's prepare_inputs_for_generation
        # hand on `pixel_values=None` after generate() encoded and dropped them): it must not hide what the encoder got
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if not from_embeddings:  # embeddings already hold the images: nothing is left to check here
            self.adapter.check_required_inputs(self.model.config, input_ids, {**encoder_kwargs, **kwargs})
        layouts = self._layouts(input_ids, kwargs, encoder_kwargs, expand_size)
        expanded = expand_size is not None and expand_size > 1 and _is_expansion(input_ids, expand_size)
        self._start_prefill(layouts, input_ids, kwargs, shared_rows=expand_size if expanded else 1)
        if self.gather_text:
            from .text_tokens import text_token_index

            prefix = self.adapter.sequence_prefix(self.model.config, {**encoder_kwargs, **kwargs})
            self._text_index = text_token_index(self.prompt_length, layouts, kwargs.get("attention_mask"), prefix)

    def _start_prefill(
        self, layouts: list[RowImageLayout], prompt_ids: torch.Tensor, kwargs: dict[str, Any], shared_rows: int = 1
    ) -> None:
        """Resets the tap for a new prefill whose image states the norm hook gathers at the `layouts`' positions;
        `prompt_ids` `(rows, prompt_length)` are what the generated tokens follow in `generate()`'s sequences.
        `shared_rows` > 1: generate() repeated each prompt row that many times in place (beam search,
        num_return_sequences); the copies' prefill states are the same, so the keys are computed once per group and
        repeated (less memory at prefill)."""
        check_image_tokens(layouts, "or generate without relevancy")
        num_tokens = max(layout.num_image_tokens for layout in layouts)
        index = torch.zeros(len(layouts), num_tokens, dtype=torch.long)
        mask = torch.zeros(len(layouts), num_tokens, dtype=torch.bool)
        for row, layout in enumerate(layouts):
            index[row, : layout.num_image_tokens] = layout.image_positions
            mask[row, : layout.num_image_tokens] = True
        self.reset()
        self.layouts = layouts
        self.prompt_length = int(prompt_ids.shape[-1])
        self._prompt_ids = prompt_ids.detach()
        self._gather_index = index.to(prompt_ids.device)
        self.image_token_mask = mask.to(prompt_ids.device)
        self._prefill_kwargs = kwargs
        self._shared_rows = shared_rows
        self._pending_prefill = True

    def _read_encoder_decoder_prefill(self, kwargs: dict[str, Any]) -> None:
        """The first decoder forward after generate() encoded a prompt: layouts over the encoder's sequence."""
        prompt, self._encoder_prompt = self._encoder_prompt, None
        encoder_kwargs, self._encoder_kwargs = self._encoder_kwargs, {}
        expand_size, self._expand_size = self._expand_size, None
        if prompt is None or kwargs.get("encoder_outputs") is None:
            return  # a decoding step, or a call outside generate()
        if self.gather_text:
            raise ValueError(
                "A question-aware FastRM head reads the prompt's text tokens in the decoder's sequence; encoder-decoder "
                "models hold the prompt in the encoder, which that head does not support yet. Use a plain head."
            )
        decoder_ids = kwargs.get("decoder_input_ids")
        if decoder_ids is None:
            raise ValueError("FastRM found no `decoder_input_ids` in the encoder-decoder model's first decoding step.")
        layouts = self.adapter.encoder_layout(self.model.config, {**encoder_kwargs, **prompt})
        rows, prompts = int(decoder_ids.shape[0]), len(layouts)
        if rows % prompts or (expand_size is not None and rows != prompts * expand_size):
            raise ValueError(
                f"FastRM could not pair the {prompts} encoded prompts with the {rows} decoder rows generate() expanded "
                "them to. This is a limitation of hf_fastrm with this model or transformers version; please report it."
            )
        # generate() expands the encoder's outputs with repeat_interleave, each prompt's rows together
        layouts = [layout for layout in layouts for _ in range(rows // prompts)]
        self._start_prefill(layouts, decoder_ids, kwargs, shared_rows=rows // prompts)

    def _layouts(
        self, input_ids: torch.Tensor, kwargs: dict[str, Any], encoder_kwargs: dict[str, Any], expand_size: int | None
    ) -> list[RowImageLayout]:
        """The adapter's layouts for the prefill's `input_ids` `(rows, seq)`.

        When generate() encoded processor outputs (`encoder_kwargs`) and then repeated each row `expand_size` times,
        the layouts are those of the unexpanded rows (`input_ids[::expand_size]`, paired with what was encoded),
        each repeated `expand_size` times. `expand_size` is None when the tap did not see generate() expand.
        """
        rows = input_ids.shape[0]
        if encoder_kwargs and expand_size is not None and expand_size > 1 and _is_expansion(input_ids, expand_size):
            # the forward's own per-row tensors (attention_mask, token_type_ids, ...) were expanded with the rows;
            # multimodal position ids carry the rows in dim 1 and are not the processor's, so they are left out
            kept = {
                key: value[::expand_size]
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows
                else value
                for key, value in kwargs.items()
                if key != "position_ids"
            }
            layouts = self.adapter.image_layout(
                self.model.config, input_ids[::expand_size], {**encoder_kwargs, **kept}
            )
            return [layout for layout in layouts for _ in range(expand_size)]
        try:
            return self.adapter.image_layout(self.model.config, input_ids, {**encoder_kwargs, **kwargs})
        except ValueError as error:
            unfollowed = expand_size is not None and expand_size > 1
            if not encoder_kwargs or not (unfollowed or (expand_size is None and _looks_expanded(input_ids))):
                raise
            # The mismatch is ours, not the user's: generate() encoded the processor outputs of the unexpanded
            # batch and repeated its rows for beam search / num_return_sequences in a way the tap did not follow.
            raise ValueError(
                f"FastRM could not pair the image inputs generate() encoded with the {rows} rows it expanded them "
                "to for beam search or num_return_sequences. This is a limitation of hf_fastrm with this model or "
                f"transformers version, not a problem with your inputs ({error}). Please report it; until then "
                "generate with num_beams=1 and num_return_sequences=1."
            ) from error

    def _image_state_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Cross-attention families: records the image states the adapter reads from this call's inputs (prefill
        only; decoding steps reuse the cached cross-attention keys and carry none)."""
        if self._pending_prefill:
            states = self._read_image_states(args, kwargs)
            if states is not None:
                self._prefill_image_states = states.detach()

    def _prefill_source(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """`(rows, positions, hidden)` the layouts' image positions index: the last hidden states, or for
        cross-attention layouts the image states recorded at this prefill (None, with `prefill_error` set, when the
        prefill carried none or fewer than the layouts name)."""
        if not any(layout.cross_attention for layout in self.layouts):
            kwargs, self._prefill_kwargs = self._prefill_kwargs, {}
            return self.adapter.image_key_states(self.model, hidden, kwargs).detach()
        states, self._prefill_image_states = self._prefill_image_states, None
        needed = int(self._gather_index.max()) + 1 if self._gather_index.numel() else 0
        if states is None or states.shape[0] != hidden.shape[0] or states.shape[1] < needed:
            got = "none" if states is None else f"shape {tuple(states.shape)}"
            self.prefill_error = ValueError(
                f"The prefill's cross-attention image states ({got}) do not hold the {needed} per row that the image "
                f"layout of {type(self.model).__name__} names. Pass the pixel values and everything else the "
                "processor returned to generate() (not precomputed `cross_attention_states`)."
            )
            return None
        return states.to(hidden.device)

    def _norm_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        # encoder calls made inside this forward (a direct call with pixel values) belong to no later prefill
        self._encoder_kwargs = {}
        self._expand_size = None
        hidden = output[0] if isinstance(output, tuple) else output
        source = self._prefill_source(hidden) if self._pending_prefill else None
        if source is None:
            self._pending_prefill = False
        if self._pending_prefill:
            self._pending_prefill = False
            self.prefill_count += 1
            # one row of each group of in-place copies (all rows without beam search / num_return_sequences)
            share = self._shared_rows
            source = source[::share]
            index = self._gather_index[::share].to(source.device)
            image_states = torch.gather(source, 1, index.unsqueeze(-1).expand(-1, -1, source.shape[-1]))
            # in place: the gathered copy is ours, and a second (rows, image_tokens, hidden) copy would add to the
            # prefill's peak memory
            image_states.mul_(self.image_token_mask[::share].to(source.device).unsqueeze(-1))
            if self._text_index is not None:
                from .text_tokens import gather_positions

                text_index, text_mask = self._text_index
                self.text_states = gather_positions(hidden.detach()[::share], text_index[::share], text_mask[::share])
                self.text_token_mask = text_mask[::share].to(hidden.device)
                self._text_index = None
            features = self.on_prefill(image_states) if self.on_prefill is not None else image_states
            if share > 1:
                features = repeat_rows(features, share)
                if self.text_states is not None:
                    self.text_states = repeat_rows(self.text_states, share)
                    self.text_token_mask = repeat_rows(self.text_token_mask, share)
            self.image_features = features
            self._gather_index = None
        self.last_state = hidden[:, -1].detach()
        self.forward_count += 1

    def _continues_current_sequence(self, input_ids: torch.Tensor) -> bool:
        # Without a cache (use_cache=False) every step passes the whole sequence: that is a decoding step of the
        # current generation, not a new prefill.
        prompt = self._prompt_ids
        return (
            prompt is not None
            and input_ids.shape[0] == prompt.shape[0]
            and input_ids.shape[-1] == prompt.shape[-1] + self.forward_count
            and input_ids.shape[-1] > prompt.shape[-1]
            and torch.equal(input_ids[:, : prompt.shape[-1]].to(prompt.device), prompt)
        )

    def take_last_state(self) -> torch.Tensor:
        """The newest position's last hidden state, `(batch, hidden)`; each forward pass gives one."""
        if self.last_state is None:
            raise RuntimeError(
                "The FastRM tap saw no forward pass of the model before this step. The processor works inside "
                "generate() of the model it was built with; assisted or speculative decoding is not supported."
            )
        state, self.last_state = self.last_state, None
        return state


def repeat_rows(value: Any, times: int) -> Any:
    """Each row of a tensor `(rows, ...)` (or of every tensor in a tuple / NamedTuple of them) repeated `times` times
    in place: `(rows * times, ...)`, as generate() expands its inputs."""
    if isinstance(value, torch.Tensor):
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, tuple):
        repeated = [repeat_rows(item, times) for item in value]
        return type(value)(*repeated) if hasattr(value, "_fields") else tuple(repeated)
    return value


def _is_expansion(input_ids: torch.Tensor, expand_size: int) -> bool:
    """Whether `input_ids` `(rows, seq)` is some batch with each row repeated `expand_size` times in place."""
    rows = input_ids.shape[0]
    if rows % expand_size:
        return False
    groups = input_ids.reshape(rows // expand_size, expand_size, -1)
    return bool((groups == groups[:, :1]).all())


def _looks_expanded(input_ids: torch.Tensor) -> bool:
    """Whether `input_ids` could be an expansion by generate() (each row repeated at least twice in place)."""
    rows = input_ids.shape[0]
    return any(_is_expansion(input_ids, size) for size in range(2, rows + 1) if rows % size == 0)
