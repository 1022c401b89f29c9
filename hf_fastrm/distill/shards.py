"""Training shards: what a FastRM head needs from the base model, written atomically and read lazily.

One shard is one safetensors file holding a few hundred examples, concatenated along the first axis:

=====================  ==========================  ==============================================================
tensor                 shape                        what
=====================  ==========================  ==============================================================
``image_states``       ``(sum N_i, H)``             last hidden states (after the final norm) of the image tokens
``token_states``       ``(sum T_i, H)``             last hidden states of the positions that chose the answer tokens
``teacher_maps``       ``(sum T_i * N_i,)``         the teacher's relevancy, row-major ``(T_i, N_i)`` per example
``token_mask``         ``(sum T_i,)``               True where the teacher map is usable (finite, not constant)
``answer_token_ids``   ``(sum T_i,)``               the generated tokens
``num_image_tokens``   ``(E,)``                     ``N_i``
``num_tokens``         ``(E,)``                     ``T_i``
``text_states``        ``(sum M_i, H)``             optional: last hidden states of the prompt's text tokens (what a
                                                    question-aware head reads; written by `distill` since it exists)
``num_text_tokens``    ``(E,)``                     ``M_i`` (with ``text_states``)
=====================  ==========================  ==============================================================

The safetensors header carries a JSON record (``fastrm_shard``) with the example ids, questions, answers and the
base model (id, revision, type, hidden size). A shard exists under its final name only once complete: it is
written under a temporary name and renamed (`hf_fastrm.utils.io`), so resuming a killed run only has to read the
headers of the complete shards to know which examples are done.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from ..utils.io import atomic_write_with

logger = logging.get_logger(__name__)

SHARD_FORMAT_VERSION = 1
SHARD_METADATA_KEY = "fastrm_shard"
SHARD_PATTERN = "shard-*.safetensors"
_SHARD_NAME_RE = re.compile(r"^shard-(\d{5})-(\d{6})\.safetensors$")
MODEL_FIELDS = ("model_name_or_path", "model_revision", "model_type", "hidden_size")
"""Metadata fields that must agree between all shards a head is trained or evaluated on."""


def shard_name(rank: int, index: int) -> str:
    """``shard-{rank:05d}-{index:06d}.safetensors``: ranks never collide, indices grow within a rank."""
    return f"shard-{rank:05d}-{index:06d}.safetensors"


@dataclass
class ShardExample:
    """One distilled example.

    Attributes:
        example_id (`str`): unique id of the corpus example.
        image_states (`torch.Tensor` of shape `(N, H)`): image tokens' last hidden states.
        token_states (`torch.Tensor` of shape `(T, H)`): answer tokens' last hidden states (the positions whose
            logits chose them).
        teacher_maps (`torch.Tensor` of shape `(T, N)`): the teacher's relevancy of each image token for each token.
        token_mask (`torch.BoolTensor` of shape `(T,)`): tokens whose teacher map is usable for training.
        answer_token_ids (`torch.LongTensor` of shape `(T,)`): the generated tokens.
        question (`str`), answer (`str`): the text, for inspection.
        text_states (`torch.Tensor` of shape `(M, H)`, *optional*): the prompt's text tokens' last hidden states
            (shards written before question-aware heads existed lack them).
    """

    example_id: str
    image_states: torch.Tensor
    token_states: torch.Tensor
    teacher_maps: torch.Tensor
    token_mask: torch.Tensor
    answer_token_ids: torch.Tensor
    question: str = ""
    answer: str = ""
    text_states: torch.Tensor | None = None

    def __post_init__(self) -> None:
        num_tokens, num_image_tokens = self.teacher_maps.shape
        if self.image_states.shape[0] != num_image_tokens or self.token_states.shape[0] != num_tokens:
            raise ValueError(
                f"Example {self.example_id!r}: teacher maps of shape {tuple(self.teacher_maps.shape)} do not match "
                f"{self.token_states.shape[0]} token states and {self.image_states.shape[0]} image states."
            )
        if self.token_mask.shape != (num_tokens,) or self.answer_token_ids.shape != (num_tokens,):
            raise ValueError(f"Example {self.example_id!r}: token_mask and answer_token_ids must have shape (T,).")


@dataclass
class ShardInfo:
    """Header of a complete shard (read without loading its tensors)."""

    path: str
    example_ids: list[str]
    metadata: dict[str, Any]
    num_image_tokens: list[int] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    num_text_tokens: list[int] | None = None
    """Per example, ``M_i``; None for a shard without text states."""

    @property
    def model(self) -> dict[str, Any]:
        return {key: self.metadata.get(key) for key in MODEL_FIELDS}


def write_shard(
    path: str | os.PathLike,
    examples: list[ShardExample],
    model_info: dict[str, Any],
    *,
    storage_dtype: torch.dtype = torch.bfloat16,
    extra_metadata: dict[str, Any] | None = None,
) -> None:
    """Writes `examples` to `path` atomically (temporary name, then rename).

    Args:
        path: the shard's final path.
        examples: what to write (at least one).
        model_info (`dict`): ``model_name_or_path``, ``model_revision``, ``model_type``, ``hidden_size``.
        storage_dtype (`torch.dtype`, *optional*, defaults to `torch.bfloat16`): dtype of the hidden states on disk;
            teacher maps are kept in float32.
        extra_metadata (`dict`, *optional*): more JSON-serialisable fields for the header.

    Raises:
        OSError: when the disk is full (or any other write error); nothing is left under `path` nor under a
            temporary name.
    """
    if not examples:
        raise ValueError("A shard needs at least one example.")
    missing = [key for key in MODEL_FIELDS if key not in model_info]
    if missing:
        raise ValueError(f"`model_info` lacks {missing}.")
    hidden_size = int(model_info["hidden_size"])
    for example in examples:
        if example.image_states.shape[-1] != hidden_size or example.token_states.shape[-1] != hidden_size:
            raise ValueError(
                f"Example {example.example_id!r} has hidden states of width {example.image_states.shape[-1]}, but the "
                f"model's hidden size is {hidden_size}."
            )
    with_text = [example.text_states is not None for example in examples]
    if any(with_text) and not all(with_text):
        raise ValueError("Either every example of a shard has `text_states` or none has.")
    tensors = {
        "image_states": torch.cat([e.image_states.detach().cpu() for e in examples]).to(storage_dtype).contiguous(),
        "token_states": torch.cat([e.token_states.detach().cpu() for e in examples]).to(storage_dtype).contiguous(),
        "teacher_maps": torch.cat([e.teacher_maps.detach().cpu().float().reshape(-1) for e in examples]).contiguous(),
        "token_mask": torch.cat([e.token_mask.detach().cpu().bool() for e in examples]).contiguous(),
        "answer_token_ids": torch.cat([e.answer_token_ids.detach().cpu().long() for e in examples]).contiguous(),
        "num_image_tokens": torch.tensor([e.image_states.shape[0] for e in examples], dtype=torch.long),
        "num_tokens": torch.tensor([e.token_states.shape[0] for e in examples], dtype=torch.long),
    }
    if all(with_text):
        tensors["text_states"] = torch.cat([e.text_states.detach().cpu() for e in examples]).to(storage_dtype)
        tensors["num_text_tokens"] = torch.tensor([e.text_states.shape[0] for e in examples], dtype=torch.long)
    record = {
        "version": SHARD_FORMAT_VERSION,
        **{key: model_info[key] for key in MODEL_FIELDS},
        "storage_dtype": str(storage_dtype).removeprefix("torch."),
        "example_ids": [e.example_id for e in examples],
        "questions": [e.question for e in examples],
        "answers": [e.answer for e in examples],
        **(extra_metadata or {}),
    }
    metadata = {"format": "pt", SHARD_METADATA_KEY: json.dumps(record)}
    path = os.fspath(path)
    try:
        atomic_write_with(path, lambda tmp_path: _save_and_sync(tensors, tmp_path, metadata))
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"No space left on the device while writing the shard {path!r} (nothing of it was kept). Free disk "
                "space (one example takes about (image tokens + answer tokens) x hidden size x 2 bytes) and run the "
                "same command again: it resumes after the last complete shard.",
            ) from error
        raise


def _save_and_sync(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    save_file(tensors, path, metadata=metadata)
    # On disk before the rename makes it a complete shard, so that a power cut cannot leave an empty one.
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def read_shard_info(path: str | os.PathLike) -> ShardInfo:
    """Reads a shard's header (example ids, model) without loading its hidden states."""
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            num_image_tokens = handle.get_tensor("num_image_tokens").tolist()
            num_tokens = handle.get_tensor("num_tokens").tolist()
            names = set(handle.keys())
            num_text_tokens = handle.get_tensor("num_text_tokens").tolist() if "num_text_tokens" in names else None
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"The shard {path!r} is unreadable ({error}). Shards are only ever renamed into place once complete, so "
            "this file was damaged afterwards: delete it and run `hf-fastrm distill` again to redo its examples."
        ) from error
    if SHARD_METADATA_KEY not in metadata:
        raise ValueError(f"{path!r} is not a FastRM training shard (no {SHARD_METADATA_KEY!r} record in its header).")
    record = json.loads(metadata[SHARD_METADATA_KEY])
    if record.get("version", 0) > SHARD_FORMAT_VERSION:
        raise ValueError(
            f"The shard {path!r} has format version {record['version']}, newer than this hf_fastrm understands "
            f"({SHARD_FORMAT_VERSION}). Upgrade hf_fastrm."
        )
    return ShardInfo(
        path=path,
        example_ids=list(record["example_ids"]),
        metadata=record,
        num_image_tokens=[int(n) for n in num_image_tokens],
        num_tokens=[int(n) for n in num_tokens],
        num_text_tokens=None if num_text_tokens is None else [int(n) for n in num_text_tokens],
    )


