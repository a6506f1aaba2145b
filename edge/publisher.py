"""The PUB side of the wire: one multipart message per result, map sent without a copy.

SNDHWM and LINGER are set before ``bind`` (they count messages and apply to connections made
after they are set). A PUB socket never blocks: a subscriber that does not keep up loses messages
at its HWM, which its ``seq`` numbers reveal, and nobody else slows down. The socket monitor
counts connected subscribers for the status endpoint.
"""

from __future__ import annotations

import logging

import numpy as np
import zmq

from proad.edge.config import PublishConfig
from proad.edge.messages import FrameResult, topic
from proad.edge.telemetry import Telemetry

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A socket could not be set up (address in use, bad endpoint)."""


def bind(sock: zmq.Socket, endpoint: str, what: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise StartupError(f"cannot bind the {what} socket to {endpoint}: {exc}") from exc


class Publisher:
    def __init__(self, cfg: PublishConfig, ctx: zmq.Context, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, cfg.hwm)
        self.sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        bind(self.sock, cfg.endpoint, "publish")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _poll_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            self.telemetry.add_subscribers(1 if event == zmq.EVENT_ACCEPTED else -1)

    def send(self, header: FrameResult, amap: np.ndarray, jpeg: bytes | None) -> None:
        self._poll_monitor()
        parts: list = [topic(header.camera_id, header.decision), header.model_dump_json().encode(), amap]
        if jpeg is not None:
            parts.append(jpeg)
        self.sock.send_multipart(parts, copy=False)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()  # LINGER: queued messages get linger_ms to leave
