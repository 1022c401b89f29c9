"""One explained answer ([`ExplanationReport`]) and its files: a PNG overlay per token, a JSON file, an HTML page."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging

from ..utils.io import atomic_write_text, atomic_write_with
from .html import render_html_report
from .overlay import OverlayStyle

logger = logging.get_logger(__name__)

JSON_FORMAT = "hf_fastrm.explanation"
JSON_FORMAT_VERSION = 1

HTML_NAME = "report.html"
JSON_NAME = "report.json"


@dataclass
class ReportPaths:
    """Where [`ExplanationReport.save`] wrote its files.

    Attributes:
        output_dir (`str`): the folder.
        html (`str`): the self-contained HTML report.
        json (`str`): the JSON report.
        overlays (`list[list[str]]`): per answer token, one PNG per image (the head's maps, or the teacher's when no
            head was used).
        teacher_overlays (`list[list[str]]`): the same for the teacher's maps, when the report holds them.
    """

    output_dir: str
    html: str
    json: str
    overlays: list[list[str]] = field(default_factory=list)
    teacher_overlays: list[list[str]] = field(default_factory=list)


@dataclass
class ExplanationReport:
    """One generated answer with its per-token relevancy maps and confidence, ready to be written out.

    Build one with [`explain`] (which runs the model) or [`ExplanationReport.from_outputs`] (from a
    `generate(..., return_relevancy=True)` output you already have); write it with [`ExplanationReport.save`].

    Attributes:
        prompt (`str`): the user's question (without the chat template).
        answer (`str`): the decoded answer, special tokens removed.
        token_ids (`list[int]`): the answer's generated tokens, up to and including the end-of-sequence token.
        tokens (`list[str]`): each token's text (decoded incrementally, so leading spaces are kept).
        special (`list[bool]`): whether each token is a special token (left out of the sequence confidence).
        confidence (`torch.Tensor` of shape `(tokens,)`): per-token confidence in [0, 1] (NaN: no map).
        sequence_confidence (`float`): the mean over the non-special tokens.
        maps (`list[torch.Tensor]`): per patch grid, a `(tokens, h, w)` tensor of relevance (NaN: no image token
            there). Most families have one grid per image; some have several (LLaVA-NeXT: the tiles and the base).
        grid_labels (`list[str]`): per grid, what it shows (``"image 0"``, ``"image 0 tiles"``, ...).
        grid_images (`list[int]`): per grid, the index of the image it lies over (-1 for a video's grid, which
            is kept in the JSON but not drawn).
        images (`list[PIL.Image.Image]`): per image, the region the model saw (after the processor's crop); empty for
            a report read back from JSON.
        method (`str`): the registered name of the method that made `maps` (``"fastrm"``: the head's maps,
            ``"gradient"``: the teacher's, ``"attention"``, ``"rollout"``, ``"lvlm-interpret"`` or a user's method).
        model_id (`str`, *optional*): the base model's Hub id or folder.
        head (`dict`, *optional*): the head's id and configuration summary.
        teacher_maps, teacher_confidence, teacher_sequence_confidence (*optional*): the teacher's gradient maps for
            the same tokens, shown side by side.
        metadata (`dict`): anything else worth keeping (ground truth of a synthetic scene, generation settings, ...).
        outputs (*optional*): the `generate()` output the report came from (not serialised).
        paths ([`ReportPaths`], *optional*): set by [`ExplanationReport.save`].
    """

    prompt: str
    answer: str
    token_ids: list[int]
    tokens: list[str]
    special: list[bool]
    confidence: torch.Tensor
    sequence_confidence: float
    maps: list[torch.Tensor]
    grid_labels: list[str] = field(default_factory=list)
    grid_images: list[int] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    method: str = "fastrm"
    model_id: str | None = None
    head: dict[str, Any] | None = None
    teacher_maps: list[torch.Tensor] | None = None
    teacher_confidence: torch.Tensor | None = None
    teacher_sequence_confidence: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    outputs: Any = field(default=None, repr=False)
    paths: ReportPaths | None = None

    def __post_init__(self) -> None:
        count = len(self.token_ids)
        if len(self.tokens) != count or len(self.special) != count or self.confidence.shape != (count,):
            raise ValueError(
                f"An ExplanationReport needs one text, special flag and confidence per token: {count} token ids, "
                f"{len(self.tokens)} texts, {len(self.special)} flags, confidence of shape {tuple(self.confidence.shape)}."
            )
        for name, maps in (("maps", self.maps), ("teacher_maps", self.teacher_maps or [])):
            for index, grid in enumerate(maps):
                if grid.dim() < 3 or grid.shape[0] != count:
                    raise ValueError(
                        f"`{name}[{index}]` must have shape (tokens={count}, h, w), got {tuple(grid.shape)}."
                    )
        if self.teacher_maps is not None and len(self.teacher_maps) != len(self.maps):
            raise ValueError(f"{len(self.teacher_maps)} teacher maps for {len(self.maps)} grids.")
        if not self.grid_labels:
            self.grid_labels = [f"image {index}" for index in range(len(self.maps))]
        if not self.grid_images:
            self.grid_images = [_image_of_grid(label, index) for index, label in enumerate(self.grid_labels)]
        if len(self.grid_labels) != len(self.maps) or len(self.grid_images) != len(self.maps):
            raise ValueError(
                f"{len(self.maps)} maps but {len(self.grid_labels)} grid labels and {len(self.grid_images)} grid images."
            )
        if self.images and any(not -1 <= index < len(self.images) for index in self.grid_images):
            raise ValueError(
                f"Grids refer to images {self.grid_images} but the report holds {len(self.images)} images: give "
                "one image per image in the prompt."
            )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def _repr_html_(self) -> str:
        """Jupyter: the report inline, in the HTML report's look (click a token to see its map)."""
        from .notebook import report_html

        return report_html(self)

    def plot(self, **kwargs: Any) -> Any:
        """The token maps over the image with matplotlib (a `Figure`); see `hf_fastrm.viz.notebook.plot`."""
        from .notebook import plot

        return plot(self, **kwargs)

    @property
    def num_grids(self) -> int:
        return len(self.maps)

    @property
    def drawn_grids(self) -> list[int]:
        """Indices of the grids that lie over an image (those the PNGs and the HTML page show)."""
        return [index for index, image in enumerate(self.grid_images) if image >= 0]

    @property
    def has_teacher(self) -> bool:
        return self.teacher_maps is not None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_outputs(
        cls,
        outputs: Any,
        tokenizer: Any,
        *,
        prompt: str,
        prompt_length: int,
        images: list[Image.Image] | None = None,
        batch_index: int = 0,
        teacher: Any = None,
        model_id: str | None = None,
        head: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ExplanationReport:
        """A report for one row of a `generate(..., return_relevancy=...)` output.

        Args:
            outputs: the output (a [`FastRMGenerateDecoderOnlyOutput`] or a `GenerateOutput` plus a [`FastRMResult`]
                with the same fields: anything with `sequences`, `relevancy_maps()`, `confidence`, `token_mask`).
            tokenizer: decodes the tokens (a processor's `tokenizer`).
            prompt (`str`): the question, as the user wrote it.
            prompt_length (`int`): the length of the prompt in `outputs.sequences` (``input_ids.shape[1]``).
            images (`list[PIL.Image.Image]`, *optional*): the images the maps refer to, as the model saw them.
            teacher ([`FastRMResult`], *optional*): the teacher's gradient maps for the same generation.
        """
        token_mask = outputs.token_mask[batch_index].cpu()
        count = int(token_mask.sum())
        steps = token_mask.shape[0]
        new_ids = outputs.sequences[batch_index, prompt_length : prompt_length + steps].cpu()
        token_ids = [int(i) for i in new_ids[:count]]
        special_mask = getattr(outputs, "special_token_mask", None)
        if special_mask is not None:  # the rule every method's result follows (hf_fastrm.results)
            special = [bool(flag) for flag in special_mask[batch_index, :count].tolist()]
        else:  # outputs assembled elsewhere: the tokenizer's special tokens
            special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
            special = [token in special_ids for token in token_ids]
        maps = [grid[:count].detach().float().cpu() for grid in outputs.relevancy_maps(batch_index)]
        layout = outputs.image_layouts[batch_index]
        labels = list(getattr(layout, "grid_labels", None) or [])
        num_images = len(images or [])
        grid_images = [
            _image_of_grid(label, index) if labels else (index if index < max(num_images, 1) else 0)
            for index, label in enumerate(labels or [""] * len(maps))
        ]
        confidence = outputs.confidence[batch_index, :count].detach().float().cpu()
        teacher_maps = teacher_confidence = teacher_sequence = None
        if teacher is not None:
            teacher_maps = [grid[:count].detach().float().cpu() for grid in teacher.relevancy_maps(batch_index)]
            teacher_confidence = teacher.confidence[batch_index, :count].detach().float().cpu()
            teacher_sequence = float(teacher.sequence_confidence[batch_index])
        return cls(
            prompt=prompt,
            answer=tokenizer.decode(token_ids, skip_special_tokens=True).strip(),
            token_ids=token_ids,
            tokens=decode_tokens(tokenizer, token_ids),
            special=special,
            confidence=confidence,
            sequence_confidence=float(outputs.sequence_confidence[batch_index]),
            maps=maps,
            grid_labels=labels,
            grid_images=grid_images,
            images=list(images or []),
            method=getattr(outputs, "method", None) or ("gradient" if head is None else "fastrm"),
            model_id=model_id,
            head=head,
            teacher_maps=teacher_maps,
            teacher_confidence=teacher_confidence,
            teacher_sequence_confidence=teacher_sequence,
            metadata=dict(metadata or {}),
            outputs=outputs,
        )

    # ------------------------------------------------------------------ writing
    def save(
        self,
        output_dir: str | os.PathLike,
        *,
        style: OverlayStyle | None = None,
        html_name: str = HTML_NAME,
        json_name: str = JSON_NAME,
        title: str | None = None,
    ) -> ReportPaths:
        """Writes the PNG overlays, `report.html` and `report.json` into `output_dir` (each write atomic).

        Returns:
            [`ReportPaths`], also kept in `self.paths`.
        """
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        style = style or OverlayStyle()
        overlays = save_token_overlays(self, output_dir, style=style) if self.images else []
        teacher_overlays = (
            save_token_overlays(self, output_dir, style=style, teacher=True)
            if self.images and self.has_teacher
            else []
        )
        paths = ReportPaths(
            output_dir=output_dir,
            html=os.path.join(output_dir, html_name),
            json=os.path.join(output_dir, json_name),
            overlays=overlays,
            teacher_overlays=teacher_overlays,
        )
        self.paths = paths
        write_json_report(self, paths.json)
        render_html_report(self, paths.html, style=style, title=title)
        return paths

    def to_json_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (NaN written as ``null``)."""
        from .. import __version__

        def files(paths: list[list[str]]) -> list[list[str]]:
            base = self.paths.output_dir if self.paths else None
            return [[os.path.relpath(p, base) if base else p for p in row] for row in paths]

        data: dict[str, Any] = {
            "format": JSON_FORMAT,
            "format_version": JSON_FORMAT_VERSION,
            "library_version": __version__,
            "model": self.model_id,
            "head": self.head,
            "method": self.method,
            "prompt": self.prompt,
            "answer": self.answer,
            "tokens": [
                {
                    "index": index,
                    "id": token_id,
                    "text": text,
                    "special": special,
                    "confidence": _json_float(confidence),
                }
                for index, (token_id, text, special, confidence) in enumerate(
                    zip(self.token_ids, self.tokens, self.special, self.confidence.tolist(), strict=True)
                )
            ],
            "sequence_confidence": _json_float(self.sequence_confidence),
            "images": [{"index": index, "size": list(image.size)} for index, image in enumerate(self.images)],
            "grids": [
                {"index": index, "label": label, "image": image, "shape": list(grid.shape[1:])}
                for index, (label, image, grid) in enumerate(
                    zip(self.grid_labels, self.grid_images, self.maps, strict=True)
                )
            ],
            "maps": [_json_nested(grid) for grid in self.maps],
            "teacher": None,
            "metadata": self.metadata,
            "files": None,
        }
        if self.has_teacher:
            data["teacher"] = {
                "method": "gradient",
                "confidence": [_json_float(value) for value in self.teacher_confidence.tolist()],
                "sequence_confidence": _json_float(self.teacher_sequence_confidence),
                "maps": [_json_nested(grid) for grid in self.teacher_maps],
            }
        if self.paths is not None:
            data["files"] = {
                "html": os.path.basename(self.paths.html),
                "overlays": files(self.paths.overlays),
                "teacher_overlays": files(self.paths.teacher_overlays),
            }
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ExplanationReport:
        """The report written by [`ExplanationReport.to_json_dict`] (without images and outputs)."""
        if data.get("format") != JSON_FORMAT:
            raise ValueError(
                f"Not a FastRM explanation report (format {data.get('format')!r}, expected {JSON_FORMAT!r})."
            )
        if int(data.get("format_version", 0)) > JSON_FORMAT_VERSION:
            raise ValueError(
                f"This report has format version {data['format_version']}, newer than this hf_fastrm reads "
                f"({JSON_FORMAT_VERSION}); upgrade hf_fastrm."
            )
        tokens = data["tokens"]
        teacher = data.get("teacher")
        grids = data["grids"]

        def maps(nested: list) -> list[torch.Tensor]:
            return [
                _tensor(values, shape=(len(tokens), *grid["shape"]))
                for values, grid in zip(nested, grids, strict=True)
            ]

        return cls(
            prompt=data["prompt"],
            answer=data["answer"],
            token_ids=[int(token["id"]) for token in tokens],
            tokens=[token["text"] for token in tokens],
            special=[bool(token["special"]) for token in tokens],
            confidence=_tensor([token["confidence"] for token in tokens]),
            sequence_confidence=_float(data["sequence_confidence"]),
            maps=maps(data["maps"]),
            grid_labels=[grid["label"] for grid in grids],
            grid_images=[int(grid["image"]) for grid in grids],
            method=data.get("method", "fastrm"),
            model_id=data.get("model"),
            head=data.get("head"),
            teacher_maps=maps(teacher["maps"]) if teacher else None,
            teacher_confidence=_tensor(teacher["confidence"]) if teacher else None,
            teacher_sequence_confidence=_float(teacher["sequence_confidence"]) if teacher else None,
            metadata=data.get("metadata") or {},
        )


def load_json_report(path: str | os.PathLike) -> ExplanationReport:
    """Reads a `report.json` written by [`write_json_report`] back into an [`ExplanationReport`] (no images)."""
    with open(path, encoding="utf-8") as handle:
        return ExplanationReport.from_json_dict(json.load(handle))


def write_json_report(report: ExplanationReport, path: str | os.PathLike) -> str:
    """Writes `report` as JSON: answer, tokens with ids, texts and confidence, maps per image as nested lists
    `(tokens, h, w)` (``null`` where NaN), grid shapes, sequence confidence, model and head ids. Atomic."""
    path = os.fspath(path)
    atomic_write_text(path, json.dumps(report.to_json_dict(), indent=1, allow_nan=False, ensure_ascii=False) + "\n")
    return path


def save_token_overlays(
    report: ExplanationReport,
    output_dir: str | os.PathLike,
    *,
    style: OverlayStyle | None = None,
    teacher: bool = False,
) -> list[list[str]]:
    """Writes one PNG per answer token (and per patch grid): ``token_03_red.png``, or ``token_03_red_image-1.png``
    when there are several grids (several images, or tiles and base); ``teacher_token_03_red.png`` for the
    teacher's maps. Atomic.

    Returns:
        Per token, the list of paths (one per grid that lies over an image).
    """
    if not report.images:
        raise ValueError("The report holds no images (read back from JSON?): overlays need the images.")
    if teacher and not report.has_teacher:
        raise ValueError("The report holds no teacher maps: build it with teacher=True.")
    style = style or OverlayStyle()
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    maps = report.teacher_maps if teacher else report.maps
    paths = []
    for index, text in enumerate(report.tokens):
        row = []
        for grid_index in report.drawn_grids:
            grids = maps[grid_index]
            image = report.images[report.grid_images[grid_index]]
            suffix = f"_{_slug(report.grid_labels[grid_index])}" if len(report.drawn_grids) > 1 else ""
            name = f"{'teacher_' if teacher else ''}token_{index:02d}_{_slug(text)}{suffix}.png"
            path = os.path.join(output_dir, name)
            write_image(style.draw(image, grids[index]), path)
            row.append(path)
        paths.append(row)
    return paths


def write_image(image: Image.Image, path: str | os.PathLike, image_format: str = "PNG") -> None:
    """Saves `image` to `path` atomically."""
    atomic_write_with(path, lambda tmp: image.save(tmp, format=image_format, optimize=True))


def decode_tokens(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """Each token's text, decoded incrementally (``decode(ids[:i+1])`` minus ``decode(ids[:i])``), so that word
    pieces keep their leading spaces, which decoding one token alone loses for SentencePiece vocabularies."""
    texts, previous = [], ""
    for index in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: index + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(previous):
            texts.append(text[len(previous) :])
        else:  # a byte-level piece completed a character: fall back to the token alone
            texts.append(tokenizer.decode([token_ids[index]], skip_special_tokens=False))
        previous = text
    return texts


def _image_of_grid(label: str, index: int) -> int:
    """The image a grid lies over, from its label (``"image 2 tiles"`` -> 2); -1 for a video's grid (no image to
    draw on); grid `index` when unlabelled."""
    if label.startswith("video"):
        return -1
    match = re.search(r"image (\d+)", label)
    return int(match.group(1)) if match else index


def _slug(text: str, limit: int = 24) -> str:
    slug = re.sub(r"[^0-9A-Za-z]+", "-", text).strip("-")[:limit]
    return slug or "tok"


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_nested(grid: torch.Tensor) -> list:
    """A float tensor as nested lists, NaN as None (float32 values survive a JSON round trip exactly)."""
    array = grid.detach().float().cpu().numpy().astype(np.float64)
    nested = array.tolist()

    def clean(value: Any) -> Any:
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value if math.isfinite(value) else None

    return clean(nested)


def _tensor(nested: Any, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    array = np.array(nested, dtype=np.float64)  # None -> NaN
    if shape is not None:
        array = array.reshape(shape)
    return torch.from_numpy(array).float()


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)
