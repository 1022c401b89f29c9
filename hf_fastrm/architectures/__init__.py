"""Model families: one adapter per family, in a registry users can extend."""

from .aya_vision import AyaVisionAdapter
from .base import ArchitectureAdapter, RowImageLayout
from .deepseek_ocr import DeepseekOcr2Adapter, UnlimitedOcrAdapter
from .gemma3 import Gemma3Adapter
from .gemma4 import Gemma4Adapter
from .gemma4_unified import Gemma4UnifiedAdapter
from .generic import PlaceholderAdapter
from .granite4_vision import Granite4VisionAdapter
from .hunyuan_vl import HunYuanVLAdapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llama4 import Llama4Adapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter, LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .mistral3 import Mistral3Adapter
from .molmo2 import Molmo2Adapter
from .paligemma import PaliGemmaAdapter
from .placeholder_families import PLACEHOLDER_FAMILIES
from .qwen_vl import Qwen2VLAdapter
from .registry import (
    get_adapter,
    register_architecture,
    registered_adapters,
    supported_model_types,
    unregister_architecture,
)
from .vipllava import VipLlavaAdapter

register_architecture(LlavaAdapter)
for _adapter in (
    LlavaNextAdapter,
    LlavaNextVideoAdapter,
    LlavaOnevisionAdapter,
    VipLlavaAdapter,
    Qwen2VLAdapter,
    Idefics3Adapter,
    Gemma3Adapter,
    PaliGemmaAdapter,
    Mistral3Adapter,
    InternVLAdapter,
    AyaVisionAdapter,
    Llama4Adapter,
):
    register_architecture(_adapter)
for _instance in (*PLACEHOLDER_FAMILIES, Gemma4Adapter(), HunYuanVLAdapter()):
    register_architecture(_instance)
# --- ocr: coverage helper's families
for _instance in (
    Gemma4UnifiedAdapter(),
    Granite4VisionAdapter(),
    DeepseekOcr2Adapter(),
    UnlimitedOcrAdapter(),
    Molmo2Adapter(),
):
    register_architecture(_instance)

__all__ = [
    "ArchitectureAdapter",
    "AyaVisionAdapter",
    "DeepseekOcr2Adapter",
    "Gemma3Adapter",
    "Gemma4Adapter",
    "Gemma4UnifiedAdapter",
    "Granite4VisionAdapter",
    "HunYuanVLAdapter",
    "Idefics3Adapter",
    "InternVLAdapter",
    "Llama4Adapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaNextVideoAdapter",
    "LlavaOnevisionAdapter",
    "Mistral3Adapter",
    "Molmo2Adapter",
    "PaliGemmaAdapter",
    "PlaceholderAdapter",
    "Qwen2VLAdapter",
    "RowImageLayout",
    "UnlimitedOcrAdapter",
    "VipLlavaAdapter",
    "get_adapter",
    "register_architecture",
    "registered_adapters",
    "supported_model_types",
    "unregister_architecture",
]
