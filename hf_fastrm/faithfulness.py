"""Faithfulness of relevancy maps: deletion and insertion curves (Petsiuk et al. 2018, RISE), per generated token.

A relevancy map is *faithful* when the patches it ranks first are the ones the model uses. The test: with the
answer teacher-forced, remove image patches in the map's order and follow the probability the model gives the
generated token (**deletion**: a faithful map makes it fall fast, small area under the curve), or start from an
image with every patch removed and put them back in the map's order (**insertion**: a faithful map makes it rise
fast, large area). The function takes a relevancy tensor from any method, so FastRM, the gradient teacher,
attention baselines and a random floor are measured by the same code.

Two ways to remove a patch (``mode``):

* ``"embedding"``: the image token's input embedding to the language model (the projector's output, after the image
  features are merged into the sequence) is replaced by a baseline, by default the mean of the row's image-token
  embeddings (``baseline="mean"``; ``"zero"`` gives zeros). Only the language model runs again: fast, and exactly
  the tokens the map scores. Needs a family whose forward accepts ``inputs_embeds`` without pixel values and computes
  positions from the attention mask (LLaVA and most families; not multimodal-rotary ones such as Qwen2-VL).
* ``"pixel"``: the patch's pixels (in the processor's normalised pixel space) are set to the image's mean per channel
  and the image is encoded again. Needs the token-to-pixel mapping: one image per row on a plain square grid
  (LLaVA with CLIP: token ``i`` of the ``h x w`` grid covers pixels ``[r p, (r + 1) p) x [c p, (c + 1) p)`` with
  ``p = vision_config.patch_size``); other layouts are refused with a clear error.

For a token with ``N`` image tokens and ``steps`` steps, step ``k`` removes (deletion) or keeps (insertion) the
``round(k N / steps)`` patches the map ranks highest (ties broken by a seeded random order). Step 0 of deletion and
step ``steps`` of insertion are the unperturbed input; the other end is the image with every patch removed; these two
forwards are shared by every token of the row and every method. Each other step is one teacher-forced forward; all
are batched.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

MODES = ("embedding", "pixel")
CURVES = ("deletion", "insertion")


@dataclass
class FaithfulnessCurves:
    """Deletion and insertion curves of one relevancy method over a batch.

    Attributes:
        fractions (`torch.FloatTensor` of shape `(steps + 1,)`): share of the image tokens removed (deletion) or put
            back (insertion) at each point, 0 to 1.
        deletion (`torch.FloatTensor` of shape `(batch, new_tokens, steps + 1)`): the probability of each generated
            token at each point of its deletion curve; NaN where `token_mask` is False.
        insertion (`torch.FloatTensor` of shape `(batch, new_tokens, steps + 1)`): the same for insertion.
        base_probability (`torch.FloatTensor` of shape `(batch, new_tokens)`): the unperturbed probability.
        token_mask (`torch.BoolTensor` of shape `(batch, new_tokens)`): tokens with a map (the curves' real entries).
        mode (`str`): ``"embedding"`` or ``"pixel"``.
    """

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    base_probability: torch.Tensor
    token_mask: torch.Tensor
    mode: str

    def curve(self, name: str, relative: bool = True) -> torch.Tensor:
        """`(batch, new_tokens, steps + 1)`: `deletion` or `insertion`, divided by the unperturbed probability when
        `relative` (so tokens the model is more or less sure of weigh the same; may exceed 1 for insertion)."""
        if name not in CURVES:
            raise ValueError(f"`name` must be one of {CURVES}, got {name!r}.")
        values = getattr(self, name)
        return values / self.base_probability.clamp(min=1e-12).unsqueeze(-1) if relative else values

    def area(self, name: str, relative: bool = True) -> torch.Tensor:
        """Area under a curve over the fractions 0..1 (trapezoid rule), `(batch, new_tokens)`; NaN where masked.

        Lower is better for deletion, higher for insertion; a map that ranks at random gives about the same area
        for both.
        """
        return torch.trapezoid(self.curve(name, relative), self.fractions.to(self.deletion.dtype), dim=-1)


def _row_layouts(model: nn.Module, input_ids: torch.Tensor, extra: dict[str, Any]) -> list[Any]:
    from .architectures import get_adapter

    return get_adapter(model).image_layout(model.config, input_ids, extra)


def _ranking(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of `values` (`(N,)`) from the highest to the lowest, ties in a random order; NaN ranks last."""
    permutation = torch.randperm(values.numel(), generator=generator)
    shuffled = torch.nan_to_num(values.double()[permutation], nan=-math.inf)
    return permutation[torch.argsort(shuffled, descending=True, stable=True)]


@torch.no_grad()
def faithfulness_curves(
    model: nn.Module,
    inputs: dict[str, Any],
    sequences: torch.Tensor,
    relevancy: torch.Tensor,
    *,
    mode: str = "embedding",
    steps: int = 8,
    baseline: str = "mean",
    token_mask: torch.Tensor | None = None,
    batch_size: int = 128,
    seed: int = 0,
    show_progress: bool = False,
    cache: dict | None = None,
) -> FaithfulnessCurves:
    """Deletion and insertion curves of the generated tokens' probabilities for one relevancy method.

    Args:
        model (`PreTrainedModel`): the vision-language model that generated `sequences` (a registered family).
        inputs (`dict`): the processor's output the model generated from (``input_ids``, ``attention_mask``,
            ``pixel_values``, ...).
        sequences (`torch.LongTensor` of shape `(batch, prompt + new_tokens)`): generate()'s sequences (greedy or
            sampled; one row per prompt row).
        relevancy (`torch.FloatTensor` of shape `(batch, new_tokens, image_tokens)`): any method's map of each image
            token (in the order of the row's image positions) for each generated token; higher means more relevant.
            NaN entries (padding image slots, tokens after the end) are left out. ``new_tokens`` may be fewer than
            the generated tokens (the first ones are scored).
        mode (`str`, *optional*, defaults to ``"embedding"``): ``"embedding"`` or ``"pixel"`` (module docstring).
        steps (`int`, *optional*, defaults to 8): points of each curve besides the first.
        baseline (`str`, *optional*, defaults to ``"mean"``): embedding mode only: what a removed image token's
            embedding becomes, ``"mean"`` (the row's mean image-token embedding) or ``"zero"``.
        token_mask (`torch.BoolTensor` of shape `(batch, new_tokens)`, *optional*): tokens to score; by default
            those whose map has a finite entry.
        batch_size (`int`, *optional*, defaults to 128): perturbed sequences per forward pass.
        seed (`int`, *optional*, defaults to 0): seeds the order of tied relevancy values.
        cache (`dict`, *optional*): perturbed forwards already run for these same `inputs` and `sequences` (and
            `mode`, `baseline`), keyed by row and removed image tokens; pass one empty dict to the calls of several
            methods on one batch and a set of patches two maps (or two tokens) share is run once.

    Returns:
        [`FaithfulnessCurves`].
    """
    from .architectures import get_adapter
    from .teacher.gradient import generation_position_ids, prompt_inputs

    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    if baseline not in ("mean", "zero"):
        raise ValueError(f"`baseline` must be 'mean' or 'zero', got {baseline!r}.")
    if steps < 1:
        raise ValueError(f"`steps` must be at least 1, got {steps}.")
    if relevancy.dim() != 3 or relevancy.shape[0] != sequences.shape[0]:
        raise ValueError(
            f"`relevancy` must have shape (batch, new_tokens, image_tokens) with batch {sequences.shape[0]} (the rows "
            f"of `sequences`), got {tuple(relevancy.shape)}."
        )
    input_ids, prompt_mask, extra = prompt_inputs(model, inputs, sequences)
    batch, prompt_length = input_ids.shape
    num_new = min(relevancy.shape[1], sequences.shape[1] - prompt_length)
    relevancy = relevancy[:, :num_new].detach().float().cpu()
    layouts = _row_layouts(model, input_ids, extra)
    if mode == "embedding" and any(layout.cross_attention for layout in layouts):
        raise NotImplementedError(
            f"{type(model).__name__} takes its images through cross-attention: its image tokens are cross-attention "
            "states, not embeddings of the sequence, so the embedding mode cannot remove them (not supported yet)."
        )
    for row, layout in enumerate(layouts):
        if relevancy.shape[2] < layout.num_image_tokens:
            raise ValueError(
                f"Row {row} has {layout.num_image_tokens} image tokens but `relevancy` only {relevancy.shape[2]} "
                "entries per map."
            )
    if token_mask is None:
        token_mask = torch.isfinite(relevancy).any(dim=-1)
    token_mask = token_mask[:, :num_new].bool().cpu()
    device = input_ids.device

    # the teacher-forced sequence: prompt + answer; logits at P - 1 .. P + T - 2 choose the T new tokens
    forced_ids = sequences[:, : prompt_length + num_new - 1].to(device)
    forced_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, num_new - 1)], dim=1)
    targets = sequences[:, prompt_length : prompt_length + num_new].to(device)
    parameters = inspect.signature(model.forward).parameters
    common: dict[str, Any] = {"use_cache": False, "return_dict": True}
    if "logits_to_keep" in parameters:
        common["logits_to_keep"] = num_new
    if "position_ids" in parameters and not get_adapter(model).computes_own_positions(model):
        common["position_ids"] = generation_position_ids(forced_mask)
    elif mode == "embedding":
        raise NotImplementedError(
            f"{type(model).__name__} computes its own (multimodal rotary) positions from the input ids, so the "
            "embedding mode cannot replay it from `inputs_embeds`; use mode='pixel' where its grid is square."
        )

    def probabilities(rows: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """`(len(rows), num_new)`: each forced token's probability in the perturbed copies of `rows`."""
        kwargs = {
            key: value[rows] if isinstance(value, torch.Tensor) and value.shape[0] == batch else value
            for key, value in common.items()
        }
        outputs = model(attention_mask=forced_mask[rows], **model_inputs, **kwargs)
        logits = outputs.logits[:, -num_new:].float()
        return logits.log_softmax(-1).gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1).exp().cpu()

    image_positions = [layout.image_positions.to(device) for layout in layouts]
    if mode == "embedding":
        embeddings = _merged_embeddings(model, forced_ids, forced_mask, extra, common)  # (B, L, H)
        baselines = torch.stack(
            [
                embeddings[row, positions].mean(dim=0)
                if baseline == "mean"
                else embeddings.new_zeros(embeddings[0, 0].shape)
                for row, positions in enumerate(image_positions)
            ]
        )  # (B, H)

        def perturbed(rows: torch.Tensor, removed: list[torch.Tensor]) -> torch.Tensor:
            mask = torch.zeros(len(rows), forced_ids.shape[1], dtype=torch.bool, device=device)
            for index, (row, gone) in enumerate(zip(rows.tolist(), removed, strict=True)):
                mask[index, image_positions[row][gone.to(device)]] = True
            copies = embeddings[rows]
            return probabilities(
                rows, inputs_embeds=torch.where(mask.unsqueeze(-1), baselines[rows].unsqueeze(1), copies)
            )

    else:
        pixel_values, grids, patch = _pixel_layout(model, extra, layouts)
        image_means = pixel_values.mean(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
        others = {key: value for key, value in extra.items() if key != "pixel_values"}

        def perturbed(rows: torch.Tensor, removed: list[torch.Tensor]) -> torch.Tensor:
            cells = torch.zeros(len(rows), *grids[0].shape, dtype=torch.bool, device=device)
            for index, (row, gone) in enumerate(zip(rows.tolist(), removed, strict=True)):
                hit = torch.isin(grids[row], gone.to(device))
                cells[index] = hit
            masks = cells.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2).unsqueeze(1)
            copies = torch.where(masks.to(pixel_values.device), image_means[rows], pixel_values[rows])
            row_extra = {
                key: value[rows] if isinstance(value, torch.Tensor) and value.shape[0] == batch else value
                for key, value in others.items()
            }
            return probabilities(rows, input_ids=forced_ids[rows], pixel_values=copies, **row_extra)

    cache = {} if cache is None else cache

    def cached(rows: torch.Tensor, removed: list[torch.Tensor]) -> torch.Tensor:
        keys = [
            (mode, baseline, row, tuple(sorted(gone.tolist())))
            for row, gone in zip(rows.tolist(), removed, strict=True)
        ]
        todo: dict[tuple, int] = {}
        for index, key in enumerate(keys):
            if key not in cache and key not in todo:
                todo[key] = index
        if todo:
            picked = list(todo.values())
            fresh = perturbed(rows[picked], [removed[index] for index in picked])
            for position, key in enumerate(todo):
                cache[key] = fresh[position]
        return torch.stack([cache[key] for key in keys])

    generator = torch.Generator().manual_seed(seed)
    counts = [layout.num_image_tokens for layout in layouts]
    everything = [torch.arange(count) for count in counts]
    nothing = [torch.zeros(0, dtype=torch.long) for _ in counts]
    all_rows = torch.arange(batch, device=device)
    base = torch.cat(
        [
            cached(all_rows[start : start + batch_size], nothing[start : start + batch_size])
            for start in range(0, batch, batch_size)
        ]
    )
    empty = torch.cat(
        [
            cached(all_rows[start : start + batch_size], everything[start : start + batch_size])
            for start in range(0, batch, batch_size)
        ]
    )

    fractions = torch.linspace(0.0, 1.0, steps + 1)
    deletion = torch.full((batch, num_new, steps + 1), math.nan)
    insertion = torch.full((batch, num_new, steps + 1), math.nan)
    work: list[tuple[int, int, int, int, torch.Tensor]] = []  # (row, token, curve, step, removed image tokens)
    for row in range(batch):
        count = counts[row]
        for token in range(num_new):
            if not token_mask[row, token]:
                continue
            order = _ranking(relevancy[row, token, :count], generator)
            deletion[row, token, 0] = base[row, token]
            deletion[row, token, steps] = empty[row, token]
            insertion[row, token, 0] = empty[row, token]
            insertion[row, token, steps] = base[row, token]
            for step in range(1, steps):
                top = round(step * count / steps)
                work.append((row, token, 0, step, order[:top]))
                work.append((row, token, 1, step, order[top:]))
    progress = logging.tqdm(
        range(0, len(work), batch_size), desc=f"faithfulness ({mode})", unit="batch", disable=not show_progress
    )
    for start in progress:
        chunk = work[start : start + batch_size]
        rows = torch.tensor([item[0] for item in chunk], device=device)
        probability = cached(rows, [item[4] for item in chunk])
        for index, (row, token, curve, step, _) in enumerate(chunk):
            (deletion if curve == 0 else insertion)[row, token, step] = probability[index, token]
    base = base.masked_fill(~token_mask, math.nan)
    return FaithfulnessCurves(
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        base_probability=base,
        token_mask=token_mask,
        mode=mode,
    )


