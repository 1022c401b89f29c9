"""Relevancy maps that stream with the tokens: a transformers streamer handing out each token's map as it is chosen.

[`FastRMStreamer`] is a `transformers` `BaseStreamer`: pass it to `generate(streamer=...)` together with the
[`FastRMLogitsProcessor`] it listens to, and iterate over it from another thread (as with `TextIteratorStreamer`).
Each generated token comes out as a [`StreamedToken`]: its text piece, id, batch row, relevancy (flat over the row's
image tokens and on each image's patch grid) and confidence, while `generate()` is still running.

How the pairing works: at every decoding step the processor computes the map of the token about to be chosen (from
the newest last hidden state) and hands it to the streamer; `generate()` then chooses the token and calls
`streamer.put(token_ids)`. The streamer pairs them first in, first out, so the pairing also holds where transformers
streams tokens one step late (its deferred stop check on Apple GPUs).

Batches: unlike transformers' text streamers (batch 1 only), this one streams every row; each token carries its
`row`, and a row stops streaming after its end-of-sequence token (the padding transformers writes after it is not
streamed). Sampling and `num_return_sequences` work (each returned sequence is a row).

Beam search cannot stream: beams are reordered until the end, so a token chosen at step t may not belong to the
returned sequence; `generate()` refuses a streamer with ``num_beams > 1``. Run beam search without a streamer and
replay the finished result with [`stream_result`], which yields the same [`StreamedToken`]s for the returned beams.

Only maps computed inside generation can stream: the FastRM head (`STREAMING_METHODS`). The gradient teacher needs
the whole sequence and a backward pass; [`stream_result`] replays its result too.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from .architectures.base import RowImageLayout
from .confidence import map_confidence
from .processor import FastRMLogitsProcessor
from .results import eos_token_ids, special_token_ids

STREAMING_METHODS: tuple[str, ...] = ("fastrm",)
"""Relevancy methods whose maps exist while a token is generated (and so can stream)."""


@dataclass
class StreamedToken:
    """One generated token with its relevancy map, as it comes out of [`FastRMStreamer`].

    Attributes:
        row (`int`): the batch row (a returned sequence) it belongs to.
        index (`int`): its place in the row's answer (0 for the first generated token).
        token_id (`int`): the chosen token.
        text (`str`): its text piece, decoded incrementally so that word pieces keep their leading space (the
            pieces of a row join into the decoded answer); empty without a tokenizer.
        relevancy (`torch.FloatTensor` of shape `(image_tokens,)`): relevance in [0, 1] of each of the row's image
            tokens (in prompt order, all images), on the CPU.
        maps (`list[torch.FloatTensor]`): the same on each patch grid of the row, `(height, width)` each (NaN in cells
            no token covers), in the order of `grid_labels`.
        grid_labels (`list[str]`): what each grid shows (``"image 0"``, ...).
        confidence (`float`): 1 - normalised entropy of the map (see `hf_fastrm.confidence`); NaN without a map.
        special (`bool`): whether the token is one of the processor's special ids (eos, pad, bos).
        is_end (`bool`): whether it is an end-of-sequence token (the row's last streamed token).
        method (`str`): the relevancy method (``"fastrm"``).
    """

    row: int
    index: int
    token_id: int
    text: str
    relevancy: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)
    grid_labels: list[str] = field(default_factory=list)
    confidence: float = math.nan
    special: bool = False
    is_end: bool = False
    method: str = "fastrm"


def grid_maps(relevancy: torch.Tensor, layout: RowImageLayout) -> list[torch.Tensor]:
    """`relevancy` `(..., image_tokens)` of one row placed on each of its patch grids: per grid `(..., h, w)`, NaN
    where no token covers a cell."""
    maps = []
    for grid in layout.image_grids:
        grid = grid.to(relevancy.device)
        maps.append(relevancy[..., grid.clamp(min=0)].masked_fill(grid < 0, math.nan))
    return maps


class _RowDecoder:
    """Incremental decoding of one row (the same pieces as `hf_fastrm.viz.report.decode_tokens`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.previous = ""

    def piece(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(self.previous):
            piece = text[len(self.previous) :]
        else:  # a byte-level piece completed a character: fall back to the token alone
            piece = self.tokenizer.decode([token_id], skip_special_tokens=False)
        self.previous = text
        return piece


class FastRMStreamer(BaseStreamer):
    r"""Streams every generated token with its FastRM relevancy map and confidence while `generate()` runs.

    Pass it as `streamer=` together with the processor it listens to in `logits_processor=`, and read
    [`StreamedToken`]s by iterating over it (from another thread: `generate()` blocks), or give `on_token` to have
    each one handed to a function in the generating thread.

    Args:
        processor ([`FastRMLogitsProcessor`]):
            The processor passed to the same `generate()` call; the streamer registers itself with it.
        tokenizer (*optional*):
            Decodes each token's text piece (a processor's `tokenizer`; a processor with a `tokenizer` attribute is
            accepted). Without one `text` is empty.
        timeout (`float`, *optional*):
            Seconds iteration waits for the next token before raising `queue.Empty` (forever when `None`).
        on_token (`Callable[[StreamedToken], None]`, *optional*):
            Called with each token in the generating thread (instead of queueing it for iteration).
        skip_special_tokens (`bool`, *optional*, defaults to `False`):
            Leave special tokens (eos, pad, bos) out of the stream; they still end their row.
        eos_token_id (`int` or `list[int]`, *optional*):
            The ids that end a row; defaults to the model's generation config.

    Example (the shipped toy model, offline):

    ```python
    >>> from threading import Thread
    >>> from hf_fastrm import FastRMLogitsProcessor
    >>> from hf_fastrm.streaming import FastRMStreamer
    >>> with FastRMLogitsProcessor(model, head) as fastrm:
    ...     streamer = FastRMStreamer(fastrm, processor.tokenizer, timeout=60)
    ...     thread = streamer.run_in_thread(model.generate, **inputs, logits_processor=[fastrm], max_new_tokens=8)
    ...     for token in streamer:
    ...         print(token.row, repr(token.text), token.confidence, token.maps[0].shape)
    ...     thread.join()
    ```
    """

    _END = object()

    def __init__(
        self,
        processor: FastRMLogitsProcessor,
        tokenizer: Any = None,
        *,
        timeout: float | None = None,
        on_token: Callable[[StreamedToken], None] | None = None,
        skip_special_tokens: bool = False,
        eos_token_id: int | list[int] | None = None,
    ) -> None:
        if not isinstance(processor, FastRMLogitsProcessor):
            raise TypeError(
                f"`processor` must be the FastRMLogitsProcessor passed to the same generate() call, got "
                f"{type(processor).__name__}."
            )
        self.processor = processor
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.timeout = timeout
        self.on_token = on_token
        self.skip_special_tokens = skip_special_tokens
        # the same rule as the finished result (hf_fastrm.results)
        self.eos_token_ids = set(eos_token_ids(processor.model, eos_token_id))
        self.special_token_ids = set(special_token_ids(processor.model, eos_token_id, processor.special_token_ids))
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self._pending: deque[tuple[torch.Tensor, torch.Tensor, list[RowImageLayout]]] = deque()
        self._lock = threading.Lock()
        self._reset()
        processor.add_step_listener(self._on_step)

    def _reset(self) -> None:
        self._expect_prompt = True
        self._pending.clear()
        self._decoders: list[_RowDecoder] = []
        self._finished: list[bool] = []
        self._counts: list[int] = []

    def close(self) -> None:
        """Stops listening to the processor."""
        self.processor.remove_step_listener(self._on_step)

    # ------------------------------------------------------------------ processor side
    def _on_step(
        self,
        relevance: torch.Tensor,
        input_ids: torch.Tensor,
        image_token_mask: torch.Tensor,
        layouts: list[RowImageLayout],
    ) -> None:
        # One device-to-host copy per step; the streamer's remaining work runs on these CPU tensors.
        with self._lock:
            self._pending.append((relevance.detach().float().cpu(), image_token_mask.cpu(), layouts))

    # ------------------------------------------------------------------ BaseStreamer
    def put(self, value: torch.Tensor) -> None:
        """Called by `generate()`: first with the prompt `(rows, prompt_length)`, then with each step's chosen tokens
        `(rows,)`."""
        if self._expect_prompt:
            self._expect_prompt = False
            rows = value.shape[0] if value.dim() > 1 else 1
            self._decoders = [_RowDecoder(self.tokenizer) for _ in range(rows)]
            self._finished = [False] * rows
            self._counts = [0] * rows
            return
        with self._lock:
            if not self._pending:
                raise RuntimeError(
                    "FastRMStreamer got a token but no relevancy map for it: pass its processor to the same "
                    "generate() call (logits_processor=[streamer.processor]). Beam search and assisted decoding "
                    "cannot stream."
                )
            relevance, image_mask, layouts = self._pending.popleft()
        tokens = value.reshape(-1).tolist()
        if len(tokens) != relevance.shape[0] or len(tokens) != len(self._decoders):
            raise RuntimeError(
                f"FastRMStreamer got {len(tokens)} tokens for {relevance.shape[0]} maps and {len(self._decoders)} "
                "rows: beam search cannot stream (beams are reordered until the end); run it without a streamer "
                "and replay the result with hf_fastrm.streaming.stream_result."
            )
        confidence = map_confidence(relevance, image_mask)
        for row, token_id in enumerate(tokens):
            if self._finished[row]:
                continue
            is_end = token_id in self.eos_token_ids
            self._finished[row] = is_end
            special = token_id in self.special_token_ids
            text = self._decoders[row].piece(token_id)
            index = self._counts[row]
            self._counts[row] += 1
            if special and self.skip_special_tokens:
                continue
            count = layouts[row].num_image_tokens
            flat = relevance[row, :count]
            self._emit(
                StreamedToken(
                    row=row,
                    index=index,
                    token_id=token_id,
                    text=text,
                    relevancy=flat,
                    maps=grid_maps(flat, layouts[row]),
                    grid_labels=_labels(layouts[row]),
                    confidence=float(confidence[row]),
                    special=special,
                    is_end=is_end,
                )
            )

    def end(self) -> None:
        """Called by `generate()` when it is done: ends the iteration; the streamer can serve another call."""
        self._reset()
        self._emit(self._END)

    def _emit(self, item: Any) -> None:
        if item is self._END:
            self.queue.put(item)
        elif self.on_token is not None:
            self.on_token(item)
        else:
            self.queue.put(item)

    # ------------------------------------------------------------------ consumer side
    def __iter__(self) -> Iterator[StreamedToken]:
        return self

    def __next__(self) -> StreamedToken:
        item = self.queue.get(timeout=self.timeout)
        if item is self._END:
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            raise StopIteration
        return item

    def run_in_thread(self, generate: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        """Starts `generate(*args, streamer=self, **kwargs)` in a daemon thread and returns the thread.

        An exception raised by `generate()` ends the iteration and is raised again in the iterating thread (no
        waiting for a timeout); `generate()`'s return value is kept in `self.output`.
        """
        self.output = None
        self.error = None

        def target() -> None:
            try:
                self.output = generate(*args, streamer=self, **kwargs)
            except BaseException as error:  # handed to the consumer
                self.error = error
                self._reset()
                self.queue.put(self._END)

        thread = threading.Thread(target=target, name="fastrm-generate", daemon=True)
        thread.start()
        return thread


def _labels(layout: RowImageLayout) -> list[str]:
    return list(layout.grid_labels) or [f"image {index}" for index in range(len(layout.image_grids))]


def stream_result(
    result: Any,
    sequences: torch.Tensor | None = None,
    tokenizer: Any = None,
    *,
    prompt_length: int | None = None,
    special_token_ids: list[int] | None = None,
) -> Iterator[StreamedToken]:
    """Replays a finished result as [`StreamedToken`]s, row by row: for beam search (which cannot stream) and for
    methods computed after generation (the gradient teacher).

    Args:
        result: a [`FastRMResult`] or a `generate(..., return_relevancy=...)` output (then `sequences` defaults to
            its own).
        sequences (`torch.LongTensor` of shape `(rows, sequence_length)`, *optional*): the returned sequences.
        tokenizer (*optional*): decodes the text pieces.
        prompt_length (`int`, *optional*): defaults to ``sequences.shape[1] - new_tokens``.
        special_token_ids (`list[int]`, *optional*): ids flagged `special`.

    Yields:
        [`StreamedToken`] for every generated token of every row (up to its end of sequence), rows in order.
    """
    if sequences is None:
        sequences = getattr(result, "sequences", None)
    if sequences is None:
        raise ValueError(
            "`stream_result` needs the generated `sequences` (pass generate()'s output or its sequences)."
        )
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    relevancy, token_mask = result.relevancy.detach().float().cpu(), result.token_mask.cpu()
    confidence = result.confidence.detach().float().cpu()
    steps = relevancy.shape[1]
    start = sequences.shape[1] - steps if prompt_length is None else prompt_length
    special_ids = set(special_token_ids or getattr(tokenizer, "all_special_ids", None) or [])
    method = getattr(result, "method", None) or "fastrm"
    for row, layout in enumerate(result.image_layouts):
        decoder = _RowDecoder(tokenizer)
        ids = sequences[row, start : start + steps].tolist()
        count = layout.num_image_tokens
        for index in range(int(token_mask[row].sum())):
            flat = relevancy[row, index, :count]
            yield StreamedToken(
                row=row,
                index=index,
                token_id=ids[index],
                text=decoder.piece(ids[index]),
                relevancy=flat,
                maps=grid_maps(flat, layout),
                grid_labels=_labels(layout),
                confidence=float(confidence[row, index]),
                special=ids[index] in special_ids,
                is_end=index == int(token_mask[row].sum()) - 1 and ids[index] in special_ids,
                method=method,
            )


__all__ = ["STREAMING_METHODS", "FastRMStreamer", "StreamedToken", "grid_maps", "stream_result"]
