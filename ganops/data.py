"""A dataset that needs no download: procedurally drawn coloured shapes.

Each image is a plain background of one random colour with one to ``max_shapes`` filled shapes on it: circles,
axis-aligned squares and triangles (equilateral, randomly rotated), each in a random saturated colour, at a
random position and size, drawn in order so later shapes cover earlier ones. Edges are anti-aliased by 4x4
supersampling. Images are ``[3, S, S]`` float32 in ``[-1, 1]`` (the range of a tanh generator).

Everything is deterministic given the seed: image ``i`` of :class:`ShapesDataset` depends only on
``(seed, i)``, and :func:`random_batch` only on its ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SHAPES = ("circle", "square", "triangle")
_SUPERSAMPLING = 4


def _check(caller: str, image_size: int, max_shapes: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"{caller}: image_size must be an int >= 4, got {image_size!r}")
    if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
        raise ValueError(f"{caller}: max_shapes must be an int >= 1, got {max_shapes!r}")


def _saturated_colours(count: int, generator: torch.Generator, hues: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """``[count, 3]`` RGB in ``[0, 1]`` from a random hue in ``hues`` (fractions of the colour circle, red at 0,
    green at 1/3, blue at 2/3) at full saturation and 0.75-1 brightness."""
    hue = (hues[0] + (hues[1] - hues[0]) * torch.rand(count, generator=generator)) * 6.0
    value = 0.75 + 0.25 * torch.rand(count, generator=generator)
    # HSV -> RGB with saturation 1: each channel is a clipped triangle wave of the hue.
    offsets = torch.tensor([5.0, 3.0, 1.0])
    k = (offsets + hue[:, None]) % 6.0
    return value[:, None] * (1.0 - torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))


def render(
    kinds: Tensor, centres: Tensor, sizes: Tensor, angles: Tensor, colours: Tensor, present: Tensor,
    background: Tensor, image_size: int,
) -> Tensor:
    """Images ``[B, 3, S, S]`` in ``[0, 1]`` from shape parameters ``[B, K]`` (``kinds`` indexes :data:`SHAPES`,
    ``centres [B, K, 2]`` and ``sizes`` (half-widths / radii) in pixels, ``colours [B, K, 3]``, ``present``
    bool) over ``background [B, 3]``."""
    fine = image_size * _SUPERSAMPLING
    coordinates = (torch.arange(fine, dtype=torch.float32) + 0.5) / _SUPERSAMPLING
    y, x = coordinates[:, None], coordinates[None, :]
    batch = kinds.shape[0]
    images = background[:, :, None, None].expand(batch, 3, fine, fine).clone()
    for slot in range(kinds.shape[1]):
        dx = x - centres[:, slot, 0, None, None]
        dy = y - centres[:, slot, 1, None, None]
        size = sizes[:, slot, None, None]
        circle = dx.square() + dy.square() <= size.square()
        square = torch.maximum(dx.abs(), dy.abs()) <= size
        # A point is inside the triangle when it is on the inner side of all three edges, whose outward
        # normals point at angle + 90, +210 and +330 degrees; the inradius of an equilateral triangle with
        # circumradius r is r / 2.
        triangle = torch.ones_like(circle)
        for corner in range(3):
            normal = angles[:, slot, None, None] + math.pi / 2 + corner * 2 * math.pi / 3
            triangle &= dx * torch.cos(normal) + dy * torch.sin(normal) <= size / 2
        kind = kinds[:, slot, None, None]
        mask = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle)) & present[:, slot, None, None]
        images = torch.where(mask[:, None], colours[:, slot, :, None, None], images)
    return torch.nn.functional.avg_pool2d(images, _SUPERSAMPLING)


def random_batch(
    batch_size: int, generator: torch.Generator, image_size: int = 32, max_shapes: int = 2,
    hues: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """``batch_size`` random images ``[B, 3, S, S]`` in ``[-1, 1]`` drawn with ``generator`` (a CPU generator); the
    shapes' hues are uniform in ``hues``, fractions of the colour circle (the default: every hue)."""
    _check("random_batch", image_size, max_shapes)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"random_batch: batch_size must be a positive int, got {batch_size!r}")
    if (
        not isinstance(hues, tuple) or len(hues) != 2
        or not all(isinstance(h, (int, float)) and not isinstance(h, bool) for h in hues)
        or not 0.0 <= hues[0] <= hues[1] <= 1.0
    ):
        raise ValueError(f"random_batch: hues must be a pair (low, high) with 0 <= low <= high <= 1, got {hues!r}")
    b, k, s = batch_size, max_shapes, float(image_size)
    count = torch.randint(1, k + 1, (b, 1), generator=generator)
    present = torch.arange(k)[None, :] < count
    kinds = torch.randint(0, len(SHAPES), (b, k), generator=generator)
    sizes = s * (0.12 + 0.16 * torch.rand(b, k, generator=generator))
    # Centres keep most of each shape inside the image.
    centres = sizes[..., None] * 0.8 + torch.rand(b, k, 2, generator=generator) * (s - 1.6 * sizes[..., None])
    angles = torch.rand(b, k, generator=generator) * 2 * math.pi
    colours = _saturated_colours(b * k, generator, hues).view(b, k, 3)
    # Dark, unsaturated backgrounds, so that every shape stands out.
    background = 0.05 + 0.2 * torch.rand(b, 1, generator=generator) + 0.05 * torch.rand(b, 3, generator=generator)
    images = render(kinds, centres, sizes, angles, colours, present, background, image_size)
    return images * 2.0 - 1.0


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` images of coloured shapes; item ``i`` is ``random_batch(1, Generator(seed * 1_000_003 + i))[0]``,
    so every item is reproducible on its own, in any order and in any worker."""

    def __init__(self, length: int = 10_000, image_size: int = 32, max_shapes: int = 2, seed: int = 0) -> None:
        _check("ShapesDataset", image_size, max_shapes)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"ShapesDataset: length must be a positive int, got {length!r}")
        self.length = length
        self.image_size = image_size
        self.max_shapes = max_shapes
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        if not -self.length <= index < self.length:
            raise IndexError(f"ShapesDataset: index {index} out of range for length {self.length}")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index % self.length)
        return random_batch(1, generator, self.image_size, self.max_shapes)[0]


# ------------------------------------------------------------------------------------ CycleGAN's domains


# Hues of the CycleGAN recipe's first domain: red to yellow-green. swap_colours moves every hue back by a third of
# the circle, so the second domain's hues (blue to magenta) share none with the first; over all hues the two
# domains would have one distribution, and the identity map would be a perfect unpaired translation.
CYCLEGAN_HUES = (0.0, 1.0 / 3.0)
# The second domain's hues: CYCLEGAN_HUES after swap_colours.
CYCLEGAN_SWAPPED_HUES = (2.0 / 3.0, 1.0)


def swap_colours(images: Tensor) -> Tensor:
    """The second domain of the CycleGAN recipe: each image with its colour channels rotated (R, G, B) ->
    (G, B, R), so a red circle on a dark background becomes a blue one (the hue moves back by a third of the
    colour circle); ``[B, 3, H, W]`` in, same out."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"swap_colours: images must be [B, 3, H, W], got {getattr(images, 'shape', type(images).__name__)}")
    return images[:, [1, 2, 0]]


# ----------------------------------------------------------------------------------- SeqGAN's sentences
#
# A toy English the SeqGAN recipe learns: S -> NP VP; NP -> Det N | Det Adj N; VP -> V NP | V. Sentences of
# 3 to 7 words end with "." and are padded with "." to SENTENCE_LENGTH tokens.

DETERMINERS = ("the", "a")
NOUNS = ("cat", "dog", "bird")
ADJECTIVES = ("big", "small")
VERBS = ("sees", "chases")
VOCABULARY = (".",) + DETERMINERS + NOUNS + ADJECTIVES + VERBS
SENTENCE_LENGTH = 8
_TOKEN = {word: index for index, word in enumerate(VOCABULARY)}


def _pick(words: tuple[str, ...], generator: torch.Generator) -> str:
    return words[int(torch.randint(len(words), (), generator=generator))]


def _noun_phrase(generator: torch.Generator) -> list[str]:
    words = [_pick(DETERMINERS, generator)]
    if torch.rand((), generator=generator) < 0.5:
        words.append(_pick(ADJECTIVES, generator))
    return words + [_pick(NOUNS, generator)]


def grammar_sentences(count: int, generator: torch.Generator) -> Tensor:
    """``count`` random sentences of the toy grammar as token indices ``[count, SENTENCE_LENGTH]`` (int64)
    into :data:`VOCABULARY`, drawn with ``generator``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"grammar_sentences: count must be a positive int, got {count!r}")
    rows = []
    for _ in range(count):
        words = _noun_phrase(generator) + [_pick(VERBS, generator)]
        if torch.rand((), generator=generator) < 0.7:
            words += _noun_phrase(generator)
        words += ["."] * (SENTENCE_LENGTH - len(words))
        rows.append([_TOKEN[word] for word in words])
    return torch.tensor(rows, dtype=torch.int64)


def _parse_noun_phrase(words: list[str], position: int) -> int | None:
    """The position after a noun phrase starting at ``position``, or None."""
    if position >= len(words) or words[position] not in DETERMINERS:
        return None
    position += 1
    if position < len(words) and words[position] in ADJECTIVES:
        position += 1
    return position + 1 if position < len(words) and words[position] in NOUNS else None


def is_grammatical(tokens: Tensor) -> Tensor:
    """Per row of ``tokens [N, T]``: whether it is a sentence of the toy grammar followed only by ``"."``."""
    result = []
    for row in tokens.tolist():
        words = [VOCABULARY[index] for index in row]
        position = _parse_noun_phrase(words, 0)
        valid = position is not None and position < len(words) and words[position] in VERBS
        if valid:
            position += 1
            after_object = _parse_noun_phrase(words, position)
            position = after_object if after_object is not None else position
            valid = position < len(words) and all(word == "." for word in words[position:])
        result.append(valid)
    return torch.tensor(result, dtype=torch.bool)


def sentence_text(tokens: Tensor) -> str:
    """One row of tokens as words, trailing padding dropped after the first ``"."``."""
    words = [VOCABULARY[index] for index in tokens.tolist()]
    return " ".join(words[: words.index(".") + 1] if "." in words else words)


# ------------------------------------------------------------------------------------ a fixed detector


def looks_like_shapes(images: Tensor) -> Tensor:
    """A fixed, crude detector of the shapes data, per image of ``[B, 3, H, W]`` in ``[-1, 1]``: 1% to 75% of the
    pixels are saturated colour (largest minus smallest channel > 0.5, as the shapes are), at least a quarter are
    unsaturated (< 0.2, the background), and the background is dark (median brightness < -0.3) and plain (its
    brightness has a standard deviation <= 0.1). Of 2000 images of :func:`random_batch` each at 8x8, 16x16 and
    32x32, 2, 0 and 0 fail; grey or uniform noise, flat fields and colour blobs on a mottled background fail. The demo
    reports the fraction of samples that pass."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"looks_like_shapes: images must be [B, 3, H, W], got {getattr(images, 'shape', type(images).__name__)}")
    images = images.detach().float()
    saturation = (images.max(dim=1).values - images.min(dim=1).values).flatten(1)
    brightness = images.mean(dim=1).flatten(1)
    saturated = (saturation > 0.5).float().mean(dim=1)
    background = saturation < 0.2
    background_count = background.sum(dim=1)
    background_mean = (brightness * background).sum(dim=1) / background_count.clamp(min=1)
    background_variance = ((brightness - background_mean[:, None]).square() * background).sum(dim=1) / background_count.clamp(min=1)
    plain_dark_background = (
        (background_count >= 0.25 * saturation.shape[1]) & (background_mean < -0.3) & (background_variance.sqrt() <= 0.1)
    )
    return plain_dark_background & (saturated >= 0.01) & (saturated <= 0.75)


def sliced_wasserstein_distance(images: Tensor, reference: Tensor, projections: int = 128, seed: int = 0) -> float:
    """How far the distribution of ``images`` is from that of ``reference`` (both ``[B, ...]``, the same ``B``):
    the mean over ``projections`` random unit directions (fixed by ``seed``) of the 1-D Wasserstein-1 distance
    between the two sets projected on that direction, in pixel units. 0 for the same set; about 0.04 between two
    independent batches of 256 real images, 0.5-0.6 from all-zero images or uniform noise to the data at 8x8 and
    16x16, and about 0.5 from the recipes' untrained generators at 8x8. The recipes' learning tests use it: unlike :func:`looks_like_shapes`, it sees
    the whole distribution (colours, positions, variety), so a generator collapsed on one good-looking image
    scores badly."""
    if not isinstance(images, Tensor) or not isinstance(reference, Tensor) or images.dim() < 2:
        raise ValueError("sliced_wasserstein_distance: images and reference must be tensors of shape [B, ...]")
    if images.shape != reference.shape:
        raise ValueError(
            f"sliced_wasserstein_distance: images and reference must have one shape, got {tuple(images.shape)} and "
            f"{tuple(reference.shape)}"
        )
    if projections < 1:
        raise ValueError(f"sliced_wasserstein_distance: projections must be >= 1, got {projections}")
    a, b = images.detach().flatten(1).double().cpu(), reference.detach().flatten(1).double().cpu()
    directions = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    directions /= directions.norm(dim=0)
    return float(((a @ directions).sort(dim=0).values - (b @ directions).sort(dim=0).values).abs().mean())


def hue_fraction(images: Tensor, hues: tuple[float, float]) -> float:
    """The fraction of the saturated pixels of ``images`` (``[B, 3, H, W]`` in ``[-1, 1]``; largest minus smallest
    channel > 0.5, as the shapes' pixels are) whose hue lies in ``hues`` (fractions of the colour circle, red at
    0, green at 1/3, blue at 2/3; ``low > high`` wraps through red). 0 where no pixel is saturated. The CycleGAN
    recipe's learning test asks how many of G's colours have moved into the second domain's hues."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"hue_fraction: images must be [B, 3, H, W], got {getattr(images, 'shape', type(images).__name__)}")
    rgb = (images.detach().double().cpu() + 1) / 2
    largest, which = rgb.max(dim=1)
    delta = largest - rgb.min(dim=1).values
    saturated = delta > 0.25
    if not saturated.any():
        return 0.0
    r, g, b = rgb.unbind(1)
    safe = torch.where(delta > 0, delta, 1.0)
    sector = torch.where(which == 0, ((g - b) / safe) % 6, torch.where(which == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = sector[saturated] / 6
    low, high = hues
    inside = (hue >= low) & (hue <= high) if low <= high else (hue >= low) | (hue <= high)
    return float(inside.double().mean())