def _merged_embeddings(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, extra: dict[str, Any], common: dict
) -> torch.Tensor:
    """The language model's ``inputs_embeds`` for `input_ids` with the images merged in, `(batch, seq, hidden)`:
    captured by a pre-hook during one ordinary forward (the hook is removed in all cases)."""
    from .architectures import get_adapter

    captured: dict[str, torch.Tensor] = {}

    def capture(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if "inputs_embeds" not in captured and kwargs.get("inputs_embeds") is not None:
            captured["inputs_embeds"] = kwargs["inputs_embeds"].detach()

    language_model = get_adapter(model).language_model(model)
    handle = language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, **extra, **common)
    finally:
        handle.remove()
    if "inputs_embeds" not in captured:
        raise NotImplementedError(
            f"{type(model).__name__}'s language model was not called with `inputs_embeds`, so the embedding mode "
            "cannot replace image-token embeddings; use mode='pixel'."
        )
    return captured["inputs_embeds"]


def _pixel_layout(
    model: nn.Module, extra: dict[str, Any], layouts: list[Any]
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """(pixel values `(B, C, H, W)`, per row the `(h, w)` grid of image-token indices, patch size in pixels)."""
    pixel_values = extra.get("pixel_values")
    vision_config = getattr(model.config, "vision_config", None)
    patch = getattr(vision_config, "patch_size", None)
    if pixel_values is None or pixel_values.dim() != 4 or patch is None:
        raise NotImplementedError(
            "The pixel mode needs one image per row as `pixel_values` of shape (batch, channels, height, width) and "
            "`config.vision_config.patch_size`; use mode='embedding' for this model."
        )
    grids = []
    for row, layout in enumerate(layouts):
        if len(layout.image_grids) != 1:
            raise NotImplementedError(
                f"Row {row} has {len(layout.image_grids)} image grids; the pixel mode needs one image per row: use "
                "mode='embedding'."
            )
        grid = layout.image_grids[0]
        height, width = pixel_values.shape[-2:]
        if grid.dim() != 2 or grid.shape[0] * patch != height or grid.shape[1] * patch != width:
            raise NotImplementedError(
                f"Row {row}'s grid {tuple(grid.shape)} times the patch size {patch} does not tile the {height}x{width} "
                "image (tiled or resampled layouts have no one-to-one patch mapping); use mode='embedding'."
            )
        grids.append(grid.to(pixel_values.device))
    if pixel_values.shape[0] != len(layouts):
        raise NotImplementedError("The pixel mode needs exactly one image per row.")
    return pixel_values, grids, int(patch)


# ---------------------------------------------------------------------------------------------- summaries
def bootstrap_interval(
    values: np.ndarray,
    clusters: np.ndarray | None = None,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of `values` and its percentile bootstrap interval, resampling whole clusters (for example the scene a
    token belongs to, since tokens of one answer are not independent). NaN values are left out.

    Args:
        values (`(n,)`), clusters (`(n,)`, *optional*): one label per value (each value its own cluster by default).

    Returns:
        ``(mean, low, high)`` (all NaN without a finite value).
    """
    values = np.asarray(values, dtype=np.float64)
    clusters = np.arange(values.size) if clusters is None else np.asarray(clusters)
    finite = np.isfinite(values)
    values, clusters = values[finite], clusters[finite]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    labels, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=labels.size)
    sizes = np.bincount(inverse, minlength=labels.size).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, labels.size, size=(num_resamples, labels.size))
    means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)


def summarize_areas(
    curves: FaithfulnessCurves,
    *,
    groups: dict[str, torch.Tensor | np.ndarray] | None = None,
    clusters: torch.Tensor | np.ndarray | None = None,
    relative: bool = True,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean areas with bootstrap intervals: deletion (lower is better), insertion (higher is better) and their
    difference insertion - deletion (higher is better), over every scored token and per group.

    Args:
        curves ([`FaithfulnessCurves`]).
        groups (`dict[str, (batch, new_tokens) bool]`, *optional*): named subsets of tokens (answer-token kinds).
        clusters (`(batch,)`, *optional*): the unit the bootstrap resamples (default: the batch row).

    Returns:
        ``{"all": {"num_tokens", "deletion": [mean, low, high], "insertion": [...], "difference": [...]},
        <group>: {...}}``.
    """
    deletion = curves.area("deletion", relative).numpy()
    insertion = curves.area("insertion", relative).numpy()
    mask = curves.token_mask.numpy()
    row_clusters = np.arange(mask.shape[0]) if clusters is None else np.asarray(clusters)
    token_clusters = np.broadcast_to(row_clusters[:, None], mask.shape)
    subsets = {"all": mask}
    for name, chosen in (groups or {}).items():
        subsets[name] = mask & np.asarray(chosen, dtype=bool)
    summary = {}
    for name, chosen in subsets.items():
        summary[name] = {"num_tokens": int(chosen.sum())}
        for label, values in (
            ("deletion", deletion),
            ("insertion", insertion),
            ("difference", insertion - deletion),
        ):
            summary[name][label] = list(
                bootstrap_interval(values[chosen], token_clusters[chosen], num_resamples=num_resamples, seed=seed)
            )
    return summary


def random_relevancy(reference: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random map with the NaN pattern of `reference` (`(batch, new_tokens, image_tokens)`): the floor."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(reference.shape, generator=generator)
    return values.masked_fill(~torch.isfinite(reference.cpu()), math.nan)
