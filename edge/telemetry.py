"""Counters and latency percentiles of the running daemon, safe to update from every stage thread.

``snapshot()`` is what the status endpoint answers: frames in, published, NG, dropped by reason,
camera reconnects, backend errors, subscribers, latency percentiles per stage, model, uptime.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

import numpy as np

LATENCY_WINDOW = 2048  # most recent samples per stage


class Telemetry:
    def __init__(self, model: dict[str, Any] | None = None) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.model = model or {}
        self.frames_in: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.ng: Counter[str] = Counter()
        self.dropped: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.reconnects: Counter[str] = Counter()
        self.camera_state: dict[str, str] = {}
        self.subscribers = 0
        self.latency: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=LATENCY_WINDOW))

    def count(self, counter: str, camera: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[camera] += n

    def drop(self, camera: str, reason: str, n: int = 1) -> None:
        with self.lock:
            self.dropped[reason][camera] += n

    def set_camera(self, camera: str, state: str) -> None:
        with self.lock:
            self.camera_state[camera] = state

    def add_subscribers(self, delta: int) -> None:
        with self.lock:
            self.subscribers = max(0, self.subscribers + delta)

    def observe(self, latencies: dict[str, float]) -> None:
        with self.lock:
            for stage, ms in latencies.items():
                self.latency[stage].append(ms)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lat = {}
            for stage, values in self.latency.items():
                arr = np.fromiter(values, float)
                lat[stage] = {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)} if arr.size else {}
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "model": self.model,
                "frames_in": dict(self.frames_in),
                "published": dict(self.published),
                "ng": dict(self.ng),
                "dropped": {reason: dict(c) for reason, c in self.dropped.items()},
                "reconnects": dict(self.reconnects),
                "cameras": dict(self.camera_state),
                "subscribers": self.subscribers,
                "latency_ms": lat,
            }
