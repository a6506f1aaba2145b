"""Postprocess: an inferred frame -> what is published (header, map bytes, optional JPEG).

The decision is ``score >= threshold`` -> NG. The map goes on the wire as float16, or as uint8 with
``map_scale`` standing for 255 (a quarter of the bytes, enough for display). The frame is attached
as JPEG never, only for NG (what an archiver keeps), or always.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from proad.edge.config import PublishConfig
from proad.edge.frames import Frame
from proad.edge.messages import FrameResult, encode_map


@dataclass
class Inferred:
    frame: Frame
    amap: np.ndarray
    score: float
    infer_start: float  # monotonic
    infer_end: float


def postprocess(
    item: Inferred, seq: int, threshold: float, model_id: str, cfg: PublishConfig
) -> tuple[FrameResult, np.ndarray, bytes | None]:
    t0 = time.perf_counter()
    frame = item.frame
    decision = "NG" if item.score >= threshold else "OK"
    scale = cfg.map_scale or 2.0 * threshold
    wire_map = encode_map(item.amap, cfg.map_dtype, scale)
    jpeg = None
    if cfg.jpeg == "always" or (cfg.jpeg == "ng" and decision == "NG"):
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        jpeg = buf.tobytes() if ok else None
    now = time.perf_counter()
    latency = {
        "preprocess": frame.preprocess_ms,
        "queue": (item.infer_start - frame.capture_mono) * 1000,
        "infer": (item.infer_end - item.infer_start) * 1000,
        "post": (now - t0) * 1000,
        "total": (now - frame.capture_mono) * 1000,
    }
    header = FrameResult(
        camera_id=frame.camera_id,
        seq=seq,
        frame_index=frame.frame_index,
        capture_ts=frame.capture_ts,
        publish_ts=time.time(),
        latency_ms={k: round(v, 3) for k, v in latency.items()},
        score=float(item.score),
        threshold=float(threshold),
        decision=decision,
        model_id=model_id,
        map_shape=(int(item.amap.shape[0]), int(item.amap.shape[1])),
        map_dtype=cfg.map_dtype,
        map_scale=scale,
        has_frame=jpeg is not None,
        annotations=frame.annotations,
    )
    return header, wire_map, jpeg
