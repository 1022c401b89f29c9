"""The FastRM head: a LayerNorm and one attention head from a generated token to the image tokens.

FastRM (Stan et al., "FastRM: An efficient and automatic explainability framework for multimodal generative
models", arXiv 2412.01487) distils gradient relevancy maps into this tiny module on the base model's last hidden
states::

    x = LayerNorm(h);  q = W_q x_token;  K_i = W_k x_image_i
    logit_i = q . K_i / sqrt(k) + b;  relevance_i = sigmoid(logit_i)

Keys depend only on the image tokens, so generation computes them once at prefill ([`FastRMHead.image_keys`]) and
each step costs one ``hidden x k`` projection and one ``k x N`` product ([`FastRMHead.relevance_from_keys`]).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import logging

from .config import FastRMConfig
from .constants import CONFIG_NAME, LIBRARY_NAME, WEIGHTS_NAME
from .utils.hub import resolve_file
from .utils.io import atomic_write_with

logger = logging.get_logger(__name__)


class FastRMHead(nn.Module):
    """Predicts, for a generated token, the relevance of every image token from last hidden states.

    Args:
        config ([`FastRMConfig`]): the head's configuration (hidden size of the base model, width ``k``, ...).

    Example:

    ```python
    >>> import torch
    >>> from hf_fastrm import FastRMConfig, FastRMHead
    >>> head = FastRMHead(FastRMConfig(hidden_size=32, head_dim=8))
    >>> token_states, image_states = torch.randn(2, 5, 32), torch.randn(2, 16, 32)
    >>> head(token_states, image_states).shape  # (batch, tokens, image_tokens), values in [0, 1]
    torch.Size([2, 5, 16])
    ```
    """

    def __init__(self, config: FastRMConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.query = nn.Linear(config.hidden_size, config.head_dim)
        self.key = nn.Linear(config.hidden_size, config.head_dim)
        self.bias = nn.Parameter(torch.zeros(()))
        self.scale = 1.0 / math.sqrt(config.head_dim)

    # ------------------------------------------------------------------ computation
    def image_keys(self, image_states: torch.Tensor) -> torch.Tensor:
        """Keys of the image tokens: ``(..., image_tokens, hidden) -> (..., image_tokens, k)``."""
        return self.key(self.norm(image_states.to(self.norm.weight.dtype)))

    def logits_from_keys(self, token_states: torch.Tensor, image_keys: torch.Tensor) -> torch.Tensor:
        """Relevance logits from precomputed keys.

        Args:
            token_states (`torch.Tensor` of shape `(batch, hidden)` or `(batch, tokens, hidden)`):
                last hidden states of the positions whose logits chose the generated tokens.
            image_keys (`torch.Tensor` of shape `(batch, image_tokens, k)`): from [`FastRMHead.image_keys`].

        Returns:
            `torch.Tensor` of shape `(batch, image_tokens)` or `(batch, tokens, image_tokens)`.
        """
        query = self.query(self.norm(token_states.to(self.norm.weight.dtype)))
        if query.dim() == 2:
            return torch.einsum("bk,bnk->bn", query, image_keys) * self.scale + self.bias
        return torch.einsum("btk,bnk->btn", query, image_keys) * self.scale + self.bias

    def relevance_from_keys(self, token_states: torch.Tensor, image_keys: torch.Tensor) -> torch.Tensor:
        """Sigmoid of [`FastRMHead.logits_from_keys`]: relevance in [0, 1], same shapes."""
        return torch.sigmoid(self.logits_from_keys(token_states, image_keys))

    def forward(self, token_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """Relevance of each image token for each token.

        Args:
            token_states (`torch.Tensor` of shape `(batch, hidden)` or `(batch, tokens, hidden)`)
            image_states (`torch.Tensor` of shape `(batch, image_tokens, hidden)`)

        Returns:
            `torch.Tensor` of shape `(batch, image_tokens)` or `(batch, tokens, image_tokens)`, in [0, 1].
        """
        return self.relevance_from_keys(token_states, self.image_keys(image_states))

    def logits(self, token_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid logits (for `binary_cross_entropy_with_logits` in training); shapes as in `forward`."""
        return self.logits_from_keys(token_states, self.image_keys(image_states))

    # ------------------------------------------------------------------ checks
    def check_compatible(self, model_config: Any, *, check_base_model: bool = True) -> None:
        """Refuses a base model this head was not made for, naming both.

        Args:
            model_config: the base model's `PretrainedConfig`.
            check_base_model (`bool`, *optional*, defaults to `True`): also compare the model names (the last
                component of the Hub id or path), so that a head for one 7B model is not used on another model of
                the same width. Set to `False` for a renamed copy of the right model.
        """
        text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        model_hidden = getattr(text_config, "hidden_size", None)
        model_name = getattr(model_config, "_name_or_path", "") or "<unnamed model>"
        head_name = self.config.base_model_name_or_path or "<unknown base model>"
        if model_hidden is not None and model_hidden != self.config.hidden_size:
            raise ValueError(
                f"The FastRM head was made for {head_name!r} (hidden size {self.config.hidden_size}) but the model is "
                f"{model_name!r} (hidden size {model_hidden}). Load the head trained for this model, or train one with "
                "`hf-fastrm distill` and `hf-fastrm train`."
            )
        model_type = getattr(model_config, "model_type", None)
        if self.config.model_type and model_type and self.config.model_type != model_type:
            raise ValueError(
                f"The FastRM head was made for {head_name!r} (model type {self.config.model_type!r}) but the model is "
                f"{model_name!r} (model type {model_type!r}). Load the head trained for this model."
            )
        model_path = getattr(model_config, "_name_or_path", "")
        head_path = self.config.base_model_name_or_path
        if check_base_model and head_path and model_path and _short_name(head_path) != _short_name(model_path):
            raise ValueError(
                f"The FastRM head was made for {head_name!r} but the model is {model_name!r}. Load the head "
                "trained for this model; if the model is a renamed copy of the head's base model, pass "
                "`check_base_model=False`."
            )

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | os.PathLike, **card_kwargs: Any) -> None:
        """Writes ``fastrm_config.json``, ``fastrm_head.safetensors`` (only the head) and a model card (an existing
        ``README.md`` is updated, not overwritten; see `hf_fastrm.hub_card`).

        Every file is written to a temporary name and renamed, so a crash never leaves a half-written head.
        """
        os.makedirs(save_directory, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        metadata = {"format": "pt", "library": LIBRARY_NAME}
        atomic_write_with(
            os.path.join(save_directory, WEIGHTS_NAME), lambda tmp: save_file(state, tmp, metadata=metadata)
        )
        self.config.save_pretrained(save_directory)
        from .hub_card import write_model_card

        write_model_card(save_directory, self.config, **card_kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_head_name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> FastRMHead:
        """Loads a head from a local folder or a Hub repo id (through the HF cache; ``HF_HUB_OFFLINE=1`` works).

        Args:
            pretrained_head_name_or_path (`str`): a folder written by `save_pretrained`, or a Hub repo id.
            subfolder, revision, cache_dir, token, local_files_only, force_download: as in `hf_hub_download`.
            device, dtype (*optional*): where and in which dtype to put the head (default: CPU, float32).
        """
        hub_kwargs = {
            "subfolder": subfolder,
            "revision": revision,
            "cache_dir": cache_dir,
            "token": token,
            "local_files_only": local_files_only,
            "force_download": force_download,
        }
        config_path = resolve_file(pretrained_head_name_or_path, CONFIG_NAME, **hub_kwargs)
        weights_path = resolve_file(pretrained_head_name_or_path, WEIGHTS_NAME, **hub_kwargs)
        config = FastRMConfig.from_json_file(config_path)
        try:
            state = load_file(weights_path)
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"The FastRM weights file {weights_path!r} is corrupt or truncated ({error}). Delete it and download "
                "or save the head again."
            ) from error
        head = cls(config)
        expected = head.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"The FastRM weights file {weights_path!r} does not match its config {config_path!r}: missing "
                f"{missing}, unexpected {unexpected}, wrong shape {wrong_shape}."
            )
        head.load_state_dict(state)
        head.to(device=device, dtype=dtype)
        head.eval()
        return head

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload FastRM head",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **card_kwargs: Any,
    ) -> str:
        """Uploads the head (config, safetensors, model card) to `repo_id`; returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **card_kwargs)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )
        return str(commit)

    def extra_repr(self) -> str:
        return f"hidden_size={self.config.hidden_size}, head_dim={self.config.head_dim}"


def _short_name(name_or_path: str) -> str:
    return os.path.basename(os.path.normpath(os.fspath(name_or_path))).lower()
