"""hf_fastrm: FastRM relevancy maps and confidence for Hugging Face vision-language models, inside generate().

The public names are imported lazily (PEP 562), as transformers does for its own: ``import hf_fastrm`` loads
neither torch nor transformers, so ``hf-fastrm --help`` answers at once; ``from hf_fastrm import FastRMWrapper``
imports the module that defines the name on first use. Type checkers and IDEs see the real imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it. A new export goes here, in __all__ and in the TYPE_CHECKING block
# (tests/test_cli.py checks that the three agree).
_LAZY_IMPORTS: dict[str, str] = {
    "ArchitectureAdapter": "architectures",
    "RowImageLayout": "architectures",
    "get_adapter": "architectures",
    "register_architecture": "architectures",
    "supported_model_types": "architectures",
    "map_confidence": "confidence",
    "sequence_confidence": "confidence",
    "FastRMConfig": "config",
    "FastRMHead": "head",
    "FastRMGenerateBeamDecoderOnlyOutput": "outputs",
    "FastRMGenerateDecoderOnlyOutput": "outputs",
    "FastRMGenerateBeamEncoderDecoderOutput": "outputs",
    "FastRMGenerateEncoderDecoderOutput": "outputs",
    "FastRMResult": "outputs",
    "FastRMLogitsProcessor": "processor",
    "FastRMWrapper": "wrapper",
    "RelevancyMethod": "methods",
    "available_methods": "methods",
    "get_method": "methods",
    "register_method": "methods",
    "FastRMStreamer": "streaming",
}

__all__ = [
    "ArchitectureAdapter",
    "FastRMConfig",
    "FastRMGenerateBeamDecoderOnlyOutput",
    "FastRMGenerateBeamEncoderDecoderOutput",
    "FastRMGenerateDecoderOnlyOutput",
    "FastRMGenerateEncoderDecoderOutput",
    "FastRMHead",
    "FastRMLogitsProcessor",
    "FastRMResult",
    "FastRMStreamer",
    "FastRMWrapper",
    "RelevancyMethod",
    "RowImageLayout",
    "__version__",
    "available_methods",
    "get_adapter",
    "get_method",
    "map_confidence",
    "register_architecture",
    "register_method",
    "sequence_confidence",
    "supported_model_types",
]

if TYPE_CHECKING:
    from .architectures import (
        ArchitectureAdapter,
        RowImageLayout,
        get_adapter,
        register_architecture,
        supported_model_types,
    )
    from .confidence import map_confidence, sequence_confidence
    from .config import FastRMConfig
    from .head import FastRMHead
    from .methods import RelevancyMethod, available_methods, get_method, register_method
    from .outputs import (
        FastRMGenerateBeamDecoderOnlyOutput,
        FastRMGenerateBeamEncoderDecoderOutput,
        FastRMGenerateDecoderOnlyOutput,
        FastRMGenerateEncoderDecoderOutput,
        FastRMResult,
    )
    from .processor import FastRMLogitsProcessor
    from .streaming import FastRMStreamer
    from .wrapper import FastRMWrapper


def __getattr__(name: str) -> Any:
    module_name = _LAZY_IMPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
