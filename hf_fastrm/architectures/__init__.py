"""Model families: one adapter per family, in a registry users can extend."""

from .apertus1p5 import Apertus1p5Adapter
from .aya_vision import AyaVisionAdapter
from .base import ArchitectureAdapter, RowImageLayout
from .cohere2_vision import Cohere2VisionAdapter
from .deepseek_ocr import DeepseekOcr2Adapter, UnlimitedOcrAdapter
from .encoder_decoder import ENCODER_DECODER_FAMILIES, EncoderDecoderAdapter, Florence2Adapter, T5Gemma2Adapter
from .fuyu import FuyuAdapter
from .gemma3 import Gemma3Adapter
from .gemma4 import Gemma4Adapter
from .gemma4_unified import Gemma4UnifiedAdapter
from .generic import PlaceholderAdapter
from .git import GitAdapter
from .granite4_vision import Granite4VisionAdapter
from .hunyuan_vl import HunYuanVLAdapter
from .hy_v4_vl import HYV4VLAdapter
from .idefics import IdeficsAdapter
from .idefics3 import Idefics3Adapter
from .inkling import Inkling2Adapter, InklingAdapter
from .internvl import InternVLAdapter
from .janus import JanusAdapter
from .kosmos2 import KOSMOS_FAMILIES, KosmosAdapter
from .llama4 import Llama4Adapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter, LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .minicpm import MiniCPMVAdapter
from .mistral3 import Mistral3Adapter
from .mllama import MllamaAdapter
from .molmo2 import Molmo2Adapter
from .nemotron_h_omni import NemotronHOmniAdapter
from .paligemma import PaliGemmaAdapter
from .placeholder_families import PLACEHOLDER_FAMILIES
from .qformer import QFormerAdapter
from .qwen4_exp import Qwen4ExpAdapter
from .qwen_vl import Qwen2VLAdapter
from .registry import (
    get_adapter,
    register_architecture,
    registered_adapters,
    supported_model_types,
    unregister_architecture,
)
from .timm_towers import TIMM_FAMILIES
from .video_llama_3 import VideoLlama3Adapter
from .vipllava import VipLlavaAdapter
from .vq import ChameleonAdapter, Emu3Adapter

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
    MllamaAdapter,
    IdeficsAdapter,
):
    register_architecture(_adapter)
for _instance in (
    *PLACEHOLDER_FAMILIES,
    Gemma4Adapter(),
    HunYuanVLAdapter(),
    Cohere2VisionAdapter(),
    *ENCODER_DECODER_FAMILIES,
):
    register_architecture(_instance)
# --- locality: loc3
register_architecture(VideoLlama3Adapter())
# --- qwenlike
for _instance in (HYV4VLAdapter(), Qwen4ExpAdapter()):
    register_architecture(_instance)
for _instance in (*TIMM_FAMILIES, NemotronHOmniAdapter()):
    register_architecture(_instance)
# --- vq
for _instance in (JanusAdapter(), ChameleonAdapter(), Emu3Adapter(), FuyuAdapter(), MiniCPMVAdapter()):
    register_architecture(_instance)
for _instance in (InklingAdapter(), Inkling2Adapter(), Apertus1p5Adapter()):  # --- inkling
    register_architecture(_instance)
# --- qformer: BLIP-2 kin (own generate() writes the images into inputs_embeds), Kosmos-2 (a position mask), GIT (a prepended image)
register_architecture(QFormerAdapter())
for _instance in (*KOSMOS_FAMILIES, GitAdapter()):
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
# --- blip: a captioner whose generate() hands the text decoder the image states
from .blip import BlipAdapter  # noqa: E402

register_architecture(BlipAdapter())

__all__ = [
    "Apertus1p5Adapter",
    "ArchitectureAdapter",
    "AyaVisionAdapter",
    "ChameleonAdapter",
    "Cohere2VisionAdapter",
    "DeepseekOcr2Adapter",
    "Emu3Adapter",
    "EncoderDecoderAdapter",
    "Florence2Adapter",
    "FuyuAdapter",
    "Gemma3Adapter",
    "Gemma4Adapter",
    "Gemma4UnifiedAdapter",
    "GitAdapter",
    "Granite4VisionAdapter",
    "HYV4VLAdapter",
    "HunYuanVLAdapter",
    "Idefics3Adapter",
    "IdeficsAdapter",
    "Inkling2Adapter",
    "InklingAdapter",
    "InternVLAdapter",
    "JanusAdapter",
    "KosmosAdapter",
    "Llama4Adapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaNextVideoAdapter",
    "LlavaOnevisionAdapter",
    "MiniCPMVAdapter",
    "Mistral3Adapter",
    "MllamaAdapter",
    "Molmo2Adapter",
    "PaliGemmaAdapter",
    "PlaceholderAdapter",
    "QFormerAdapter",
    "Qwen2VLAdapter",
    "Qwen4ExpAdapter",
    "RowImageLayout",
    "T5Gemma2Adapter",
    "UnlimitedOcrAdapter",
    "VideoLlama3Adapter",
    "VipLlavaAdapter",
    "get_adapter",
    "register_architecture",
    "registered_adapters",
    "supported_model_types",
    "unregister_architecture",
]
