"""Preprocess: whatever a camera delivered -> the model's input (uint8 BGR, height x width x 3).

Checks first, because cameras and networks do deliver broken frames: an empty or truncated image,
the wrong dtype, a strange channel count. Such a frame raises :class:`CorruptFrame`; the capture
loop counts it and moves on. Gray, BGRA and 16-bit frames are converted, not refused. Fitting to
the model's input is :func:`proad.data.folder.fit_image`, the function the model was trained and
evaluated with, under the model's own ``resize`` rule (stretch or letterbox).
"""

from __future__ import annotations

import cv2
import numpy as np

from proad.data.folder import fit_image
from proad.data.geometry import Size
from proad.data.tiling import NO_TILING, Grid


class CorruptFrame(ValueError):
    """The frame cannot be used; the message says why."""


def prepare(image: object, size: Size, resize: str = "stretch", grid: Grid = NO_TILING) -> np.ndarray:
    """A contiguous uint8 ``[height, width, 3]`` BGR frame at the model's input ``size`` (a square
    side or (height, width)), fitted by the model's ``resize`` rule (the function training used),
    or :class:`CorruptFrame`. A tiled camera's frame is ``rows`` x ``cols`` inputs, cut at inference
    (:mod:`proad.data.tiling`)."""
    if not isinstance(image, np.ndarray):
        raise CorruptFrame(f"not an image array ({type(image).__name__})")
    if image.size == 0 or image.ndim not in (2, 3) or min(image.shape[:2]) < 8:
        raise CorruptFrame(f"empty or truncated frame of shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise CorruptFrame(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] != 3:
        raise CorruptFrame(f"{image.shape[2]} channels, expected 1, 3 or 4")
    return np.ascontiguousarray(fit_image(image, size, resize, grid=grid))
