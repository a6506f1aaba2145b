"""The wire format (DESIGN §5): one multipart message per frame.

::

    [topic, header, anomaly_map, (frame)]
    topic   b"proad/<camera_id>/<OK|NG>"       subscribe to a prefix: one camera, or one camera's NG
    header  JSON of FrameResult                schema version, ids, times, latencies, score, decision...
    map     raw bytes, float16 or uint8, shape and dtype in the header (uint8: value = byte / 255 * map_scale)
    frame   JPEG of the input frame, when the header says has_frame

``seq`` is contiguous per camera over published results, so a subscriber counts what it missed;
``frame_index`` counts captured frames, so its gaps are the daemon's own drops. ``result_id``
(``<run>-<camera>-<seq>``) is unique across daemon restarts: the NG channel delivers at least once,
and archivers drop duplicates by it.

Parsing is defensive: whatever arrives (truncated multipart, a huge or hostile header, an unknown
schema version, a map of the wrong size) raises :class:`WireError` with the reason, and nothing else.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1
TOPIC_PREFIX = b"proad/"
MAX_HEADER_BYTES = 16 * 1024
MAX_MAP_SIDE = 8192

_Key = Annotated[str, StringConstraints(max_length=64)]
_Text = Annotated[str, StringConstraints(max_length=256)]


class WireError(ValueError):
    """A message that is not a valid proad result (truncated, malformed, unknown schema)."""


class FrameResult(BaseModel):
    """The header of one published result."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = SCHEMA_VERSION
    camera_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    seq: int = Field(ge=0, lt=2**63, description="contiguous per camera over published results")
    frame_index: int = Field(ge=0, lt=2**63, description="per camera capture counter; gaps are the daemon's drops")
    result_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,160}$", description="<run>-<camera>-<seq>, unique")
    capture_ts: float = Field(allow_inf_nan=False, description="unix time the frame was captured")
    publish_ts: float = Field(allow_inf_nan=False)
    latency_ms: dict[_Key, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, max_length=16, description="per stage: preprocess, queue, infer, post, total"
    )
    score: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        description="None when no result came in time (a fail-safe NG)"
    )
    threshold: float = Field(allow_inf_nan=False)
    decision: Literal["OK", "NG"]
    reason: Literal["score", "timeout", "queue_full", "backend_error"] = Field(
        "score", description="score: the model decided; otherwise the fail-safe NG and why no result came"
    )
    model_id: str = Field(max_length=64)
    map_shape: tuple[Annotated[int, Field(ge=1, le=MAX_MAP_SIDE)], Annotated[int, Field(ge=1, le=MAX_MAP_SIDE)]]
    map_dtype: Literal["float16", "uint8"]
    map_scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="uint8 maps: what a byte of 255 stands for")
    has_frame: bool = False
    annotations: dict[_Key, _Text] = Field(
        default_factory=dict, max_length=32, description="source facts, e.g. the injected defect"
    )


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


def as_bytes(part: Any) -> bytes:
    """A received part (``zmq.Frame`` or bytes) as bytes."""
    return bytes(part.buffer) if hasattr(part, "buffer") else bytes(part)


def decode_header(header_b: bytes) -> FrameResult:
    """Validate a header; an unknown schema version is named as such (a newer daemon, not garbage).

    Valid headers take pydantic's JSON fast path; only a refused one is parsed again, to say why."""
    if len(header_b) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(header_b)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        return FrameResult.model_validate_json(header_b)
    except ValueError:
        pass
    try:
        raw = json.loads(header_b)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"header is not JSON: {str(exc)[:120]}") from exc
    if not isinstance(raw, dict):
        raise WireError(f"header is a JSON {type(raw).__name__}, not an object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WireError(f"unknown schema version {str(version)[:20]!r} (this reader understands {SCHEMA_VERSION})")
    try:
        return FrameResult.model_validate(raw)
    except ValueError as exc:
        raise WireError(f"invalid header: {' '.join(str(exc).split())[:240]}") from exc


def decode_map(header: FrameResult, map_b: bytes | memoryview) -> np.ndarray:
    """The map as a read-only array over the received bytes (no copy)."""
    dtype = np.dtype(np.float16 if header.map_dtype == "float16" else np.uint8)
    h, w = header.map_shape
    if len(map_b) != h * w * dtype.itemsize:
        raise WireError(f"map has {len(map_b)} bytes, header says {h}x{w} {header.map_dtype}")
    return np.frombuffer(map_b, dtype=dtype).reshape(h, w)


def decode(frames: list[bytes] | list) -> tuple[FrameResult, np.ndarray, bytes | None]:
    """Parse a received multipart message; raises :class:`WireError` naming what is wrong."""
    if len(frames) not in (3, 4):
        raise WireError(f"expected 3 or 4 message parts, got {len(frames)}")
    topic_b, header_b = as_bytes(frames[0]), as_bytes(frames[1])
    try:  # the map is not copied: an array over the received buffer
        map_b = memoryview(frames[2].buffer if hasattr(frames[2], "buffer") else frames[2]).cast("B")
    except (TypeError, ValueError) as exc:
        raise WireError(f"map part is not a contiguous buffer: {exc}") from exc
    if not topic_b.startswith(TOPIC_PREFIX):
        raise WireError(f"topic {topic_b[:40]!r} is not a proad topic")
    header = decode_header(header_b)
    if topic_b != topic(header.camera_id, header.decision):
        raise WireError(f"topic {topic_b[:80]!r} does not match the header ({header.camera_id}, {header.decision})")
    amap = decode_map(header, map_b)
    if header.has_frame != (len(frames) == 4):
        raise WireError("frame part missing or unexpected")
    return header, amap, as_bytes(frames[3]) if len(frames) == 4 else None


def map_to_float(header: FrameResult, amap: np.ndarray) -> np.ndarray:
    """The anomaly map in float32, whatever it was sent as."""
    if header.map_dtype == "uint8":
        return amap.astype(np.float32) * (header.map_scale / 255.0)
    return amap.astype(np.float32)