def list_shards(shard_dirs: str | os.PathLike | list[str | os.PathLike]) -> list[str]:
    """Complete shards in one or more folders, sorted by name (temporary files are never listed)."""
    dirs = [shard_dirs] if isinstance(shard_dirs, (str, os.PathLike)) else list(shard_dirs)
    paths: list[str] = []
    for directory in dirs:
        directory = os.fspath(directory)
        if os.path.isfile(directory) and directory.endswith(".safetensors"):
            paths.append(directory)
            continue
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"No shard folder {directory!r}. Write shards with `hf-fastrm distill` first.")
        paths.extend(sorted(glob.glob(os.path.join(directory, SHARD_PATTERN))))
    return paths


def check_same_model(infos: list[ShardInfo]) -> dict[str, Any]:
    """Returns the common model record of `infos`; refuses shards from different models, naming two of them."""
    if not infos:
        raise ValueError("No shards given.")
    reference = infos[0]
    for info in infos[1:]:
        differing = [key for key in MODEL_FIELDS if info.model[key] != reference.model[key]]
        if differing:
            details = ", ".join(f"{key} {reference.model[key]!r} vs {info.model[key]!r}" for key in differing)
            raise ValueError(
                f"The shards come from different models: {os.path.basename(reference.path)!r} and "
                f"{os.path.basename(info.path)!r} differ in {details}. A head is trained for one model: keep the "
                "shards of each model in their own folder."
            )
    return dict(reference.model)


