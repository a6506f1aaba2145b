"""The PUB side of the wire: one multipart message per result, map sent without a copy.

SNDHWM and LINGER are set before ``bind`` (they count messages and apply to connections made
after they are set). The socket is an XPUB: it sends exactly as a PUB does (it never blocks: a
subscriber that does not keep up loses messages at its HWM, which its ``seq`` numbers reveal, and
nobody else slows down), and it also hands us each subscription as it takes effect. That is the
one sure sign that a subscriber will get every result published from then on (ZeroMQ's "slow
joiner": a SUB that has connected, or even finished its CURVE handshake, may not have subscribed
yet), so the status endpoint reports subscriptions and an embedder or a test can wait for them
(:meth:`Publisher.wait_for_subscriptions`). The socket monitor counts connected subscribers (and
refused CURVE handshakes).
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
    """Owned by one thread at a time: the daemon's output thread once it runs, the creator before."""

    def __init__(
        self, cfg: PublishConfig, ctx: zmq.Context, telemetry: Telemetry, curve: CurveServer | None = None
    ) -> None:
        self.telemetry = telemetry
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, cfg.hwm)
        self.sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, also a second one to the same topic
        self.monitor, self.endpoint = serve(self.sock, cfg.endpoint, "publish", telemetry, curve)
        self.monitor_due = 0.0
        self.subscriptions = 0  # subscribe requests that took effect, since start

    def send(self, topic: bytes, header: bytes, amap: np.ndarray | bytes, jpeg: bytes | None) -> None:
        now = time.monotonic()
        if now >= self.monitor_due:  # connection events are not urgent: look ten times a second, not per map
            self.poll_events()
            self.monitor_due = now + 0.1
        parts: list = [topic, header, amap]
        if jpeg is not None:
            parts.append(jpeg)
        self.sock.send_multipart(parts, copy=False)

    def poll_events(self) -> None:
        """Count what happened on the socket: connections (monitor) and subscriptions (XPUB)."""
        self.monitor.poll()
        while True:
            try:
                message = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":  # b"\x00<topic>" is an unsubscription
                self.subscriptions += 1
                self.telemetry.event("subscriptions.publish")

    def wait_for_subscriptions(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` subscriptions have taken effect (True) or ``timeout_s`` passed (False).

        Only while this thread owns the socket, i.e. before the daemon starts: every result published
        after it returns True reaches those subscribers."""
        deadline = time.monotonic() + timeout_s
        self.poll_events()
        while self.subscriptions < count:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return False
            self.sock.poll(min(left_ms, 100))  # and the monitor in between
            self.poll_events()
        return True

    def close(self) -> None:
        self.poll_events()
        self.monitor.close()
        self.sock.close()  # LINGER: queued messages get linger_ms to leave
