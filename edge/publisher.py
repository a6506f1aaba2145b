"""The PUB side of the wire: one multipart message per result, map sent without a copy.

SNDHWM and LINGER are set before ``bind`` (they count messages and apply to connections made
after they are set). A PUB socket never blocks: a subscriber that does not keep up loses messages
at its HWM, which its ``seq`` numbers reveal, and nobody else slows down. The socket monitor
counts connected subscribers (and refused CURVE handshakes) for the status endpoint.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from proad.edge.config import PublishConfig
from proad.edge.security import CurveServer
from proad.edge.sockets import serve
from proad.edge.telemetry import Telemetry


class Publisher:
    def __init__(
        self, cfg: PublishConfig, ctx: zmq.Context, telemetry: Telemetry, curve: CurveServer | None = None
    ) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, cfg.hwm)
        self.sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        self.monitor, self.endpoint = serve(self.sock, cfg.endpoint, "publish", telemetry, curve)
        self.monitor_due = 0.0

    def send(self, topic: bytes, header: bytes, amap: np.ndarray | bytes, jpeg: bytes | None) -> None:
        now = time.monotonic()
        if now >= self.monitor_due:  # connection events are not urgent: look ten times a second, not per map
            self.monitor.poll()
            self.monitor_due = now + 0.1
        parts: list = [topic, header, amap]
        if jpeg is not None:
            parts.append(jpeg)
        self.sock.send_multipart(parts, copy=False)

    def close(self) -> None:
        self.monitor.poll()
        self.monitor.close()
        self.sock.close()  # LINGER: queued messages get linger_ms to leave
