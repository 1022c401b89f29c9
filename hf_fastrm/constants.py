"""File names and defaults shared across the package (one place, like PEFT's ``utils/constants.py``)."""

CONFIG_NAME = "fastrm_config.json"
"""Name of the head's JSON configuration inside a saved head folder or Hub repo."""

WEIGHTS_NAME = "fastrm_head.safetensors"
"""Name of the safetensors file holding only the head's weights."""

MODEL_CARD_NAME = "README.md"

LIBRARY_NAME = "hf_fastrm"

DEFAULT_HEAD_DIM = 256
"""Width ``k`` of the head's query/key projection (the paper's single attention head)."""

DEFAULT_LABEL_THRESHOLD = 0.3
"""Min-max-normalised teacher relevance at or above which a patch is labelled relevant (the paper's best)."""

HEAD_SUBFOLDER = "fastrm_head"
"""Sub-folder of a `FastRMWrapper.save_pretrained` folder holding the head (the base model's files sit above it)."""
