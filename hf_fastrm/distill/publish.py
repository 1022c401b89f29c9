"""`push_head`: publishes a trained head on the Hub with its model card."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers.utils import logging

from ..head import FastRMHead
from .train import TRAINING_INFO_NAME

logger = logging.get_logger(__name__)


def push_head(
    head: str | os.PathLike | FastRMHead,
    repo_id: str,
    *,
    corpus: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload FastRM head",
    create_pr: bool = False,
) -> str:
    """Uploads a head (config, safetensors, model card) to `repo_id` and returns the commit URL.

    The model card names the base model and its revision, the training corpus, the label threshold and the
    metrics of ``config.metrics``. Only those three files are uploaded (never checkpoints or training logs).

    Args:
        head: a folder written by [`train_head`] (or `save_pretrained`), or a loaded [`FastRMHead`].
        repo_id (`str`): ``"org/name"`` on the Hub.
        corpus (`str`, *optional*): the training corpus for the card; read from the folder's ``training_info.json``
            when omitted.
        private, token, revision, commit_message, create_pr: as in `huggingface_hub.HfApi.upload_folder`.
    """
    if "/" not in repo_id or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must look like 'org/name', got {repo_id!r}.")
    if not isinstance(head, FastRMHead):
        folder = os.fspath(head)
        head = FastRMHead.from_pretrained(folder)
        info_path = os.path.join(folder, TRAINING_INFO_NAME)
        if corpus is None and os.path.isfile(info_path):
            with open(info_path, encoding="utf-8") as handle:
                corpus = json.load(handle).get("corpus")
    if not head.config.base_model_name_or_path:
        logger.warning("The head's config names no base model: the model card will not link one.")
    if not head.config.metrics:
        logger.warning("The head's config holds no metrics: evaluate it (`hf-fastrm evaluate`) before publishing.")
    card_kwargs: dict[str, Any] = {"corpus": corpus}
    return head.push_to_hub(
        repo_id,
        commit_message=commit_message,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
        **card_kwargs,
    )
