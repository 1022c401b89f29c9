"""The registry of supported model families, extensible with [`register_architecture`]."""

from __future__ import annotations

from typing import Any

from transformers.utils import logging

from .base import ArchitectureAdapter

logger = logging.get_logger(__name__)

_ADAPTERS: dict[str, ArchitectureAdapter] = {}


def register_architecture(adapter: ArchitectureAdapter | type[ArchitectureAdapter], *, exist_ok: bool = False) -> None:
    """Adds a model family.

    Args:
        adapter: an [`ArchitectureAdapter`] (instance or class) whose `model_types` names the ``config.model_type``
            values it serves.
        exist_ok (`bool`, *optional*, defaults to `False`): replace an adapter already registered for one of
            those model types instead of refusing.

    Example:

    ```python
    >>> from hf_fastrm import ArchitectureAdapter, register_architecture
    >>> class MyVLMAdapter(ArchitectureAdapter):
    ...     model_types = ("my_vlm",)
    ...     def image_layout(self, config, input_ids, model_kwargs): ...
    >>> register_architecture(MyVLMAdapter)
    ```
    """
    if isinstance(adapter, type):
        adapter = adapter()
    if not adapter.model_types:
        raise ValueError(
            f"{type(adapter).__name__}.model_types is empty: name the config.model_type values it serves."
        )
    for model_type in adapter.model_types:
        if model_type in _ADAPTERS and not exist_ok:
            raise ValueError(
                f"An adapter for model type {model_type!r} is already registered ({type(_ADAPTERS[model_type]).__name__}); "
                "pass `exist_ok=True` to replace it."
            )
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter


def unregister_architecture(model_type: str) -> None:
    """Removes the adapter of `model_type` (mainly for tests)."""
    _ADAPTERS.pop(model_type, None)


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def registered_adapters() -> dict[str, ArchitectureAdapter]:
    return dict(_ADAPTERS)


def get_adapter(model_or_config: Any) -> ArchitectureAdapter:
    """The adapter for a model or config.

    An unregistered family whose config names image placeholder tokens (``image_token_id`` / ``image_token_index``)
    gets the generic [`PlaceholderAdapter`], with a warning (its layout is untested for that family); any other
    unsupported family gets an error listing the supported ones.
    """
    from .generic import PlaceholderAdapter, has_placeholder_tokens

    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type in _ADAPTERS:
        return _ADAPTERS[model_type]
    if has_placeholder_tokens(config):
        logger.warning_once(
            f"hf_fastrm has no tested adapter for model type {model_type!r}; using the generic placeholder-token "
            "adapter (image tokens from the config's image/video token ids, grids from the processor outputs where "
            "they say, else 1-D). Check the maps, and see docs/supported-models.md to register an adapter."
        )
        return PlaceholderAdapter()
    raise ValueError(
        f"Model type {model_type!r} is not supported by hf_fastrm. Supported: {', '.join(supported_model_types())}. "
        "To add a family, subclass `hf_fastrm.ArchitectureAdapter` (set `model_types` and implement `image_layout`) "
        "and call `hf_fastrm.register_architecture(YourAdapter)`; see docs/supported-models.md."
    )
