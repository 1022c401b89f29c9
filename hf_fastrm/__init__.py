"""hf_fastrm: FastRM relevancy maps and confidence for Hugging Face vision-language models, inside generate()."""

__version__ = "0.1.0"

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
from .outputs import (
    FastRMGenerateBeamDecoderOnlyOutput,
    FastRMGenerateDecoderOnlyOutput,
    FastRMResult,
)
from .processor import FastRMLogitsProcessor
from .wrapper import FastRMWrapper

__all__ = [
    "ArchitectureAdapter",
    "FastRMConfig",
    "FastRMGenerateBeamDecoderOnlyOutput",
    "FastRMGenerateDecoderOnlyOutput",
    "FastRMHead",
    "FastRMLogitsProcessor",
    "FastRMResult",
    "FastRMWrapper",
    "RowImageLayout",
    "__version__",
    "get_adapter",
    "map_confidence",
    "register_architecture",
    "sequence_confidence",
    "supported_model_types",
]
