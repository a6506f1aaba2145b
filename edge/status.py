"""Status endpoint: a REP socket that answers ``b"status"`` with the telemetry snapshot as JSON.

``zmq`` REQ -> ``b"status"`` -> JSON (frames in, published, NG, fail-safe NG, dropped by reason,
reconnects, subscribers and archivers connected, spool depth, refused CURVE clients, latency
percentiles, model, uptime). Runs in its own thread; only that thread touches the socket. Any
other request gets an error answer, never silence (REQ clients would hang).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import zmq

from proad.edge.security import ClientKeys, CurveServer
from proad.edge.sockets import SocketThread, serve
from proad.edge.telemetry import Telemetry


class StatusServer(SocketThread):
    def __init__(
        self, endpoint: str, ctx: zmq.Context, telemetry: Telemetry, curve: CurveServer | None = None
    ) -> None:
        super().__init__("status")
        self.telemetry = telemetry
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # a request is one word; anything bigger is dropped
        self.monitor, self.endpoint = serve(self.sock, endpoint, "status", telemetry, curve)
        self.count_invalid = partial(telemetry.event, "invalid_requests.status")

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.monitor.poll()
                if not self.sock.poll(200):
                    continue
                request = b"".join(self.sock.recv_multipart())
                reply = answer(request, self.telemetry.snapshot, self.count_invalid)
                self.sock.send(json.dumps(reply).encode())
        finally:
            self.monitor.close()
            self.sock.close(0)


def answer(request: bytes, snapshot: Callable[[], dict], invalid: Callable[[], None]) -> dict:
    """The reply to one status request: ``snapshot()`` for ``b"status"`` (or an empty request), else an
    error naming what to send, after ``invalid()`` has counted it. Every status socket (the daemon's,
    the bridges') answers through this, so their clients see one protocol."""
    if request.strip() in (b"status", b""):
        return snapshot()
    invalid()
    return {"error": f"unknown request {request[:32]!r}; send b'status'"}


def query_status(endpoint: str, timeout_ms: int = 2000, keys: ClientKeys | None = None) -> dict:
    """Ask a running daemon for its status (raises TimeoutError when it does not answer)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    sock.connect(endpoint)
    try:
        sock.send(b"status")
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no status answer from {endpoint} within {timeout_ms} ms")
        return json.loads(sock.recv())
    finally:
        sock.close(0)
