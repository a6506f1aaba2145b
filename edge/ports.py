"""Free local TCP ports for services started on this machine (the demo's broker, a test's daemon),
chosen outside the kernel's ephemeral range.

A port found by binding port 0 (or ``bind_to_random_port``'s default 49152-65535) lies in the
ephemeral range, where the kernel also draws the source port of every outgoing connection. So
between the pick and the service's own bind, any outgoing connection on the machine can take it;
and a client that dials the port before the service listens can be connected *to itself* (Linux
TCP simultaneous open: source port = destination port), holding the port the service must bind
("address in use"). The kernel never hands out a source port outside
``net.ipv4.ip_local_port_range``, so a port picked there can only be lost to another program that
binds it by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_DEFAULT = (32768, 60999)
_LOWEST = 10000  # below: well-known and registered services' ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux's default where unreadable)."""
    try:
        low, high = (int(v) for v in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _LINUX_DEFAULT
    return low, high


def _bound(port: int, host: str) -> socket.socket | None:
    """A TCP socket bound to ``host:port``, or None when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` on ``host`` can be bound now (e.g. a fixed port a broker of the machine may hold)."""
    sock = _bound(port, host)
    if sock is None:
        return False
    sock.close()
    return True


def free_ports(n: int, host: str = "127.0.0.1", attempts: int = 500) -> list[int]:
    """``n`` distinct TCP ports on ``host``, free now and outside the ephemeral range.

    All ``n`` are held together while they are chosen (picked one by one, a second pick could
    return the first). Raises :class:`OSError` when ``attempts`` random candidates did not give ``n``.
    """
    low, high = ephemeral_range()
    candidates = [*range(_LOWEST, min(low, 65536)), *range(max(high + 1, _LOWEST), 65536)]
    held: list[socket.socket] = []
    try:
        # the OS's randomness, not the random module's state: a test that seeds it must not make two
        # processes try the same ports in the same order
        for port in random.SystemRandom().sample(candidates, min(attempts, len(candidates))):
            sock = _bound(port, host)
            if sock is None:
                continue
            held.append(sock)
            if len(held) == n:
                return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()
    raise OSError(f"no {n} free ports on {host} outside the ephemeral range {low}-{high}")


def free_port(host: str = "127.0.0.1") -> int:
    """One port of :func:`free_ports`."""
    return free_ports(1, host)[0]
