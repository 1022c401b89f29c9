"""Model families: one adapter per family, in a registry users can extend."""

from .base import ArchitectureAdapter, RowImageLayout
from .llava import LlavaAdapter
from .registry import (
    get_adapter,
    register_architecture,
    registered_adapters,
    supported_model_types,
    unregister_architecture,
)

register_architecture(LlavaAdapter)

__all__ = [
    "ArchitectureAdapter",
    "LlavaAdapter",
    "RowImageLayout",
    "get_adapter",
    "register_architecture",
    "registered_adapters",
    "supported_model_types",
    "unregister_architecture",
]
