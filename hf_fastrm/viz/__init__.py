"""Pictures and reports of relevancy maps: overlays, per-token PNGs, a self-contained HTML page, a JSON file."""

from .explain import build_prompt, explain, model_view
from .html import render_html_report
from .overlay import (
    COLORMAPS,
    DEFAULT_COLORMAP,
    apply_colormap,
    colormap_table,
    heatmap_rgba,
    normalize_map,
    overlay,
    upsample_grid,
)
from .report import (
    ExplanationReport,
    OverlayStyle,
    ReportPaths,
    load_json_report,
    save_token_overlays,
    write_json_report,
)

__all__ = [
    "COLORMAPS",
    "DEFAULT_COLORMAP",
    "ExplanationReport",
    "OverlayStyle",
    "ReportPaths",
    "apply_colormap",
    "build_prompt",
    "colormap_table",
    "explain",
    "heatmap_rgba",
    "load_json_report",
    "model_view",
    "normalize_map",
    "overlay",
    "render_html_report",
    "save_token_overlays",
    "upsample_grid",
    "write_json_report",
]
