"""`hf-fastrm demo`: an interactive web page (Gradio) where the answer streams with each token's relevancy map.

`hf_fastrm.demo.engine` holds the logic (no Gradio import); `hf_fastrm.demo.app` builds the page and needs the
``demo`` extra (``pip install "hf_fastrm[demo]"``).
"""

from .engine import DemoAnswer, DemoEngine, DemoInputError, read_image, render_viewer

__all__ = ["DemoAnswer", "DemoEngine", "DemoInputError", "read_image", "render_viewer"]
