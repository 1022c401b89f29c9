"""Families served by the generic [`PlaceholderAdapter`] alone: the suite's tiny models showed nothing else is needed.

Each entry registers one adapter instance under its model types, with the suite case that covers it
(tests/models/family_table.py builds every one from a table row).
"""

from __future__ import annotations

from .generic import PlaceholderAdapter

THW = "one (h/merge, w/merge) grid per image from `image_grid_thw`; video (t, h/merge, w/merge) from `video_grid_thw`"
SQUARE = "one square grid per image (token count confirmed by the vision config's image and patch size)"
NO_TEACHER = "no: hybrid decoder (Gated DeltaNet linear-attention layers have no attention map to record)"
NO_TEACHER_CONV = "no: hybrid decoder (its short-convolution layers have no attention map to record)"
SIZES = (
    "one (height/(patch*merge), width/(patch*merge)) grid per image from `image_sizes` (when the products add up to "
    "the image tokens); [IMG_BREAK]/[IMG_END] are not image tokens"
)

NAFLEX = (
    "one (rows/f, cols/f) grid per image from `spatial_shapes` (f = downsample_factor, pixel unshuffle, row-major)"
)

PLACEHOLDER_FAMILIES: tuple[PlaceholderAdapter, ...] = (
    PlaceholderAdapter(
        ("aria",),
        family="Aria",
        grid_description="one 1-D grid per image: a cross-attention projector with learned queries has no patch grid",
        patch_grids=False,
        tested_configs=("aria: Idefics3 tower, 4 learned queries an image, MoE decoder; 1 and 2 images a row",),
    ),
    PlaceholderAdapter(
        ("kimi_k25",),
        family="Kimi K2.5",
        grid_description=THW + " (merge from `merge_kernel_size`)",
        tested_configs=(
            "kimi_k25: MoonViT-style tower (patches as (channels, patch, patch)), MLA decoder; thw grids",
        ),
    ),
    PlaceholderAdapter(
        ("lfm2_vl",),
        family="LFM2-VL",
        grid_description=NAFLEX,
        tested_configs=("lfm2_vl: SigLIP2 NaFlex tower, 4x4, 4x6, 6x4 patches, downsample 2; LFM2 hybrid decoder",),
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
        ("deepseek_vl_hybrid",),
        family="DeepSeek-VL hybrid",
        grid_description=SQUARE,
        tested_configs=("deepseek_vl_hybrid: SigLIP low-res + SAM high-res towers; 1 and 2 images a row",),
    ),
    PlaceholderAdapter(
        ("granite_docling",),
        family="Granite-Docling",
        grid_description=SQUARE + "; one grid per tile (the tile arrangement is not among the forward's inputs)",
        tested_configs=("granite_docling: one tile an image (pixel shuffle leaves one token at the tiny size)",),
    ),
    PlaceholderAdapter(
        ("dots3_note",),
        family="dots3 note",
        grid_description=THW,
        tested_configs=("dots3_note: merged patches by image_grid_thw (1x4x4, 1x4x6, 1x6x4); MLA decoder",),
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
        ("glm4v_moe",),
        family="GLM-4.5V (MoE)",
        grid_description=THW + "; images only (video frames reuse the image token id)",
        tested_configs=("glm4v_moe: MoE decoder; merged patches by image_grid_thw (1x4x4, 1x4x6, 1x6x4)",),
    ),
    PlaceholderAdapter(
        ("paddleocr_vl",),
        family="PaddleOCR-VL",
        grid_description=THW,
        tested_configs=("paddleocr_vl: NaViT-style tower (patches as (channels, patch, patch)), image_grid_thw",),
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
        ("minimax_m3_vl",),
        family="MiniMax M3 VL",
        grid_description=THW,
        tested_configs=("minimax_m3_vl: merged patches by image_grid_thw; sparse MoE decoder",),
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
        ("cohere_compass",),
        family="Cohere Compass",
        grid_description=THW,
        tested_configs=("cohere_compass: merged patches by image_grid_thw (1x4x4, 1x4x6, 1x6x4)",),
    ),
    PlaceholderAdapter(
        ("idefics2",),
        family="Idefics2",
        grid_description="one 1-D grid per image: perceiver-resampled latents have no patch grid",
        patch_grids=False,
        tested_configs=("idefics2: perceiver resampler (64 latents an image); 1 and 2 images a row",),
    ),
    PlaceholderAdapter(
        ("lfm3_vl",),
        family="LFM3-VL",
        grid_description=THW,
        teacher_support=NO_TEACHER_CONV,
        tested_configs=(
            "lfm3_vl: merged patches by image_grid_thw; LFM3 hybrid decoder (final norm `embedding_norm`)",
        ),
    ),
    PlaceholderAdapter(
        ("lighton_ocr",),
        family="LightOnOCR",
        grid_description=SIZES,
        tested_configs=(
            "lighton_ocr: Pixtral tower 4 px / patch, merge 2; images 16x16, 16x24, 24x16 padded in one batch "
            "(image_sizes); 1 and 2 images a row",
        ),
    ),
    PlaceholderAdapter(
        ("mistral_large4",),
        family="Mistral Large 4",
        grid_description=SIZES,
        tested_configs=(
            "mistral_large4: Pixtral tower 4 px / patch, merge 2; images 16x16, 16x24, 24x16 padded in one batch "
            "(image_sizes); MLA decoder with indexer",
        ),
    ),
    PlaceholderAdapter(
        ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"),
        family="Qwen2.5-Omni / Qwen3-Omni thinkers",
        grid_description=THW,
        tested_configs=(
            "qwen2_5_omni_thinker: Qwen2.5-VL-style tower, image_grid_thw 1x4x4, 1x4x6, 1x6x4 (images only)",
            "qwen3_omni_moe_thinker: the same with the MoE thinker",
        ),
    ),
    PlaceholderAdapter(
        ("step3p7",),
        family="Step 3.7",
        grid_description=SQUARE,
        tested_configs=("step3p7: at the tiny size one token an image (a 1x1 grid)",),
    ),
    PlaceholderAdapter(
        ("video_llava",),
        family="Video-LLaVA",
        grid_description=SQUARE + "; videos one 1-D grid each",
        tested_configs=("video_llava: CLIP image tower; 1 and 2 images a row",),
    ),
    # --- qwenlike
    PlaceholderAdapter(
        ("cosmos3_edge",),
        family="Cosmos 3 Edge",
        grid_description=THW,
        tested_configs=("cosmos3_edge: packed SigLIP2 tower, merge 2; image_grid_thw 1x4x4, 1x4x6, 1x6x4",),
    ),
    PlaceholderAdapter(
        ("ernie4_5_vl_moe",),
        family="ERNIE 4.5 VL (MoE)",
        grid_description="one (h/merge, w/merge) grid per image from `image_grid_thw`; images only (its videos merge "
        "two frames a token, `temporal_merge_size`, which the generic video grid does not know: refused as a token "
        "count mismatch)",
        tested_configs=(
            "ernie4_5_vl_moe: image_grid_thw 1x4x4, 1x4x6, 1x6x4 (merge 2); text/vision MoE decoder, 3-D rotary "
            "sections [1, 1, 2]",
        ),
    ),
    PlaceholderAdapter(
        ("glm5_next",),
        family="GLM-5.3-Flash (glm5_next)",
        grid_description=THW,
        teacher_support="no: hybrid decoder (its KDA linear-attention layers have no attention map to record; its "
        "sparse MLA layers do go through AttentionInterface)",
        tested_configs=(
            "glm5_next: image_grid_thw 1x4x4, 1x4x6, 1x6x4 (merge 2); one KDA linear-attention layer and one "
            "DSA-indexed NoPE MLA layer, hyper-connection streams",
        ),
    ),
    # --- inkling
    PlaceholderAdapter(
        ("muse_glimmer", "muse_spark"),
        family="Muse Glimmer, Muse Spark",
        grid_description=THW + " (merge from `merge_size`)",
        tested_configs=(
            "muse_glimmer: flattened patches by image_grid_thw (1x4x4, 1x4x6, 1x6x4), pixel shuffle 2x2",
            "muse_spark: the same with MuseSparkForConditionalGeneration",
        ),
    ),
)