class ShardDataset(torch.utils.data.Dataset):
    """All examples of a set of shards, read lazily (memory-mapped slices), one [`ShardExample`] per item.

    Args:
        shard_dirs: a folder of shards (or several, or shard files).
        example_ids (`list[str]`, *optional*): keep only these examples (for a train/validation split).

    Raises:
        ValueError: for shards of different models, duplicated example ids, or no shard at all.
    """

    def __init__(
        self,
        shard_dirs: str | os.PathLike | list[str | os.PathLike],
        example_ids: list[str] | set[str] | None = None,
    ) -> None:
        paths = list_shards(shard_dirs)
        if not paths:
            raise ValueError(
                f"No complete shard (shard-*.safetensors) in {shard_dirs!r}. Write shards with `hf-fastrm distill`."
            )
        self.infos = [read_shard_info(path) for path in paths]
        self.model_info = check_same_model(self.infos)
        keep = set(example_ids) if example_ids is not None else None
        # (shard number, example number in shard, image row offset, token row offset, N, T, text row offset, M)
        self._index: list[tuple[int, int, int, int, int, int, int, int]] = []
        self.example_ids: list[str] = []
        seen: dict[str, str] = {}
        for shard_number, info in enumerate(self.infos):
            image_offset = token_offset = text_offset = 0
            for position, example_id in enumerate(info.example_ids):
                if example_id in seen:
                    raise ValueError(
                        f"Example {example_id!r} appears in two shards, {seen[example_id]!r} and {info.path!r}. "
                        "Remove one of the shards (did two distill runs write into the same folders?)."
                    )
                seen[example_id] = info.path
                num_image, num_tokens = info.num_image_tokens[position], info.num_tokens[position]
                num_text = info.num_text_tokens[position] if info.num_text_tokens is not None else -1
                if keep is None or example_id in keep:
                    self._index.append(
                        (
                            shard_number,
                            position,
                            image_offset,
                            token_offset,
                            num_image,
                            num_tokens,
                            text_offset,
                            num_text,
                        )
                    )
                    self.example_ids.append(example_id)
                image_offset += num_image
                token_offset += num_tokens
                text_offset += max(num_text, 0)
        self._map_offsets = [self._map_offsets_of(info) for info in self.infos]
        self._handles: OrderedDict[int, Any] = OrderedDict()

    @staticmethod
    def _map_offsets_of(info: ShardInfo) -> list[int]:
        offsets, total = [], 0
        for num_image, num_tokens in zip(info.num_image_tokens, info.num_tokens, strict=True):
            offsets.append(total)
            total += num_image * num_tokens
        return offsets

    @property
    def has_text_states(self) -> bool:
        """Whether every shard holds the prompt's text states (what a question-aware head trains on)."""
        return all(info.num_text_tokens is not None for info in self.infos)

    @property
    def all_example_ids(self) -> list[str]:
        """Every example id in the shards (before filtering by `example_ids`)."""
        return [example_id for info in self.infos for example_id in info.example_ids]

    def __len__(self) -> int:
        return len(self._index)

    def _handle(self, shard_number: int) -> Any:
        # A few open memory maps at a time; safe_open handles are not shared with DataLoader workers.
        if shard_number in self._handles:
            self._handles.move_to_end(shard_number)
            return self._handles[shard_number]
        handle = safe_open(self.infos[shard_number].path, framework="pt")
        self._handles[shard_number] = handle
        while len(self._handles) > 8:
            self._handles.popitem(last=False)
        return handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def __getitem__(self, item: int) -> ShardExample:
        shard_number, position, image_offset, token_offset, num_image, num_tokens, text_offset, num_text = self._index[
            item
        ]
        info = self.infos[shard_number]
        handle = self._handle(shard_number)
        map_offset = self._map_offsets[shard_number][position]
        return ShardExample(
            example_id=info.example_ids[position],
            image_states=handle.get_slice("image_states")[image_offset : image_offset + num_image],
            token_states=handle.get_slice("token_states")[token_offset : token_offset + num_tokens],
            teacher_maps=handle.get_slice("teacher_maps")[map_offset : map_offset + num_tokens * num_image].reshape(
                num_tokens, num_image
            ),
            token_mask=handle.get_slice("token_mask")[token_offset : token_offset + num_tokens],
            answer_token_ids=handle.get_slice("answer_token_ids")[token_offset : token_offset + num_tokens],
            question=info.metadata.get("questions", [""] * (position + 1))[position],
            answer=info.metadata.get("answers", [""] * (position + 1))[position],
            text_states=handle.get_slice("text_states")[text_offset : text_offset + num_text]
            if num_text >= 0
            else None,
        )


