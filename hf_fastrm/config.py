"""Configuration of a FastRM head, saved as ``fastrm_config.json`` next to the head's weights."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers.utils import logging

from .constants import CONFIG_NAME, DEFAULT_HEAD_DIM, DEFAULT_LABEL_THRESHOLD
from .utils.io import atomic_write_text

logger = logging.get_logger(__name__)

HEAD_TYPES = ("fastrm", "question_aware")
"""Kinds of head: the paper's (`"fastrm"`, the default) and one that also reads the question (outside the paper)."""


@dataclass
class FastRMConfig:
    """Everything needed to rebuild a [`FastRMHead`] and to check it matches its base model.

    Args:
        hidden_size (`int`):
            Width of the base language model's last hidden states (``text_config.hidden_size``).
        head_dim (`int`, *optional*, defaults to 256):
            Width ``k`` of the query/key projections of the single attention head.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the head's LayerNorm.
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the model the head was distilled for.
        base_model_revision (`str`, *optional*):
            Revision (commit, tag or branch) of that model.
        model_type (`str`, *optional*):
            ``config.model_type`` of the base model (for example ``"llava"``).
        feature_layer (`int`, *optional*, defaults to -1):
            Which language-model hidden state the head reads; -1 is the final norm's output (what ``lm_head``
            reads), the only one supported by the generation taps.
        label_threshold (`float`, *optional*, defaults to 0.3):
            Threshold on min-max-normalised teacher maps used to make training labels.
        metrics (`dict`, *optional*):
            Evaluation metrics of the head (for example ``{"f1": 0.91}``), written to the model card.
        fastrm_version (`str`, *optional*):
            Version of hf_fastrm that wrote the config.
        head_type (`str`, *optional*, defaults to `"fastrm"`):
            `"fastrm"`: the paper's head (a norm and one attention head between the generated token and the image
            tokens). `"question_aware"`: outside the paper's design, the token's query also attends over the prompt's
            text tokens' last hidden states (the question) before scoring the image tokens; see
            [`FastRMHead`]. Configs written before this field existed load as `"fastrm"`.
    """

    hidden_size: int = field(metadata={"help": "Width of the base model's last hidden states."})
    head_dim: int = field(default=DEFAULT_HEAD_DIM, metadata={"help": "Width k of the query/key projections."})
    layer_norm_eps: float = field(default=1e-5, metadata={"help": "Epsilon of the head's LayerNorm."})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "Model the head was trained for."})
    base_model_revision: str | None = field(default=None, metadata={"help": "Revision of the base model."})
    model_type: str | None = field(default=None, metadata={"help": "config.model_type of the base model."})
    feature_layer: int = field(default=-1, metadata={"help": "Hidden state read by the head (-1: final norm)."})
    label_threshold: float = field(
        default=DEFAULT_LABEL_THRESHOLD, metadata={"help": "Threshold on normalised teacher maps for labels."}
    )
    metrics: dict[str, float] = field(default_factory=dict, metadata={"help": "Evaluation metrics of the head."})
    fastrm_version: str | None = field(default=None, metadata={"help": "hf_fastrm version that wrote the config."})
    head_type: str = field(
        default="fastrm",
        metadata={"help": "'fastrm' (the paper's head) or 'question_aware' (also reads the prompt's text tokens)."},
    )

    def __post_init__(self) -> None:
        _check_int("hidden_size", self.hidden_size, minimum=1)
        _check_int("head_dim", self.head_dim, minimum=1)
        _check_float("layer_norm_eps", self.layer_norm_eps)
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be a positive number, got {self.layer_norm_eps!r}.")
        for name in ("base_model_name_or_path", "base_model_revision", "model_type", "fastrm_version"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be a string or null, got {type(value).__name__} {value!r}.")
        _check_int("feature_layer", self.feature_layer)
        if self.feature_layer != -1:
            raise ValueError(
                f"`feature_layer={self.feature_layer}` is not supported: FastRM heads read the final norm's output "
                "(feature_layer=-1)."
            )
        _check_float("label_threshold", self.label_threshold)
        if not 0.0 <= self.label_threshold <= 1.0:
            raise ValueError(f"`label_threshold` must lie in [0, 1], got {self.label_threshold!r}.")
        if not isinstance(self.metrics, dict):
            raise ValueError(
                f"`metrics` must be a mapping of metric names to numbers (for example {{'f1': 0.91}}), got "
                f"{type(self.metrics).__name__} {self.metrics!r}."
            )
        for key, value in self.metrics.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"`metrics` must map names to numbers, got {key!r}: {value!r}.")
        # plain Python numbers (numpy scalars pass the checks but not json.dumps)
        self.hidden_size, self.head_dim, self.feature_layer = (
            int(self.hidden_size),
            int(self.head_dim),
            int(self.feature_layer),
        )
        self.layer_norm_eps, self.label_threshold = float(self.layer_norm_eps), float(self.label_threshold)
        self.metrics = {key: value if isinstance(value, int) else float(value) for key, value in self.metrics.items()}
        if not isinstance(self.head_type, str) or self.head_type not in HEAD_TYPES:
            raise ValueError(
                f"`head_type` must be one of {list(HEAD_TYPES)}, got {self.head_type!r} (a head written by a newer "
                "hf_fastrm? upgrade it)."
            )
        if self.fastrm_version is None:
            from . import __version__

            self.fastrm_version = __version__

    @property
    def reads_text(self) -> bool:
        """Whether the head also reads the prompt's text tokens (`head_type="question_aware"`)."""
        return self.head_type == "question_aware"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> FastRMConfig:
        """Builds a config, dropping (with a warning) keys written by a newer version of hf_fastrm."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            logger.warning(
                f"Ignoring unknown FastRM config keys {unknown} (written by a newer hf_fastrm?); "
                "upgrade hf_fastrm to use them."
            )
        return cls(**{key: value for key, value in config_dict.items() if key in known})

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Writes ``fastrm_config.json`` into `save_directory` atomically and returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> FastRMConfig:
        """Reads a config file; a corrupt or truncated file raises an error that names it."""
        try:
            with open(path, encoding="utf-8") as handle:
                config_dict = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"The FastRM config file {os.fspath(path)!r} is corrupt or truncated ({error}). "
                "Delete it and download or save the head again."
            ) from error
        if not isinstance(config_dict, dict):
            raise ValueError(f"The FastRM config file {os.fspath(path)!r} does not hold a JSON object.")
        try:
            return cls.from_dict(config_dict)
        except TypeError as error:
            raise ValueError(
                f"The FastRM config file {os.fspath(path)!r} is missing a required key: {error}"
            ) from error
        except ValueError as error:
            raise ValueError(f"The FastRM config file {os.fspath(path)!r} has an invalid field: {error}") from error


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    # bool is a subclass of int, but `head_dim: true` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an integer of at least {minimum}, got {value!r}.")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {type(value).__name__} {value!r}.")
