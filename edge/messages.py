"""The wire format (DESIGN §5): one multipart message per frame.

::

    [topic, header, anomaly_map, (frame)]
    topic   b"proad/<camera_id>/<OK|NG>"       subscribe to a prefix: one camera, or one camera's NG
    header  JSON of FrameResult                schema version, ids, times, latencies, score, decision...
    map     raw bytes, float16 or uint8, shape and dtype in the header (uint8: value = byte / 255 * map_scale)
    frame   JPEG of the input frame, when the header says has_frame

``seq`` is contiguous per camera over published results, so a subscriber counts what it missed;
``frame_index`` counts captured frames, so its gaps are the daemon's own drops.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
TOPIC_PREFIX = b"proad/"
MAX_HEADER_BYTES = 64 * 1024


class WireError(ValueError):
    """A message that is not a valid proad result (truncated, malformed, unknown schema)."""


class FrameResult(BaseModel):
    """The header of one published result."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = SCHEMA_VERSION
    camera_id: str = Field(max_length=64)
    seq: int = Field(ge=0, description="contiguous per camera over published results")
    frame_index: int = Field(ge=0, description="per camera capture counter; gaps are frames the daemon dropped")
    capture_ts: float = Field(description="unix time the frame was captured")
    publish_ts: float
    latency_ms: dict[str, float] = Field(default_factory=dict, description="per stage: queue, infer, post, total")
    score: float
    threshold: float
    decision: Literal["OK", "NG"]
    reason: str = Field("score", max_length=64, description="why this decision: score, timeout...")
    model_id: str = Field(max_length=64)
    map_shape: tuple[int, int]
    map_dtype: Literal["float16", "uint8"]
    map_scale: float = Field(1.0, gt=0, description="uint8 maps: the value a byte of 255 stands for")
    has_frame: bool = False
    annotations: dict[str, str] = Field(default_factory=dict, description="source facts, e.g. injected defect")


def topic(camera_id: str, decision: str) -> bytes:
    return TOPIC_PREFIX + f"{camera_id}/{decision}".encode()


def subscription(camera_id: str | None = None, decision: str | None = None) -> bytes:
    """The SUB prefix for a camera and/or decision (None: every camera / both decisions)."""
    if camera_id is None:
        if decision is not None:
            raise ValueError("filtering by decision needs a camera id (topics are proad/<camera>/<decision>)")
        return TOPIC_PREFIX
    return topic(camera_id, decision or "")


def encode_map(amap: np.ndarray, dtype: str, scale: float) -> np.ndarray:
    """The map as sent: float16, or uint8 with ``scale`` standing for 255."""
    if dtype == "float16":
        return np.ascontiguousarray(amap, dtype=np.float16)
    return np.clip(np.rint(amap * (255.0 / scale)), 0, 255).astype(np.uint8)


def decode(frames: list[bytes] | list) -> tuple[FrameResult, np.ndarray, bytes | None]:
    """Parse a received multipart message; raises :class:`WireError` naming what is wrong."""
    if len(frames) not in (3, 4):
        raise WireError(f"expected 3 or 4 message parts, got {len(frames)}")
    parts = [bytes(f.buffer) if hasattr(f, "buffer") else bytes(f) for f in frames]
    topic_b, header_b, map_b = parts[:3]
    if not topic_b.startswith(TOPIC_PREFIX):
        raise WireError(f"topic {topic_b[:40]!r} is not a proad topic")
    if len(header_b) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(header_b)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = FrameResult.model_validate_json(header_b)
    except ValueError as exc:
        raise WireError(f"invalid header: {str(exc).splitlines()[0][:200]}") from exc
    dtype = np.float16 if header.map_dtype == "float16" else np.uint8
    h, w = header.map_shape
    if len(map_b) != h * w * np.dtype(dtype).itemsize:
        raise WireError(f"map has {len(map_b)} bytes, header says {h}x{w} {header.map_dtype}")
    amap = np.frombuffer(map_b, dtype=dtype).reshape(h, w)
    if header.has_frame != (len(parts) == 4):
        raise WireError("frame part missing or unexpected")
    return header, amap, parts[3] if len(parts) == 4 else None


def map_to_float(header: FrameResult, amap: np.ndarray) -> np.ndarray:
    """The anomaly map in float32, whatever it was sent as."""
    if header.map_dtype == "uint8":
        return amap.astype(np.float32) * (header.map_scale / 255.0)
    return amap.astype(np.float32)
