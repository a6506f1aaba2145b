"""What every socket the daemon binds shares: bind with a clear error, CURVE when configured, and a
monitor that counts who connects and who fails authentication.

The monitor is read by the thread that owns the socket (ZeroMQ sockets are not thread safe), so
each owner calls :meth:`SocketMonitor.poll` from its own loop.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import recv_monitor_message

from proad.edge.telemetry import Telemetry

if TYPE_CHECKING:
    from proad.edge.security import CurveServer

_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | _HANDSHAKE_FAILED


class StartupError(RuntimeError):
    """A socket could not be set up (address in use, bad endpoint, unreadable keys)."""


def bind(sock: zmq.Socket, endpoint: str, what: str) -> str:
    """Bind or raise :class:`StartupError` naming the socket; returns the endpoint actually bound."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise StartupError(f"cannot bind the {what} socket to {endpoint}: {exc}") from exc
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class SocketMonitor:
    """Counts connections of one socket (``connections[name]``), clients whose CURVE key was refused
    (``auth_failures.<name>``) and clients that failed the handshake otherwise, e.g. a client without
    CURVE at a CURVE socket (``handshake_failures.<name>``), into the telemetry. Create it before
    ``bind``."""

    def __init__(self, sock: zmq.Socket, name: str, telemetry: Telemetry) -> None:
        self.name, self.telemetry = name, telemetry
        self.sock = sock.get_monitor_socket(_EVENTS)
        self.owner = sock

    def poll(self) -> None:
        while self.sock.poll(0):
            try:
                event = recv_monitor_message(self.sock)["event"]
            except (zmq.ZMQError, ValueError):
                return
            if event == zmq.EVENT_ACCEPTED:
                self.telemetry.add_connection(self.name, 1)
            elif event == zmq.EVENT_DISCONNECTED:
                self.telemetry.add_connection(self.name, -1)
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.telemetry.event(f"auth_failures.{self.name}")
            elif event & _HANDSHAKE_FAILED:
                self.telemetry.event(f"handshake_failures.{self.name}")

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.owner.disable_monitor()
        self.sock.close(0)


def serve(
    sock: zmq.Socket, endpoint: str, name: str, telemetry: Telemetry, curve: CurveServer | None
) -> tuple[SocketMonitor, str]:
    """CURVE (when on), a monitor, then bind, in that order (options apply to later connections);
    returns the monitor and the bound endpoint, or raises :class:`StartupError` with nothing left open."""
    if curve is not None:
        curve.apply(sock)
    monitor = SocketMonitor(sock, name, telemetry)
    try:
        return monitor, bind(sock, endpoint, name.replace("_", " "))
    except Exception:
        monitor.close()
        raise


class SocketThread(threading.Thread):
    """A thread that owns one bound socket and its monitor (ZeroMQ sockets stay in one thread).

    The thread closes both when its loop ends; ``shutdown`` stops a running thread, or closes them
    itself when the thread never started."""

    sock: zmq.Socket
    monitor: SocketMonitor

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self, timeout: float) -> None:
        if self.is_alive():
            self.stop()
            self.join(timeout)
        else:
            self.monitor.close()
            self.sock.close(0)
