"""Anomaly-map overlays a person can look at: heatmap over the image, ground truth outlined."""

from __future__ import annotations

import cv2
import numpy as np


def heatmap(amap: np.ndarray, vmax: float) -> np.ndarray:
    """JET colours of ``amap`` from 0 to ``vmax`` (BGR uint8, the map's size)."""
    norm = np.clip(amap / max(vmax, 1e-8), 0, 1)
    return cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    vmax: float,
    mask: np.ndarray | None = None,
    text: str | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """BGR uint8 image with a JET heatmap of ``amap`` (0 .. ``vmax``) blended over it.

    The same ``vmax`` for every image of a category keeps the colours comparable across images.
    The ground-truth outline is drawn in white, the caption at the top left.
    """
    heat = heatmap(amap, vmax)
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)
    if mask is not None and mask.any():
        m = mask.astype(np.uint8)
        if m.shape != image.shape[:2]:
            m = cv2.resize(m, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    if text:
        cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out
