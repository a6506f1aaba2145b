"""Counters, gauges and latencies of the running daemon, safe to update from every stage thread.

One source of truth for both health views: ``snapshot()`` is what the status endpoint answers, and
the Prometheus collector (:mod:`proad.edge.metrics`) reads the same numbers. Per camera: frames in,
published, NG, fail-safe NG by reason, dropped by reason, reconnects. Daemon wide: events (NG
delivered to archivers, redeliveries, refused CURVE handshakes, invalid messages, backend errors),
gauges (spool depth, archivers connected), connections per socket, and per-stage latency as recent
percentiles plus cumulative histogram buckets.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

import numpy as np

LATENCY_WINDOW = 2048  # most recent samples per stage, for percentiles
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)


class Histogram:
    """Cumulative counts per bucket (Prometheus semantics: ``le`` upper bounds, then +Inf)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip([*map(str, LATENCY_BUCKETS_MS), "+Inf"], self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Telemetry:
    PER_CAMERA = ("frames_in", "published", "ng", "reconnects")

    def __init__(self, model: dict[str, Any] | None = None) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.model = model or {}
        self.frames_in: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.ng: Counter[str] = Counter()
        self.reconnects: Counter[str] = Counter()
        self.dropped: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.failsafe: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.events: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self.connections: Counter[str] = Counter()
        self.camera_state: dict[str, str] = {}
        self.latency: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=LATENCY_WINDOW))
        self.histograms: defaultdict[str, Histogram] = defaultdict(Histogram)

    def count(self, counter: str, camera: str, n: int = 1) -> None:
        if counter not in self.PER_CAMERA:
            raise ValueError(f"unknown per-camera counter {counter!r}")
        with self.lock:
            getattr(self, counter)[camera] += n

    def drop(self, camera: str, reason: str, n: int = 1) -> None:
        """A frame or result that went nowhere, and why."""
        with self.lock:
            self.dropped[reason][camera] += n

    def failsafe_ng(self, camera: str, reason: str) -> None:
        """A frame published as NG because its own result did not come in time, and why."""
        with self.lock:
            self.failsafe[reason][camera] += 1

    def event(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.events[name] += n

    def gauge(self, name: str, value: float) -> None:
        with self.lock:
            self.gauges[name] = value

    def set_camera(self, camera: str, state: str) -> None:
        with self.lock:
            self.camera_state[camera] = state

    def add_connection(self, socket: str, delta: int) -> None:
        with self.lock:
            self.connections[socket] = max(0, self.connections[socket] + delta)

    def observe(self, latencies: dict[str, float]) -> None:
        with self.lock:
            for stage, ms in latencies.items():
                self.latency[stage].append(ms)
                self.histograms[stage].add(ms)

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
                "failsafe_ng": {reason: dict(c) for reason, c in self.failsafe.items()},
                "dropped": {reason: dict(c) for reason, c in self.dropped.items()},
                "reconnects": dict(self.reconnects),
                "cameras": dict(self.camera_state),
                "subscribers": self.connections["publish"],
                "connections": dict(self.connections),
                "events": dict(self.events),
                "gauges": dict(self.gauges),
                "latency_ms": lat,
            }

    def histogram_snapshot(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        with self.lock:
            return {stage: (h.cumulative(), h.sum) for stage, h in self.histograms.items()}
