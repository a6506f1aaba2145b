"""Status endpoint: a REP socket that answers any request with the telemetry snapshot as JSON.

``zmq`` REQ -> ``b"status"`` -> JSON (frames in, published, NG, dropped by reason, reconnects,
subscribers, latency percentiles, model, uptime). Runs in its own thread; only that thread touches
the socket.
"""

from __future__ import annotations

import json
import threading

import zmq

from proad.edge.publisher import bind
from proad.edge.telemetry import Telemetry


class StatusServer(threading.Thread):
    def __init__(self, endpoint: str, ctx: zmq.Context, telemetry: Telemetry) -> None:
        super().__init__(name="status", daemon=True)
        self.telemetry = telemetry
        self.stop_event = threading.Event()
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        bind(self.sock, endpoint, "status")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                if not self.sock.poll(200):
                    continue
                request = self.sock.recv()
                if request.strip() in (b"status", b""):
                    reply = self.telemetry.snapshot()
                else:
                    reply = {"error": f"unknown request {request[:32]!r}; send b'status'"}
                self.sock.send(json.dumps(reply).encode())
        finally:
            self.sock.close(0)

    def stop(self) -> None:
        self.stop_event.set()


def query_status(endpoint: str, timeout_ms: int = 2000) -> dict:
    """Ask a running daemon for its status (raises TimeoutError when it does not answer)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(b"status")
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no status answer from {endpoint} within {timeout_ms} ms")
        return json.loads(sock.recv())
    finally:
        sock.close(0)
