"""Seeded synthetic scenes with known ground truth: coloured shapes on a plain background, and questions about them.

Every scene is a square image (48 px by default) cut into four quadrants; each object sits wholly inside its own
quadrant, so "which side" and "which corner" have one right answer. Objects in a scene have distinct shapes and
distinct colours, so "the circle" or "the red object" names exactly one object. Each object carries its exact
pixel mask and tight box (measured on the drawn pixels, not computed from a formula), and the patches it covers for
a given patch size, which is what grounding evaluations (pointing game, relevancy F1) compare maps against.

Questions come in four kinds, each answered by one object, or by "none" when the named object is not in the scene
(an "absent" question, used to check that confidence drops when there is nothing to look at)::

    colour  what colour is the circle ?           -> red
    shape   what shape is the red object ?        -> circle
    side    which side is the circle on ?         -> left
    corner  which corner is the red object in ?   -> top left

Example:

```python
>>> from hf_fastrm.toy.scenes import draw_scene, ask_question, make_examples
>>> scene = draw_scene(0)
>>> question = ask_question(scene, rng=0, kind="colour")
>>> question.answer == question.target_object.colour
True
>>> examples = make_examples(8, seed=1)   # [(Scene, Question), ...], question kinds cycled for balance
```

Drawing is deterministic: the same seed gives the same pixels on every platform (Python's `random.Random`
seeded with a string, and PIL's aliasing-free drawing).

Harder scenes: `draw_scene` (and `make_examples`, which passes scene arguments through) takes two corruption knobs,
both off by default (the default draws exactly the scenes it always drew):

- ``contrast`` (1.0 = off): each object is painted in ``background + contrast * (colour - background)``, so at low
  contrast the colours fade towards the grey background and become harder to tell apart.
- ``noise`` (0.0 = off): zero-mean Gaussian pixel noise of this standard deviation, in units of the full 0-255
  range (``noise=0.2`` is a std of 51 levels), added per pixel and channel, then clipped and rounded.

Corruption never changes the layout or the questions: the noise is drawn from a generator derived from the scene's
own seed without advancing it, so ``make_examples(n, seed, noise=0.3)`` holds the same objects, boxes, masks and
questions as ``make_examples(n, seed)``, only the pixels differ (a paired, harder copy of the same stream). Boxes and
masks stay those of the drawn shapes, before noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""Shape names, as they appear in questions and answers."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "yellow": (235, 200, 20),
    "purple": (150, 50, 200),
}
"""Colour names and their RGB values (saturated, far apart, and far from the light grey backgrounds)."""

CORNERS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
"""Quadrant names, in row-major order (quadrant index ``2 * row + column``)."""

SIDES: tuple[str, ...] = ("left", "right")

QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "side", "corner")
"""Question kinds; each is answered by one object of the scene, or by `ABSENT_ANSWER`."""

ABSENT_ANSWER = "none"
"""The answer to a question about an object that is not in the scene."""

DEFAULT_IMAGE_SIZE = 48
DEFAULT_NUM_OBJECTS = (2, 3)
DEFAULT_OBJECT_SIZE = (10, 20)
DEFAULT_ABSENT_RATE = 0.25
DEFAULT_NOISE = 0.0
DEFAULT_CONTRAST = 1.0
_MARGIN = 1
_SEED_PREFIX = "hf_fastrm.toy"

_TEMPLATES = {
    "colour": "what colour is the {shape} ?",
    "shape": "what shape is the {colour} object ?",
    "side": "which side is the {reference} on ?",
    "corner": "which corner is the {reference} in ?",
}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    Attributes:
        shape (`str`): one of `SHAPES`.
        colour (`str`): one of `COLOURS`.
        box (`tuple[int, int, int, int]`): tight pixel box ``(left, top, right, bottom)`` of the drawn pixels,
            right and bottom exclusive (PIL's convention: ``image.crop(box)`` is exactly the object's extent).
        corner (`str`): the quadrant holding the object, one of `CORNERS`.
        mask (`np.ndarray` of shape `(height, width)`, bool): the object's exact pixels.
    """

    shape: str
    colour: str
    box: tuple[int, int, int, int]
    corner: str
    mask: np.ndarray = field(repr=False, compare=False)

    @property
    def side(self) -> str:
        """``"left"`` or ``"right"``."""
        return self.corner.split()[1]

    @property
    def name(self) -> str:
        """E.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    def patch_mask(self, patch_size: int) -> np.ndarray:
        """Which patches of a ``patch_size`` grid the object's box overlaps.

        Returns:
            `np.ndarray` of shape `(height // patch_size, width // patch_size)`, bool, row-major like the image
            tokens of a ViT-style tower.
        """
        height, width = self.mask.shape
        if height % patch_size or width % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide the {width}x{height} image.")
        left, top, right, bottom = self.box
        grid = np.zeros((height // patch_size, width // patch_size), dtype=bool)
        grid[
            top // patch_size : (bottom - 1) // patch_size + 1, left // patch_size : (right - 1) // patch_size + 1
        ] = True
        return grid

    def patch_indices(self, patch_size: int) -> list[int]:
        """Row-major indices of the patches the object's box overlaps (see `patch_mask`)."""
        return np.flatnonzero(self.patch_mask(patch_size)).tolist()