@dataclass
class ShardBatch:
    """A padded batch of examples.

    Attributes:
        image_states (`(B, N, H)`), image_token_mask (`(B, N)` bool), token_states (`(B, T, H)`),
        token_mask (`(B, T)` bool: real tokens with a usable teacher map), teacher_maps (`(B, T, N)`, NaN where
        padded), example_ids (`list[str]`), text_states (`(B, M, H)`, *optional*: the prompt's text tokens, when
        every example has them), text_token_mask (`(B, M)` bool, *optional*).
    """

    image_states: torch.Tensor
    image_token_mask: torch.Tensor
    token_states: torch.Tensor
    token_mask: torch.Tensor
    teacher_maps: torch.Tensor
    example_ids: list[str]
    text_states: torch.Tensor | None = None
    text_token_mask: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> ShardBatch:
        return ShardBatch(
            image_states=self.image_states.to(device),
            image_token_mask=self.image_token_mask.to(device),
            token_states=self.token_states.to(device),
            token_mask=self.token_mask.to(device),
            teacher_maps=self.teacher_maps.to(device),
            example_ids=self.example_ids,
            text_states=None if self.text_states is None else self.text_states.to(device),
            text_token_mask=None if self.text_token_mask is None else self.text_token_mask.to(device),
        )

    @property
    def valid_mask(self) -> torch.Tensor:
        """`(B, T, N)`: entries that count (usable token x real image token)."""
        return self.token_mask.unsqueeze(-1) & self.image_token_mask.unsqueeze(1)


