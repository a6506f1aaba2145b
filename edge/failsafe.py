"""The fail-safe: every frame the daemon accepted gets a result within its inspection window.

A PLC waiting for a part's verdict must never wait forever. With ``failsafe.window_ms`` set, each
frame is registered when it is accepted from the camera, and the output stage publishes, whichever
comes first:

- its own result, if it is ready in time;
- an NG with ``reason="timeout"`` once its window has passed without one (the late result, if it
  ever comes, is discarded and counted, because the verdict was already given);
- an NG with ``reason="queue_full"`` or ``"backend_error"`` at once, when the frame was dropped
  from a full queue or the backend failed on it (no result will ever come).

Off (``window_ms: None``), nothing is tracked: dropped frames are only counted, as in DESIGN §6.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from proad.edge.frames import Frame

Key = tuple[str, int]  # (camera id, frame index)


class InspectionWindows:
    def __init__(self, window_ms: float | None) -> None:
        self.window_s = None if window_ms is None else window_ms / 1000.0
        self.lock = threading.Lock()
        self.pending: OrderedDict[Key, tuple[Frame, float, str]] = OrderedDict()  # -> (frame, due, reason)

    @property
    def enabled(self) -> bool:
        return self.window_s is not None

    def accept(self, frame: Frame) -> None:
        """A frame entered the pipeline: its window starts at its capture."""
        if self.window_s is None:
            return
        with self.lock:
            self.pending[(frame.camera_id, frame.frame_index)] = (frame, frame.capture_mono + self.window_s, "timeout")

    def give_up(self, frame: Frame, reason: str) -> None:
        """No result will come for ``frame`` (dropped, backend error): its fail-safe NG is due now."""
        if self.window_s is None:
            return
        with self.lock:
            key = (frame.camera_id, frame.frame_index)
            if key in self.pending:
                self.pending[key] = (frame, 0.0, reason)

    def resolve(self, frame: Frame) -> bool:
        """The frame's own result is here: True to publish it, False if its fail-safe NG already went out."""
        if self.window_s is None:
            return True
        with self.lock:
            return self.pending.pop((frame.camera_id, frame.frame_index), None) is not None

    def due(self, now: float | None = None) -> list[tuple[Frame, str]]:
        """Frames whose window has passed (or that were given up), oldest first; they leave the tracker."""
        if self.window_s is None:
            return []
        now = time.perf_counter() if now is None else now
        out = []
        with self.lock:
            for key, (frame, due, reason) in list(self.pending.items()):
                if due <= now:
                    out.append((frame, reason))
                    del self.pending[key]
        return out

    def next_due_in(self, now: float | None = None, cap: float = 0.1) -> float:
        """Seconds until the earliest window closes (at most ``cap``), for the output stage's wait."""
        if self.window_s is None:
            return cap
        now = time.perf_counter() if now is None else now
        with self.lock:
            if not self.pending:
                return cap
            earliest = min(due for _, due, _ in self.pending.values())
        return max(0.0, min(cap, earliest - now))