@dataclass(frozen=True)
class Scene:
    """A drawn scene.

    Attributes:
        image (`PIL.Image.Image`): RGB, ``image_size`` pixels square.
        objects (`tuple[SceneObject, ...]`): the objects, in drawing order.
        background (`tuple[int, int, int]`): the background colour (before noise).
        noise (`float`): the std of the pixel noise it was drawn with (0.0: none; see `draw_scene`).
        contrast (`float`): the object contrast it was drawn with (1.0: the palette's colours; see `draw_scene`).
    """

    image: Image.Image = field(repr=False, compare=False)
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    noise: float = DEFAULT_NOISE
    contrast: float = DEFAULT_CONTRAST

    @property
    def image_size(self) -> int:
        return self.image.size[0]

    def find(self, *, shape: str | None = None, colour: str | None = None) -> SceneObject | None:
        """The object with this shape and/or colour, or None when the scene has none."""
        for obj in self.objects:
            if (shape is None or obj.shape == shape) and (colour is None or obj.colour == colour):
                return obj
        return None

    def pixels(self) -> np.ndarray:
        """The image as a `(height, width, 3)` uint8 array."""
        return np.asarray(self.image, dtype=np.uint8)


@dataclass(frozen=True)
class Question:
    """A question about a scene.

    Attributes:
        kind (`str`): one of `QUESTION_KINDS`.
        text (`str`): the question, lower case, words and "?" separated by single spaces.
        answer (`str`): the expected answer (one or two words), `ABSENT_ANSWER` for an absent object.
        target_object (`SceneObject` or None): the object the answer rests on; None when the question names an
            object that is not in the scene.
    """

    kind: str
    text: str
    answer: str
    target_object: SceneObject | None

    @property
    def present(self) -> bool:
        """Whether the object the question names is in the scene (False: the answer is `ABSENT_ANSWER`)."""
        return self.target_object is not None


