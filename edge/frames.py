"""A captured frame and the per-camera frame queues between capture and inference.

The queues hold at most ``size`` frames per camera. When inference is slower than the cameras,
putting a new frame drops the *oldest* waiting one (a line wants the newest picture, not a backlog),
and the caller counts it. With ``wait=True`` (``queues.when_full: wait``) ``put`` waits for room
instead and nothing is dropped: what a file, a folder or a test that counts every frame wants.
``take`` hands the inference stage up to ``max_n`` frames, one per camera in turn, so several
cameras share a batch and none starves.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    camera_id: str
    frame_index: int
    capture_ts: float  # wall clock, for the header
    capture_mono: float  # monotonic, for latencies
    image: np.ndarray  # preprocessed: uint8 [S, S, 3] BGR
    preprocess_ms: float = 0.0
    annotations: dict[str, str] = field(default_factory=dict)


class FrameQueues:
    def __init__(self, camera_ids: list[str], size: int, wait: bool = False) -> None:
        self.size, self.wait = size, wait
        self.queues: dict[str, deque[Frame]] = {c: deque() for c in camera_ids}
        self.cond = threading.Condition()
        self.closed = False
        self.released = False  # stopping: a waiting put goes in at once (it was accepted), past the size
        self._order = list(camera_ids)

    def put(self, frame: Frame) -> Frame | None:
        """Queue ``frame``; returns the frame dropped to make room, if any (never when waiting for room)."""
        with self.cond:
            q = self.queues[frame.camera_id]
            dropped = None
            if self.wait:
                while len(q) >= self.size and not self.released:
                    self.cond.wait()
            elif len(q) >= self.size:
                dropped = q.popleft()
            q.append(frame)
            self.cond.notify_all()
        return dropped

    def release(self) -> None:
        """Stop waiting for room: a put that waits (and every later one) queues its frame at once."""
        with self.cond:
            self.released = True
            self.cond.notify_all()

    def take(self, max_n: int, timeout: float) -> list[Frame] | None:
        """Up to ``max_n`` frames (round robin over cameras); [] on timeout; None once closed and empty."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(self.queues.values()):
                if self.closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self.cond.wait(left)
            batch: list[Frame] = []
            while len(batch) < max_n and any(self.queues.values()):
                for cam in self._order:
                    q = self.queues[cam]
                    if q and len(batch) < max_n:
                        batch.append(q.popleft())
            # start the next round robin after the last camera served
            if batch:
                last = self._order.index(batch[-1].camera_id)
                self._order = self._order[last + 1 :] + self._order[: last + 1]
                self.cond.notify_all()  # room for a put that waits
            return batch

    def pending(self) -> int:
        with self.cond:
            return sum(len(q) for q in self.queues.values())

    def close(self) -> None:
        """No more frames will come; ``take`` drains what is left, then returns None."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
