"""Tiling: large pictures with small defects cut into model-sized tiles, their maps stitched back.

Shrinking a 1,500-pixel picture to the model's 256 pixels makes a 12-pixel scratch two pixels
wide, below what stride-8 features can see, while a model-sized tile of the same picture keeps it
at six. This is what anomalib's ``Tiler`` and its tiled ensemble do for high-resolution
inspection. The rule here is simple and non-overlapping:

- a category's **grid** (rows x cols) is chosen once, when the model is trained, from the native
  size of its training pictures (:func:`auto_grid`: no tile is shrunk more than
  ``tile_max_shrink`` times, at most ``tile_max_grid`` tiles a side), and travels with the model
  (checkpoint ``train_info.category_tiles``, ONNX metadata, the edge's ``ModelInfo``);
- a picture is fitted to ``rows * height`` x ``cols * width`` (the input's size) by the model's resize rule
  (:func:`proad.data.folder.fit_image`), cut into ``rows * cols`` inputs (:func:`split_tiles`),
  each inferred as a picture of its own; the maps are put back where their tiles were
  (:func:`stitch`) and the picture's score is the largest of its tiles' scores.

Training, evaluation, threshold calibration and the edge daemon all go through these functions,
so a tiled camera's frames are cut exactly as the model's training pictures were. Numpy only: the
edge runtime imports it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from proad.data.geometry import Size, size_hw

#: (rows, cols) of a picture's tiles; (1, 1) is the whole picture as one input.
Grid = tuple[int, int]
NO_TILING: Grid = (1, 1)


def auto_grid(height: int, width: int, size: Size, max_shrink: float | None, max_grid: int) -> Grid:
    """The grid for pictures of ``height`` x ``width`` native pixels: per side, the fewest tiles
    that keep each tile's shrink to the ``size`` input (its height for rows, its width for columns)
    at most ``max_shrink``, capped at ``max_grid``. ``max_shrink`` None: never tile."""
    if max_shrink is None:
        return NO_TILING
    tile_h, tile_w = size_hw(size)
    rows = math.ceil(height / (tile_h * max_shrink))
    cols = math.ceil(width / (tile_w * max_shrink))
    return (min(max(rows, 1), max_grid), min(max(cols, 1), max_grid))


def split_tiles(image: np.ndarray, grid: Grid) -> np.ndarray:
    """``[rows * cols, h, w, ...]`` tiles of a picture already fitted to ``rows * h`` x ``cols * w``,
    row by row (the order :func:`stitch` expects)."""
    rows, cols = grid
    height, width = image.shape[:2]
    if height % rows or width % cols:
        raise ValueError(f"a {width}x{height} picture does not split into {rows}x{cols} equal tiles")
    h, w = height // rows, width // cols
    tiles = image.reshape(rows, h, cols, w, *image.shape[2:]).swapaxes(1, 2)
    return np.ascontiguousarray(tiles.reshape(rows * cols, h, w, *image.shape[2:]))


def tiles_of(images: Sequence[np.ndarray], grid: Grid) -> list[np.ndarray]:
    """Every picture's tiles, picture after picture, for pictures of one ``grid`` (one tile each
    when not tiled): what training encodes and PatchCore fits on."""
    if grid == NO_TILING:
        return list(images)
    return [tile for image in images for tile in split_tiles(image, grid)]


def stitch(tiles: np.ndarray, grid: Grid) -> np.ndarray:
    """The inverse of :func:`split_tiles`: ``[rows * cols, h, w, ...]`` back to one picture."""
    rows, cols = grid
    if tiles.shape[0] != rows * cols:
        raise ValueError(f"{tiles.shape[0]} tiles do not make a {rows}x{cols} grid")
    h, w = tiles.shape[1:3]
    out = tiles.reshape(rows, cols, h, w, *tiles.shape[3:]).swapaxes(1, 2)
    return np.ascontiguousarray(out.reshape(rows * h, cols * w, *tiles.shape[3:]))


def grid_of(image: np.ndarray, size: Size) -> Grid:
    """The grid of a picture fitted to a whole number of ``size`` inputs (tiles) a side."""
    height, width = image.shape[:2]
    tile_h, tile_w = size_hw(size)
    if height % tile_h or width % tile_w:
        raise ValueError(f"a {width}x{height} picture is not a whole number of {tile_w}x{tile_h}-pixel tiles")
    return (height // tile_h, width // tile_w)


def infer_tiled(
    infer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    images: Sequence[np.ndarray],
    size: Size,
    max_batch: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """(maps, scores) of pictures that are each a whole number of ``size`` tiles a side
    (:func:`grid_of`), through ``infer`` (uint8 ``[B, H, W, 3]`` -> maps ``[B, H, W]``, scores
    ``[B]``, ``H`` x ``W`` the input size) in batches of at most ``max_batch`` tiles. Each picture's map is its tiles'
    maps stitched back, its score the largest of its tiles' scores. Pictures of one tile pass
    through as they are (the daemon's and evaluation's usual case)."""
    grids = [grid_of(im, size) for im in images]
    counts = [rows * cols for rows, cols in grids]
    if all(n == 1 for n in counts):
        tiles: Sequence[np.ndarray] = images
    else:
        tiles = [t for im, grid in zip(images, grids, strict=True) for t in split_tiles(im, grid)]
    tile_maps, tile_scores = [], []
    for start in range(0, len(tiles), max_batch):
        chunk = tiles[start : start + max_batch]
        m, s = infer(chunk[0][None] if len(chunk) == 1 else np.stack(chunk))
        tile_maps.append(np.asarray(m))
        tile_scores.append(np.asarray(s))
    if len(tile_maps) == 1:  # one call (the daemon's usual batch): no copy
        all_maps, all_scores = tile_maps[0], tile_scores[0]
    else:
        all_maps, all_scores = np.concatenate(tile_maps), np.concatenate(tile_scores)
    maps, scores, at = [], np.empty(len(images), np.float32), 0
    for i, (grid, n) in enumerate(zip(grids, counts, strict=True)):
        maps.append(all_maps[at] if n == 1 else stitch(all_maps[at : at + n], grid))
        scores[i] = all_scores[at : at + n].max()
        at += n
    return maps, scores