def _as_rng(seed_or_rng: int | str | random.Random) -> random.Random:
    if isinstance(seed_or_rng, random.Random):
        return seed_or_rng
    if isinstance(seed_or_rng, bool) or not isinstance(seed_or_rng, (int, str)):
        raise TypeError(f"Expected an int or str seed or a `random.Random`, got {type(seed_or_rng).__name__}.")
    return random.Random(f"{_SEED_PREFIX}:{seed_or_rng}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, left: int, top: int, size: int) -> None:
    right, bottom = left + size - 1, top + size - 1  # PIL's outline coordinates are inclusive
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=255)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=255)
    elif shape == "triangle":
        draw.polygon([(left + (size - 1) / 2, top), (left, bottom), (right, bottom)], fill=255)
    elif shape == "cross":
        arm = max(2, size // 3)
        offset = (size - arm) // 2
        draw.rectangle((left + offset, top, left + offset + arm - 1, bottom), fill=255)
        draw.rectangle((left, top + offset, right, top + offset + arm - 1), fill=255)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def draw_scene(
    seed_or_rng: int | str | random.Random,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_objects: int | tuple[int, int] = DEFAULT_NUM_OBJECTS,
    object_size: tuple[int, int] = DEFAULT_OBJECT_SIZE,
    noise: float = DEFAULT_NOISE,
    contrast: float = DEFAULT_CONTRAST,
) -> Scene:
    """Draws a scene: distinct shapes of distinct colours, one per quadrant, on a light grey background.

    Args:
        seed_or_rng (`int`, `str` or `random.Random`): a seed (the same seed always gives the same scene) or a
            generator to draw from (advanced in place).
        image_size (`int`, *optional*, defaults to 48): side of the square image in pixels (even).
        num_objects (`int` or `tuple[int, int]`, *optional*, defaults to `(2, 3)`): object count, or an inclusive
            range to draw it from; at most 3, so every scene misses at least one shape (for absent questions).
        object_size (`tuple[int, int]`, *optional*, defaults to `(10, 20)`): inclusive range of the side of an
            object's drawing box in pixels; it must fit in a quadrant with a 1 px margin.
        noise (`float`, *optional*, defaults to 0.0): std of zero-mean Gaussian noise added to every pixel and
            channel, in units of the 0-255 range (0.1 = 25.5 levels); clipped to [0, 255] and rounded. Drawn from a
            generator derived from `seed_or_rng` without advancing it, so the layout and any question drawn next
            are the same as without noise.
        contrast (`float`, *optional*, defaults to 1.0): in (0, 1]; objects are painted in
            ``background + contrast * (colour - background)`` (rounded), so lower values fade them into the
            background.

    Returns:
        `Scene`
    """
    rng = _as_rng(seed_or_rng)
    quadrant = image_size // 2
    low_count, high_count = (num_objects, num_objects) if isinstance(num_objects, int) else num_objects
    low_size, high_size = object_size
    if image_size % 2 or not 1 <= low_count <= high_count <= len(SHAPES) - 1:
        raise ValueError(
            f"Need an even image_size and 1 <= num_objects <= {len(SHAPES) - 1}; got {image_size} and {num_objects}."
        )
    if not 2 <= low_size <= high_size <= quadrant - 2 * _MARGIN:
        raise ValueError(
            f"object_size {object_size} must lie within [2, {quadrant - 2 * _MARGIN}] for a {image_size} px image."
        )
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite std >= 0 (0.0 turns it off); got {noise!r}.")
    if not (isinstance(contrast, (int, float)) and 0 < contrast <= 1):
        raise ValueError(f"contrast must lie in (0, 1] (1.0 keeps the palette's colours); got {contrast!r}.")

    count = rng.randint(low_count, high_count)
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample(sorted(COLOURS), count)
    corners = rng.sample(range(len(CORNERS)), count)
    grey = rng.randint(200, 250)
    background = (grey, grey, grey)
    image = Image.new("RGB", (image_size, image_size), background)
    objects = []
    for shape, colour, corner in zip(shapes, colours, corners, strict=True):
        paint = COLOURS[colour] if contrast == 1 else _faded(COLOURS[colour], background, contrast)
        size = rng.randint(low_size, high_size)
        row, column = divmod(corner, 2)
        left = column * quadrant + rng.randint(_MARGIN, quadrant - _MARGIN - size)
        top = row * quadrant + rng.randint(_MARGIN, quadrant - _MARGIN - size)
        mask = Image.new("L", (image_size, image_size), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, left, top, size)
        image.paste(paint, (0, 0, image_size, image_size), mask)
        objects.append(
            SceneObject(
                shape=shape,
                colour=colour,
                box=tuple(mask.getbbox()),
                corner=CORNERS[corner],
                mask=np.asarray(mask) > 0,
            )
        )
    if noise > 0:
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels + _noise_generator(rng).normal(0.0, 255.0 * noise, size=pixels.shape)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    return Scene(image=image, objects=tuple(objects), background=background, noise=noise, contrast=contrast)


def _faded(colour: tuple[int, int, int], background: tuple[int, int, int], contrast: float) -> tuple[int, int, int]:
    return tuple(round(low + contrast * (high - low)) for high, low in zip(colour, background, strict=True))


def _noise_generator(rng: random.Random) -> np.random.Generator:
    # A copy of the stream's state seeds the noise, so `rng` is not advanced: the question drawn next from it (and
    # so the whole example stream) is the same with and without noise. SeedSequence hashes the 128 bits with a
    # spawn key of its own, so the noise is not the same numbers the question will draw.
    peek = random.Random()
    peek.setstate(rng.getstate())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(peek.getrandbits(128), spawn_key=(1,))))


