"""Occlusion sensitivity: where in the image the model's answer comes from, without gradients.

A grey square slides over the model input; each occluded copy is classified with the original,
and how far the predicted class's probability falls with the square at a position is that
position's sensitivity (Zeiler and Fergus 2014). It needs only forward passes, so every
serving backend can answer it; the price is one model input per position.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

FILL = 128  # the occluding square's grey level, in every channel
HEATMAP_SCALE = 8  # the heat map PNG is the model input upscaled this many times
# Heat map colours: red where hiding the region lowered the answer's probability, blue where
# it raised it; opacity grows with the size of the change, up to MAX_ALPHA.
_SUPPORTS_COLOUR = np.array([220, 30, 30], dtype=np.float32)
_OPPOSES_COLOUR = np.array([30, 90, 230], dtype=np.float32)
_MAX_ALPHA = 0.7


@dataclass(frozen=True)
class Grid:
    """The positions of a `patch` x `patch` square moved by `stride` over a `size` x `size`
    image, row by row; positions tile the image exactly so every pixel is covered."""

    size: int
    patch: int
    stride: int

    def __post_init__(self) -> None:
        if not 1 <= self.patch <= self.size:
            raise ValueError(f"patch must be between 1 and {self.size}, got {self.patch}")
        if not 1 <= self.stride <= self.patch:
            raise ValueError(
                f"stride must be between 1 and the patch ({self.patch}), got {self.stride}"
            )
        if (self.size - self.patch) % self.stride:
            raise ValueError(
                f"a {self.patch}-pixel patch moved by {self.stride} does not tile {self.size} "
                f"pixels: (size - patch) must be a multiple of stride"
            )

    @property
    def side(self) -> int:
        """Positions per row (and per column)."""
        return (self.size - self.patch) // self.stride + 1

    @property
    def positions(self) -> int:
        return self.side * self.side

    @property
    def inputs_per_image(self) -> int:
        """Model inputs one image costs: every occluded copy plus the original."""
        return self.positions + 1

    def origins(self) -> list[tuple[int, int]]:
        """Top-left corner (row, column) of the square at each position, row by row."""
        starts = range(0, self.size - self.patch + 1, self.stride)
        return [(top, left) for top in starts for left in starts]


def occluded_batch(images: np.ndarray, grid: Grid) -> np.ndarray:
    """(N, size, size, 3) uint8 -> (N * inputs_per_image, size, size, 3): per image, the
    original first, then one copy per position with the square greyed out."""
    count, height, width = images.shape[:3]
    if (height, width) != (grid.size, grid.size):
        raise ValueError(f"images are {height}x{width}, the grid is for {grid.size}x{grid.size}")
    copies = np.repeat(images[:, None], grid.inputs_per_image, axis=1)
    for index, (top, left) in enumerate(grid.origins(), start=1):
        copies[:, index, top : top + grid.patch, left : left + grid.patch] = FILL
    return copies.reshape(count * grid.inputs_per_image, *images.shape[1:])


def sensitivity(probabilities: np.ndarray, label: int, grid: Grid) -> np.ndarray:
    """One image's rows of `occluded_batch`'s answers -> (side, side) float32: the drop of
    `label`'s probability with the square at each position (in -1..1; larger mattered more)."""
    if probabilities.shape[0] != grid.inputs_per_image:
        raise ValueError(
            f"expected {grid.inputs_per_image} rows of probabilities, got {probabilities.shape[0]}"
        )
    drop = probabilities[0, label] - probabilities[1:, label]
    return drop.reshape(grid.side, grid.side).astype(np.float32)


def pixel_map(position_map: np.ndarray, grid: Grid) -> np.ndarray:
    """(side, side) -> (size, size): each pixel gets the mean of the positions whose square
    covers it, so overlapping squares blend instead of the last one winning."""
    total = np.zeros((grid.size, grid.size), dtype=np.float64)
    covers = np.zeros((grid.size, grid.size), dtype=np.float64)
    for value, (top, left) in zip(position_map.ravel(), grid.origins(), strict=True):
        total[top : top + grid.patch, left : left + grid.patch] += value
        covers[top : top + grid.patch, left : left + grid.patch] += 1
    return (total / covers).astype(np.float32)


def heatmap_png(image: np.ndarray, position_map: np.ndarray, grid: Grid) -> bytes:
    """The model input upscaled HEATMAP_SCALE times with nearest-neighbour (so its pixels show)
    and the map over it; colours are relative to this image's largest change."""
    size = grid.size * HEATMAP_SCALE
    base = np.asarray(
        Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST), dtype=np.float32
    )
    pixels = pixel_map(position_map, grid)
    largest = float(np.abs(pixels).max())
    scaled = pixels / largest if largest > 0 else pixels
    # Bilinear on the map (not on the picture): a smooth overlay over sharp pixels.
    smooth = Image.fromarray(scaled.astype(np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    values = np.clip(np.asarray(smooth, dtype=np.float32), -1, 1)[..., None]
    colour = np.where(values > 0, _SUPPORTS_COLOUR, _OPPOSES_COLOUR)
    alpha = _MAX_ALPHA * np.abs(values)
    blended = base * (1 - alpha) + colour * alpha
    return png_bytes(np.round(blended).astype(np.uint8))


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as PNG bytes, lossless, so what is shown is what was used."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
