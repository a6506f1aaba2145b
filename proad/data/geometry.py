"""The model's input size: a square side or a (height, width) rectangle.

Cameras are rarely square (4:3, 16:9, line-scan strips), and squashing their frames into a square
changes the shape of every part and defect; padding them (``resize: letterbox``) spends input
pixels on mirrored borders. A rectangular input keeps the frame's aspect *and* all of the input's
pixels for the part: ``image_size`` is either one int (a square, the default) or ``[height,
width]``, each a multiple of the encoder's stride. The encoder and the decoder are convolutional
and attention without positions, so the token grid simply becomes ``height / 16`` x ``width / 16``.

Every consumer (preprocessing, tiling, the model's map tail, export, the engine's shapes, the
daemon) reads the size through :func:`size_hw`; the configs that carry it (``ModelConfig``, the ONNX
metadata) declare it as :data:`ImageSize`. Numpy-free and torch-free: the edge runtime imports it.
"""

from __future__ import annotations

from numbers import Integral
from typing import Annotated

from pydantic import AfterValidator

#: A square side in pixels, or (height, width).
Size = int | tuple[int, int]


def size_hw(size: Size) -> tuple[int, int]:
    """``(height, width)`` of an input size (a square side gives both)."""
    if isinstance(size, Integral):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def one_spelling(size: Size) -> Size:
    """A square given as a pair is the square's side: ``[256, 256]`` is ``256``, so equal models have
    equal configs and metadata."""
    height, width = size_hw(size)
    return height if height == width else (height, width)


#: A :data:`Size` field of a pydantic model, spelt one way (:func:`one_spelling`).
ImageSize = Annotated[int | tuple[int, int], AfterValidator(one_spelling)]


def size_text(size: Size) -> str:
    """``"256x256"`` for a square; ``"256x448 (height x width)"`` for a rectangle, so the order
    is never guessed (image sizes are usually written width first, the config is height first)."""
    height, width = size_hw(size)
    return f"{height}x{width}" if height == width else f"{height}x{width} (height x width)"