def _reference(obj_shape: str, obj_colour: str, by_colour: bool) -> str:
    return f"{obj_colour} object" if by_colour else obj_shape


def ask_question(
    scene: Scene,
    rng: int | str | random.Random,
    kind: str | None = None,
    *,
    present: bool | None = None,
    absent_rate: float = DEFAULT_ABSENT_RATE,
) -> Question:
    """Asks a question about `scene`.

    Args:
        scene (`Scene`): the scene.
        rng (`int`, `str` or `random.Random`): a seed or a generator (advanced in place).
        kind (`str`, *optional*): one of `QUESTION_KINDS`; drawn uniformly when None.
        present (`bool`, *optional*): ask about an object in the scene (True) or one that is not (False); when
            None, absent with probability `absent_rate`.
        absent_rate (`float`, *optional*, defaults to 0.25): see `present`.

    Returns:
        `Question`
    """
    rng = _as_rng(rng)
    if kind is None:
        kind = rng.choice(QUESTION_KINDS)
    if kind not in _TEMPLATES:
        raise ValueError(f"Unknown question kind {kind!r}; expected one of {QUESTION_KINDS}.")
    if present is None:
        present = rng.random() >= absent_rate
    template = _TEMPLATES[kind]
    if present:
        target = rng.choice(scene.objects)
        shape, colour = target.shape, target.colour
        answer = {"colour": colour, "shape": shape, "side": target.side, "corner": target.corner}[kind]
    else:
        target = None
        answer = ABSENT_ANSWER
        missing_shapes = [name for name in SHAPES if scene.find(shape=name) is None]
        missing_colours = [name for name in sorted(COLOURS) if scene.find(colour=name) is None]
        shape, colour = rng.choice(missing_shapes), rng.choice(missing_colours)
    by_colour = {"colour": False, "shape": True}.get(kind)
    if by_colour is None:
        by_colour = rng.random() < 0.5
    text = template.format(shape=shape, colour=colour, reference=_reference(shape, colour, by_colour))
    return Question(kind=kind, text=text, answer=answer, target_object=target)


def example_rng(seed: int | str, index: int) -> random.Random:
    """The generator of example `index` of the stream `seed` (streams of different seeds share no example seed)."""
    return random.Random(f"{_SEED_PREFIX}:{seed}:{index}")


def make_examples(
    num: int,
    seed: int | str,
    *,
    start: int = 0,
    kinds: tuple[str, ...] = QUESTION_KINDS,
    absent_rate: float = DEFAULT_ABSENT_RATE,
    **scene_kwargs,
) -> list[tuple[Scene, Question]]:
    """`num` (scene, question) pairs: example ``i`` is drawn from ``example_rng(seed, start + i)``.

    Question kinds cycle through `kinds` (so every kind is equally represented); whether the question is about a
    present or an absent object is drawn with `absent_rate`. Extra keyword arguments go to `draw_scene`.
    """
    examples = []
    for index in range(start, start + num):
        rng = example_rng(seed, index)
        scene = draw_scene(rng, **scene_kwargs)
        examples.append((scene, ask_question(scene, rng, kinds[index % len(kinds)], absent_rate=absent_rate)))
    return examples


def vocabulary() -> list[str]:
    """Every word (and "?") that a question or an answer can contain, sorted."""
    words = {ABSENT_ANSWER, *SHAPES, *COLOURS, *SIDES}
    for corner in CORNERS:
        words.update(corner.split())
    for template in _TEMPLATES.values():
        for shape in SHAPES:
            for colour in COLOURS:
                for by_colour in (False, True):
                    text = template.format(shape=shape, colour=colour, reference=_reference(shape, colour, by_colour))
                    words.update(text.split())
    return sorted(words)
