"""Subscriber library: connect, filter by camera and decision, iterate typed results.

::

    with Subscriber("tcp://127.0.0.1:5555", camera="line1") as sub:
        for r in sub.iter(timeout_ms=1000):
            print(r.header.seq, r.header.decision, r.anomaly_map().max(), sub.missed["line1"])

RCVHWM is set before ``connect`` (it counts messages). Sequence numbers are contiguous per camera,
so ``missed`` counts results lost on the way (a slow reader dropped at its HWM). That count only
means something without a decision filter (an NG-only subscription skips OK results on purpose).
A message that is not a valid result is counted in ``invalid`` and skipped, never raised.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import zmq

from proad.edge.messages import FrameResult, WireError, decode, map_to_float, subscription
from proad.edge.security import ClientKeys

log = logging.getLogger(__name__)


@dataclass
class Received:
    header: FrameResult
    map: np.ndarray  # as sent: float16 or uint8
    frame_jpeg: bytes | None
    missed_before: int  # results of this camera lost just before this one

    def anomaly_map(self) -> np.ndarray:
        """The map in float32 (uint8 maps scaled back)."""
        return map_to_float(self.header, self.map)

    def frame(self) -> np.ndarray | None:
        """The attached frame, decoded (BGR), if any."""
        if self.frame_jpeg is None:
            return None
        return cv2.imdecode(np.frombuffer(self.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)


class Subscriber:
    def __init__(
        self,
        endpoint: str,
        camera: str | None = None,
        decision: str | None = None,
        hwm: int = 1000,
        ctx: zmq.Context | None = None,
        keys: ClientKeys | None = None,
    ) -> None:
        """``keys``: this subscriber's CURVE keys, when the daemon runs with CURVE."""
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 256 * 1024 * 1024)  # a hostile publisher cannot exhaust memory
        if keys is not None:
            keys.apply(self.sock)
        self.sock.setsockopt(zmq.SUBSCRIBE, subscription(camera, decision))
        self.sock.connect(endpoint)
        self.track_missed = decision is None
        self.last_seq: dict[str, int] = {}
        self.missed: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.invalid = 0

    def recv(self, timeout_ms: int | None = None) -> Received | None:
        """The next valid result, or None when ``timeout_ms`` passes without one."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            try:  # under load a message is usually waiting: take it without a poll
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                left = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
                if not self.sock.poll(left):
                    return None
                continue
            try:
                header, amap, jpeg = decode(parts)
            except WireError as exc:
                self.invalid += 1
                log.warning("skipped an invalid message: %s", exc)
                continue
            return Received(header, amap, jpeg, self._account(header))

    def _account(self, header: FrameResult) -> int:
        cam = header.camera_id
        self.received[cam] += 1
        last = self.last_seq.get(cam)
        self.last_seq[cam] = header.seq
        if not self.track_missed or last is None or header.seq <= last:  # first, or the daemon restarted
            return 0
        gap = header.seq - last - 1
        self.missed[cam] += gap
        return gap

    def latest(self) -> Received | None:
        """Drain what is queued and return only the newest result (a viewer's 'latest frame' slot;
        ZeroMQ's CONFLATE cannot do this for multipart messages)."""
        newest = None
        while (r := self.recv(timeout_ms=0)) is not None:
            newest = r
        return newest

    def iter(self, timeout_ms: int | None = None) -> Iterator[Received]:
        """Results until ``timeout_ms`` passes without one (forever when None)."""
        while (r := self.recv(timeout_ms)) is not None:
            yield r

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
