"""Families served by the generic [`PlaceholderAdapter`] alone: the suite's tiny models showed nothing else is needed.

Each entry registers one adapter instance under its model types, with the suite case that covers it
(tests/models/family_table.py builds every one from a table row).
"""

from __future__ import annotations

from .generic import PlaceholderAdapter

THW = "one (h/merge, w/merge) grid per image from `image_grid_thw`; video (t, h/merge, w/merge) from `video_grid_thw`"
SQUARE = "one square grid per image (token count confirmed by the vision config's image and patch size)"
NO_TEACHER = "no: hybrid decoder (Gated DeltaNet linear-attention layers have no attention map to record)"

PLACEHOLDER_FAMILIES: tuple[PlaceholderAdapter, ...] = (
    PlaceholderAdapter(
        ("cohere2_vision",),
        family="Cohere2 Vision (Command A Vision)",
        grid_description=SQUARE,
        tested_configs=("cohere2_vision: SigLIP tower 8 px / patch 2, pixel shuffle; 1 and 2 images a row",),
    ),
    PlaceholderAdapter(
        ("cosmos3_omni",),
        family="Cosmos 3 Omni",
        grid_description=THW,
        tested_configs=("cosmos3_omni: Qwen3-VL tower, image_grid_thw 1x4x4, 1x4x6, 1x6x4",),
    ),
    PlaceholderAdapter(
        ("deepseek_vl",),
        family="DeepSeek-VL",
        grid_description=SQUARE,
        tested_configs=("deepseek_vl: SigLIP tower; 1 and 2 images a row",),
    ),
    PlaceholderAdapter(
        ("exaone4_5",),
        family="EXAONE 4.5",
        grid_description=THW,
        tested_configs=("exaone4_5: merged patches, image_grid_thw 1x4x4, 1x4x6, 1x6x4",),
    ),
    PlaceholderAdapter(
        ("glm4v", "glm46v", "glm_ocr", "glmga"),
        family="GLM-4.1V / GLM-4.5V, GLM-4.6V, GLM-OCR",
        grid_description=THW + "; images only (video frames reuse the image token id and need `mm_token_type_ids`)",
        tested_configs=(
            "glm4v: merged patches by image_grid_thw (1x4x4, 1x4x6, 1x6x4), mm_token_type_ids",
            "glm46v: the same with Glm46VForConditionalGeneration",
            "glm_ocr: the same with GlmOcrForConditionalGeneration",
            "glmga: Glm46VForConditionalGeneration under the glmga type",
        ),
    ),
    PlaceholderAdapter(
        ("got_ocr2", "pp_chart2table"),
        family="GOT-OCR 2.0, PP-Chart2Table",
        grid_description=SQUARE,
        tested_configs=(
            "got_ocr2: SAM-style tower; at the tiny size one token an image (a 1x1 grid)",
            "pp_chart2table: the same model class with its own vision config",
        ),
    ),
    PlaceholderAdapter(
        ("hyperclovax_vision_v2",),
        family="HyperCLOVA X Vision v2",
        grid_description=THW,
        tested_configs=("hyperclovax_vision_v2: Qwen2.5-VL tower, image_grid_thw 1x4x4, 1x4x6, 1x6x4",),
    ),
    PlaceholderAdapter(
        ("ovis2",),
        family="Ovis2",
        grid_description=SQUARE,
        tested_configs=("ovis2: visual embedding table tower; 1 and 2 images a row",),
    ),
    PlaceholderAdapter(
        ("qianfan_ocr",),
        family="Qianfan-OCR",
        grid_description=SQUARE + "; one grid per tile (tile arrangement not in the forward's inputs)",
        tested_configs=("qianfan_ocr: InternVL-style tower, one tile an image",),
    ),
    PlaceholderAdapter(
        ("qwen3_5", "qwen3_5_moe"),
        family="Qwen3.5 (dense, MoE)",
        grid_description=THW,
        teacher_support=NO_TEACHER,
        tested_configs=(
            "qwen3_5: hybrid linear/full attention decoder; image_grid_thw 1x4x4, 1x4x6, 1x6x4",
            "qwen3_5_moe: the same with a 4-expert MoE decoder",
        ),
    ),
    PlaceholderAdapter(
        ("video_llava",),
        family="Video-LLaVA",
        grid_description=SQUARE + "; videos one 1-D grid each",
        tested_configs=("video_llava: CLIP image tower; 1 and 2 images a row",),
    ),
)
