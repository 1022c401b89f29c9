"""Model cards for FastRM heads, through `huggingface_hub.ModelCard` (Hub metadata: library name, base model, tags,
datasets, metrics).

A card already in the folder is updated, not overwritten: its metadata keeps every key it had (tags and datasets are
merged), its text is kept, and only the block this library writes (between the two ``hf_fastrm`` markers) is
refreshed, or appended when the card has none.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .config import FastRMConfig
from .constants import LIBRARY_NAME, MODEL_CARD_NAME
from .utils.io import atomic_write_text

TAGS = ["fastrm", "explainability", "relevancy-maps", "vision-language"]
_START = "<!-- hf_fastrm: details (updated by save_pretrained) -->"
_END = "<!-- hf_fastrm: end of details -->"


def card_metadata(
    config: FastRMConfig, corpus: str | None = None, extra_metadata: dict[str, Any] | None = None
) -> ModelCardData:
    """The card's metadata: ``library_name``, ``base_model``, ``tags``, ``datasets`` and any extra keys."""
    return ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=config.base_model_name_or_path or None,
        tags=list(TAGS),
        datasets=[corpus] if corpus else None,
        **(extra_metadata or {}),
    )


def _details(config: FastRMConfig, corpus: str | None) -> str:
    base = config.base_model_name_or_path or "an unnamed base model"
    rows = [
        ("base model", base),
        ("base model revision", config.base_model_revision or "unspecified"),
        ("model type", config.model_type or "unspecified"),
        ("hidden size", config.hidden_size),
        ("head width k", config.head_dim),
        ("label threshold", config.label_threshold),
        ("training corpus", corpus or "unspecified"),
        ("hf_fastrm version", config.fastrm_version),
    ]
    lines = [_START, "## Details", "", "| field | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if config.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [
            f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in sorted(config.metrics.items())
        ]
    return "\n".join([*lines, _END])


def make_model_card(
    config: FastRMConfig,
    *,
    corpus: str | None = None,
    description: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> ModelCard:
    """A new card: metadata, a description, how to use the head, and the details block."""
    base = config.base_model_name_or_path or "an unnamed base model"
    text = "\n".join(
        [
            f"# FastRM head for {base}",
            "",
            description
            or (
                "A FastRM relevancy head (arXiv 2412.01487): a LayerNorm and one attention head on the base model's "
                "last hidden states, distilled from gradient relevancy maps. It gives per-token relevancy maps over "
                "the image patches and a confidence score inside `generate()` at almost no cost."
            ),
            "",
            "## Use",
            "",
            "```python",
            "from hf_fastrm import FastRMWrapper",
            f'model = FastRMWrapper.from_pretrained("{base}", head="<this repo>")',
            "out = model.generate(**inputs, max_new_tokens=32, return_relevancy=True)",
            "out.relevancy_maps()  # per image, on its patch grid",
            "```",
            "",
            _details(config, corpus),
            "",
        ]
    )
    data = card_metadata(config, corpus, extra_metadata)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def update_model_card(
    card: ModelCard,
    config: FastRMConfig,
    *,
    corpus: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> ModelCard:
    """`card` with this head's metadata merged in and its details block refreshed (the rest of the text kept)."""
    new = card_metadata(config, corpus, extra_metadata)
    data = card.data
    data.library_name = new.library_name
    if new.base_model:
        data.base_model = new.base_model
    data.tags = list(dict.fromkeys([*(data.tags or []), *new.tags]))
    if new.datasets:
        data.datasets = list(dict.fromkeys([*(data.datasets or []), *new.datasets]))
    for key, value in (extra_metadata or {}).items():
        setattr(data, key, value)
    text = card.text
    details = _details(config, corpus)
    if _START in text and _END in text:
        text = text[: text.index(_START)] + details + text[text.index(_END) + len(_END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + details + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text if text.startswith(chr(10)) else chr(10) + text}")


def write_model_card(save_directory: str | os.PathLike, config: FastRMConfig, **card_kwargs: Any) -> str:
    """Writes ``README.md`` into `save_directory` (atomically): a new card, or the existing one updated."""
    path = os.path.join(save_directory, MODEL_CARD_NAME)
    if os.path.isfile(path):
        kwargs = {key: card_kwargs[key] for key in ("corpus", "extra_metadata") if key in card_kwargs}
        card = update_model_card(ModelCard.load(path), config, **kwargs)
    else:
        card = make_model_card(config, **card_kwargs)
    atomic_write_text(path, str(card))
    return path