def collate_examples(examples: list[ShardExample]) -> ShardBatch:
    """Pads examples with different numbers of image tokens and tokens into a [`ShardBatch`]."""
    batch_size = len(examples)
    hidden = examples[0].image_states.shape[-1]
    dtype = examples[0].image_states.dtype
    max_image = max(e.image_states.shape[0] for e in examples)
    max_tokens = max(e.token_states.shape[0] for e in examples)
    image_states = torch.zeros(batch_size, max_image, hidden, dtype=dtype)
    token_states = torch.zeros(batch_size, max_tokens, hidden, dtype=dtype)
    image_token_mask = torch.zeros(batch_size, max_image, dtype=torch.bool)
    token_mask = torch.zeros(batch_size, max_tokens, dtype=torch.bool)
    teacher_maps = torch.full((batch_size, max_tokens, max_image), float("nan"))
    for row, example in enumerate(examples):
        num_image, num_tokens = example.image_states.shape[0], example.token_states.shape[0]
        image_states[row, :num_image] = example.image_states
        token_states[row, :num_tokens] = example.token_states
        image_token_mask[row, :num_image] = True
        token_mask[row, :num_tokens] = example.token_mask
        teacher_maps[row, :num_tokens, :num_image] = example.teacher_maps
    text_states = text_token_mask = None
    if all(example.text_states is not None for example in examples):
        max_text = max(1, max(e.text_states.shape[0] for e in examples))
        text_states = torch.zeros(batch_size, max_text, hidden, dtype=dtype)
        text_token_mask = torch.zeros(batch_size, max_text, dtype=torch.bool)
        for row, example in enumerate(examples):
            text_states[row, : example.text_states.shape[0]] = example.text_states
            text_token_mask[row, : example.text_states.shape[0]] = True
    return ShardBatch(
        image_states=image_states,
        image_token_mask=image_token_mask,
        token_states=token_states,
        token_mask=token_mask,
        teacher_maps=teacher_maps,
        example_ids=[e.example_id for e in examples],
        text_states=text_states,
        text_token_mask=text_token_mask,
    )


def parse_shard_name(path: str) -> tuple[int, int] | None:
    """(rank, index) of a shard file name, or None for another file."""
    match = _SHARD_NAME_RE.match(os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else None


def split_example_ids(example_ids: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by example id: an id goes to validation when a hash of the seed and
    the id falls below `val_fraction`. At least one example goes each way when there are two or more.

    Returns:
        (train ids, validation ids), each in the order of `example_ids`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must lie in [0, 1), got {val_fraction!r}.")

    def key(example_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    keys = {example_id: key(example_id) for example_id in example_ids}
    val = {example_id for example_id, value in keys.items() if value < val_fraction}
    if val_fraction > 0 and len(example_ids) >= 2:
        if not val:
            val = {min(keys, key=keys.get)}
        if len(val) == len(example_ids):
            val.discard(max(keys, key=keys.get))
    return [i for i in example_ids if i not in val], [i for i in example_ids if i in val]
