"""The FastRM head: a LayerNorm and one attention head from a generated token to the image tokens.

FastRM (Stan et al., "FastRM: An efficient and automatic explainability framework for multimodal generative
models", arXiv 2412.01487) distils gradient relevancy maps into this tiny module on the base model's last hidden
states::

    x = LayerNorm(h);  q = W_q x_token;  K_i = W_k x_image_i
    logit_i = q . K_i / sqrt(k) + b;  relevance_i = sigmoid(logit_i)

Keys depend only on the image tokens, so generation computes them once at prefill ([`FastRMHead.image_keys`]) and
each step costs one ``hidden x k`` projection and one ``k x N`` product ([`FastRMHead.relevance_from_keys`]).

**Question-aware head** (``FastRMConfig(head_type="question_aware")``; outside the paper's design): the query also
reads the last hidden states of the prompt's text tokens (the question and the template around it, already
computed at prefill), through one more single-head attention whose keys and values are computed once at prefill::

    c_j = W_c x_text_j;  v_j = W_v x_text_j;  a = softmax_j(q . c_j / sqrt(k))
    q' = q + sum_j a_j v_j;  logit_i = q' . K_i / sqrt(k) + b

Per step that adds one ``k x M`` and one ``M x k`` product for ``M`` text tokens (a few dozen): a few keys more.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, NamedTuple

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


class QuestionAwareKeys(NamedTuple):
    """What a question-aware head computes once at prefill (all on the head's device and dtype).

    Attributes:
        image_keys (`(batch, image_tokens, k)`), text_keys (`(batch, text_tokens, k)`),
        text_values (`(batch, text_tokens, k)`), text_token_mask (`(batch, text_tokens)` bool: real text tokens).
    """

    image_keys: torch.Tensor
    text_keys: torch.Tensor
    text_values: torch.Tensor
    text_token_mask: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """The image keys' shape (so callers that check ``keys.shape[0]`` work for both kinds of head)."""
        return self.image_keys.shape


class FastRMHead(nn.Module):
    """Predicts, for a generated token, the relevance of every image token from last hidden states.

    Args:
        config ([`FastRMConfig`]): the head's configuration (hidden size of the base model, width ``k``, ...).
            ``config.head_type == "question_aware"`` adds the question attention described in the module docstring;
            such a head needs `text_states` (the prompt's text tokens' last hidden states) wherever it runs.

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
        if config.reads_text:
            self.text_key = nn.Linear(config.hidden_size, config.head_dim)
            self.text_value = nn.Linear(config.hidden_size, config.head_dim)
            # starts as the paper's head: the question's contribution grows from zero during training
            nn.init.zeros_(self.text_value.weight)
            nn.init.zeros_(self.text_value.bias)

    @property
    def reads_text(self) -> bool:
        """Whether this head needs the prompt's text tokens' last hidden states (`head_type="question_aware"`)."""
        return self.config.reads_text

    # ------------------------------------------------------------------ computation
    def image_keys(self, image_states: torch.Tensor) -> torch.Tensor:
        """Keys of the image tokens: ``(..., image_tokens, hidden) -> (..., image_tokens, k)``."""
        return self.key(self.norm(image_states.to(self.norm.weight.dtype)))

    def prefill_keys(
        self,
        image_states: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | QuestionAwareKeys:
        """Everything computed once per prompt: the image keys, and for a question-aware head the text keys/values.

        Args:
            image_states (`(batch, image_tokens, hidden)`): the image tokens' last hidden states.
            text_states (`(batch, text_tokens, hidden)`, *optional*): the prompt's text tokens' last hidden states
                (required by a question-aware head, ignored by the paper's head).
            text_token_mask (`(batch, text_tokens)` bool, *optional*): real text tokens (all when not given).

        Returns:
            The image keys `(batch, image_tokens, k)` for the paper's head, a [`QuestionAwareKeys`] otherwise.
        """
        image_keys = self.image_keys(image_states)
        if not self.reads_text:
            return image_keys
        if text_states is None:
            raise ValueError(
                "This FastRM head is question-aware (head_type='question_aware'): it needs `text_states`, the prompt's "
                "text tokens' last hidden states. FastRMLogitsProcessor gathers them itself; shards written by "
                "`hf-fastrm distill` of this version hold them (older shards do not: distil again)."
            )
        normed = self.norm(text_states.to(self.norm.weight.dtype))
        if text_token_mask is None:
            text_token_mask = torch.ones(text_states.shape[:-1], dtype=torch.bool, device=text_states.device)
        return QuestionAwareKeys(
            image_keys, self.text_key(normed), self.text_value(normed), text_token_mask.to(normed.device).bool()
        )

    def logits_from_keys(
        self, token_states: torch.Tensor, image_keys: torch.Tensor | QuestionAwareKeys
    ) -> torch.Tensor:
        """Relevance logits from precomputed keys.

        Args:
            token_states (`torch.Tensor` of shape `(batch, hidden)` or `(batch, tokens, hidden)`):
                last hidden states of the positions whose logits chose the generated tokens.
            image_keys (`torch.Tensor` of shape `(batch, image_tokens, k)` or [`QuestionAwareKeys`]): from
                [`FastRMHead.image_keys`] or [`FastRMHead.prefill_keys`].

        Returns:
            `torch.Tensor` of shape `(batch, image_tokens)` or `(batch, tokens, image_tokens)`.
        """
        query = self.query(self.norm(token_states.to(self.norm.weight.dtype)))
        single = query.dim() == 2
        if single:
            query = query.unsqueeze(1)
        if isinstance(image_keys, QuestionAwareKeys):
            keys = image_keys
            scores = torch.einsum("btk,bmk->btm", query, keys.text_keys) * self.scale
            scores = scores.masked_fill(~keys.text_token_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
            query = query + torch.einsum("btm,bmk->btk", scores.softmax(dim=-1), keys.text_values)
            image_keys = keys.image_keys
        elif self.reads_text:
            raise ValueError(
                "This FastRM head is question-aware: build its keys with `prefill_keys(image_states, text_states)`."
            )
        logits = torch.einsum("btk,bnk->btn", query, image_keys) * self.scale + self.bias
        return logits.squeeze(1) if single else logits

    def relevance_from_keys(
        self, token_states: torch.Tensor, image_keys: torch.Tensor | QuestionAwareKeys
    ) -> torch.Tensor:
        """Sigmoid of [`FastRMHead.logits_from_keys`]: relevance in [0, 1], same shapes."""
        return torch.sigmoid(self.logits_from_keys(token_states, image_keys))

    def forward(
        self,
        token_states: torch.Tensor,
        image_states: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Relevance of each image token for each token.

        Args:
            token_states (`torch.Tensor` of shape `(batch, hidden)` or `(batch, tokens, hidden)`)
            image_states (`torch.Tensor` of shape `(batch, image_tokens, hidden)`)
            text_states (`torch.Tensor` of shape `(batch, text_tokens, hidden)`, *optional*): the prompt's text
                tokens' last hidden states; required by a question-aware head, ignored by the paper's head.
            text_token_mask (`torch.BoolTensor` of shape `(batch, text_tokens)`, *optional*): real text tokens.

        Returns:
            `torch.Tensor` of shape `(batch, image_tokens)` or `(batch, tokens, image_tokens)`, in [0, 1].
        """
        return torch.sigmoid(self.logits(token_states, image_states, text_states, text_token_mask))

    def logits(
        self,
        token_states: torch.Tensor,
        image_states: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pre-sigmoid logits (for `binary_cross_entropy_with_logits` in training); shapes as in `forward`."""
        return self.logits_from_keys(token_states, self.prefill_keys(image_states, text_states, text_token_mask))

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
        return (
            f"hidden_size={self.config.hidden_size}, head_dim={self.config.head_dim}, "
            f"head_type={self.config.head_type!r}"
        )


def _short_name(name_or_path: str) -> str:
    return os.path.basename(os.path.normpath(os.fspath(name_or_path))).lower()
