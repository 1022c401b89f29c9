"""Model cards for FastRM heads (Hub metadata: library name, base model, metrics)."""

from __future__ import annotations

from typing import Any

from .config import FastRMConfig
from .constants import LIBRARY_NAME


def make_model_card(
    config: FastRMConfig,
    *,
    corpus: str | None = None,
    description: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> str:
    """Returns a README.md with YAML front matter the Hub reads (``library_name``, ``base_model``, ``tags``)."""
    lines = ["---", f"library_name: {LIBRARY_NAME}"]
    if config.base_model_name_or_path:
        lines.append(f"base_model: {config.base_model_name_or_path}")
    lines += ["tags:", "- fastrm", "- explainability", "- relevancy-maps", "- vision-language"]
    if corpus:
        lines += ["datasets:", f"- {corpus}"]
    for key, value in (extra_metadata or {}).items():
        lines.append(f"{key}: {value}")
    lines.append("---")
    base = config.base_model_name_or_path or "an unnamed base model"
    lines += [
        "",
        f"# FastRM head for {base}",
        "",
        description
        or (
            "A FastRM relevancy head (arXiv 2412.01487): a LayerNorm and one attention head on the base model's last "
            "hidden states, distilled from gradient relevancy maps. It gives per-token relevancy maps over the image "
            "patches and a confidence score inside `generate()` at almost no cost."
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
        "## Details",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| base model | {base} |",
        f"| base model revision | {config.base_model_revision or 'unspecified'} |",
        f"| model type | {config.model_type or 'unspecified'} |",
        f"| hidden size | {config.hidden_size} |",
        f"| head width k | {config.head_dim} |",
        f"| label threshold | {config.label_threshold} |",
        f"| training corpus | {corpus or 'unspecified'} |",
        f"| hf_fastrm version | {config.fastrm_version} |",
    ]
    if config.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [
            f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in sorted(config.metrics.items())
        ]
    return "\n".join(lines) + "\n"
