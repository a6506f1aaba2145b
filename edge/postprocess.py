"""Postprocess: an inferred frame -> what is published (header, map bytes, optional JPEG).

The decision is ``score >= threshold`` -> NG. The map goes on the wire as float16, or as uint8 with
``map_scale`` standing for 255 (a quarter of the bytes, enough for display). The frame is attached
as JPEG never, only for NG (what an archiver keeps), or always.

:func:`failsafe_result` is the NG published for a frame whose own result did not come in time
(:mod:`proad.edge.failsafe`): no score, an all-zero map, the frame attached as for any NG, and the
reason in the header.
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


def map_scale(cfg: PublishConfig, threshold: float) -> float:
    """What a uint8 byte of 255 stands for: the configured scale, else twice the threshold (1 if that is not > 0)."""
    if cfg.map_scale:
        return cfg.map_scale
    return 2.0 * threshold if threshold > 0 else 1.0


def _jpeg(frame: Frame, decision: str, cfg: PublishConfig) -> bytes | None:
    if cfg.jpeg == "always" or (cfg.jpeg == "ng" and decision == "NG"):
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        return buf.tobytes() if ok else None
    return None


def _result(
    frame: Frame, seq: int, result_id: str, threshold: float, model_id: str, cfg: PublishConfig,
    amap: np.ndarray, score: float | None, reason: str, latency: dict[str, float],
) -> tuple[FrameResult, np.ndarray, bytes | None]:
    decision = "NG" if score is None or score >= threshold else "OK"
    scale = map_scale(cfg, threshold)
    wire_map = encode_map(amap, cfg.map_dtype, scale)
    jpeg = _jpeg(frame, decision, cfg)
    header = FrameResult(
        camera_id=frame.camera_id,
        seq=seq,
        frame_index=frame.frame_index,
        result_id=result_id,
        capture_ts=frame.capture_ts,
        publish_ts=time.time(),
        latency_ms={k: round(v, 3) for k, v in latency.items()},
        score=score,
        threshold=float(threshold),
        decision=decision,
        reason=reason,  # type: ignore[arg-type]  # one of FrameResult's reasons, validated there
        model_id=model_id,
        map_shape=(int(amap.shape[0]), int(amap.shape[1])),
        map_dtype=cfg.map_dtype,
        map_scale=scale,
        has_frame=jpeg is not None,
        annotations=frame.annotations,
    )  # fmt: skip
    return header, wire_map, jpeg


def postprocess(
    item: Inferred, seq: int, result_id: str, threshold: float, model_id: str, cfg: PublishConfig
) -> tuple[FrameResult, np.ndarray, bytes | None]:
    t0 = time.perf_counter()
    frame = item.frame
    latency = {
        "preprocess": frame.preprocess_ms,
        "queue": (item.infer_start - frame.capture_mono) * 1000,
        "infer": (item.infer_end - item.infer_start) * 1000,
    }
    header, wire_map, jpeg = _result(frame, seq, result_id, threshold, model_id, cfg, item.amap, float(item.score),
                                     "score", latency)  # fmt: skip
    now = time.perf_counter()  # post and total include encoding the map and the JPEG
    header.latency_ms["post"] = round((now - t0) * 1000, 3)
    header.latency_ms["total"] = round((now - frame.capture_mono) * 1000, 3)
    return header, wire_map, jpeg


def failsafe_result(
    frame: Frame, reason: str, seq: int, result_id: str, threshold: float, model_id: str,
    map_shape: tuple[int, int], cfg: PublishConfig,
) -> tuple[FrameResult, np.ndarray, bytes | None]:
    """NG for a frame with no result of its own; ``reason``: timeout, queue_full or backend_error."""
    latency = {"total": (time.perf_counter() - frame.capture_mono) * 1000}
    return _result(frame, seq, result_id, threshold, model_id, cfg, np.zeros(map_shape, np.float32), None, reason,
                   latency)  # fmt: skip
