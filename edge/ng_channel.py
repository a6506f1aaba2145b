"""The reliable NG channel (DESIGN §5): spooled NG results delivered to archivers, at least once.

The daemon binds a ROUTER socket; each archiver connects a DEALER. The protocol, multipart::

    archiver -> daemon   [b"HELLO"]                              on connect, then every heartbeat
    archiver -> daemon   [b"ACK", result_id]                     once the record is stored
    daemon -> archiver   [b"NG", result_id, header, map, (JPEG)] a spooled record

One delivery thread owns the socket. It sends the oldest spooled records to live archivers (at most
``window`` unacknowledged, spread over archivers), deletes a record from the spool when its ACK
comes, and sends it again when no ACK comes within ``ack_timeout_s`` or its archiver goes silent
(restarted, cable pulled). So a record can arrive twice; archivers drop duplicates by
``result_id``. Nothing is removed before it is acknowledged, and the spool is on disk, so neither an
archiver restart nor a daemon restart loses an NG. The pipeline never waits on this thread.

ROUTER_MANDATORY makes a send to a vanished archiver fail at once instead of silently vanishing.
Anything malformed that arrives is counted (``invalid_messages.ng_channel``) and ignored.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from proad.edge.config import NGChannelConfig
from proad.edge.messages import FrameResult, WireError, as_bytes, decode_header, decode_map
from proad.edge.security import CurveServer
from proad.edge.sockets import SocketThread, serve
from proad.edge.spool import Spool
from proad.edge.telemetry import Telemetry

log = logging.getLogger(__name__)

HELLO, ACK, NG = b"HELLO", b"ACK", b"NG"
MAX_ID_BYTES = 160


class ProtocolError(ValueError):
    """A message on the NG channel that does not follow the protocol."""


def parse_archiver_message(parts: list[bytes]) -> tuple[bytes, str | None]:
    """An archiver's message (after the ROUTER's identity part): ``(HELLO, None)`` or ``(ACK, result_id)``."""
    if not parts:
        raise ProtocolError("empty message")
    command = parts[0]
    if command == HELLO and len(parts) == 1:
        return HELLO, None
    if command == ACK and len(parts) == 2 and 0 < len(parts[1]) <= MAX_ID_BYTES:
        try:
            return ACK, parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError("result id is not ASCII") from exc
    raise ProtocolError(f"unexpected message {command[:16]!r} with {len(parts)} part(s)")


def decode_record(result_id: str, parts: list[bytes]) -> tuple[FrameResult, np.ndarray, bytes | None]:
    """A delivered record's ``[header, map, (JPEG)]`` (what follows ``NG, result_id``), checked against its
    id; raises :class:`WireError` naming what is wrong. Archivers and the MQTT bridge read records so."""
    if len(parts) not in (2, 3):
        raise WireError(f"{len(parts) + 2} parts")
    header = decode_header(parts[0])
    amap = decode_map(header, parts[1])
    if header.result_id != result_id or header.has_frame != (len(parts) == 3):
        raise WireError("id or frame part does not match the header")
    return header, amap, parts[2] if len(parts) == 3 else None


class NGChannel(SocketThread):
    def __init__(
        self,
        cfg: NGChannelConfig,
        spool: Spool,
        ctx: zmq.Context,
        telemetry: Telemetry,
        curve: CurveServer | None = None,
        primary: bool = True,
    ) -> None:
        """``primary``: the archivers' channel (plain counter names); a further channel (``ng_channels``)
        names its counters and gauges ``<name>.<channel name>``."""
        super().__init__("ng-delivery" if primary else f"ng-delivery-{cfg.name}")
        self.cfg, self.spool, self.telemetry = cfg, spool, telemetry
        self.suffix = "" if primary else f".{cfg.name}"  # a further channel's counters carry its name
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, max(4 * cfg.window, 64))
        self.sock.setsockopt(zmq.RCVHWM, 10000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # archivers only send HELLO and ACK
        self.sock.setsockopt(zmq.LINGER, 0)  # what is not acknowledged stays in the spool anyway
        self.monitor, self.endpoint = serve(self.sock, cfg.endpoint, "ng_channel" + self.suffix, telemetry, curve)
        self.archivers: dict[bytes, float] = {}  # identity -> last heard (monotonic)
        self.inflight: dict[str, tuple[bytes, float]] = {}  # result_id -> (archiver, sent at)
        self.drain_until = 0.0

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                if self.stop_event.is_set() and (
                    now >= self.drain_until or not self.archivers or self.spool.depth() == 0
                ):
                    break
                self.monitor.poll()
                if self.sock.poll(50):
                    self._receive()
                now = time.monotonic()
                self._expire(now)
                self._send(now)
                self._gauges()
        except Exception:  # never silent: the spool keeps everything for the next start
            log.exception("NG delivery stopped; undelivered records stay in %s", self.spool.dir)
            self.telemetry.event("ng_channel_failures" + self.suffix)
        finally:
            self._gauges()
            self.monitor.close()
            self.sock.close(0)

    def _receive(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, parts = as_bytes(frames[0]), [as_bytes(f) for f in frames[1:]]
            try:
                command, result_id = parse_archiver_message(parts)
            except ProtocolError as exc:
                self.telemetry.event("invalid_messages.ng_channel" + self.suffix)
                log.warning("NG channel: ignored a message from %s: %s", identity.hex()[:16], exc)
                continue
            if identity not in self.archivers:
                log.info("NG channel: archiver %s connected", identity.hex()[:16])
                self.telemetry.event("archiver_connects" + self.suffix)
            self.archivers[identity] = time.monotonic()
            if command == ACK and result_id is not None:
                self.inflight.pop(result_id, None)
                if self.spool.remove(result_id):
                    self.telemetry.event("ng_delivered" + self.suffix)
                else:
                    self.telemetry.event("ng_duplicate_acks" + self.suffix)

    def _expire(self, now: float) -> None:
        for identity, heard in list(self.archivers.items()):
            if now - heard > self.cfg.archiver_timeout_s:
                self._forget_archiver(identity, "silent")
        for result_id, (_, sent) in list(self.inflight.items()):
            if now - sent > self.cfg.ack_timeout_s:
                del self.inflight[result_id]
                self.telemetry.event("ng_redelivered" + self.suffix)

    def _forget_archiver(self, identity: bytes, why: str) -> None:
        self.archivers.pop(identity, None)
        lost = [rid for rid, (who, _) in self.inflight.items() if who == identity]
        for rid in lost:
            del self.inflight[rid]
        self.telemetry.event("ng_redelivered" + self.suffix, len(lost))
        log.warning("NG channel: archiver %s gone (%s); %d unacknowledged record(s) will be sent again",
                    identity.hex()[:16], why, len(lost))

    def _send(self, now: float) -> None:
        room = self.cfg.window - len(self.inflight)
        if room <= 0 or not self.archivers:
            return
        load = {a: 0 for a in self.archivers}  # records in flight per live archiver
        for who, _ in self.inflight.values():
            if who in load:
                load[who] += 1
        for result_id in self.spool.pending(set(self.inflight), room):
            if not load:
                return
            target = min(load, key=load.__getitem__)  # the archiver with the fewest records in flight
            record = self.spool.load(result_id)
            if record is None:
                continue
            try:
                self.sock.send_multipart([target, NG, result_id.encode(), *record.parts], zmq.NOBLOCK, copy=False)
            except zmq.Again:  # this archiver's pipe is full: try again on the next turn
                return
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    self._forget_archiver(target, "unreachable")
                    del load[target]
                    continue
                raise
            self.inflight[result_id] = (target, now)
            load[target] += 1

    def _gauges(self) -> None:
        stats = self.spool.stats()
        self.telemetry.gauge("spool_depth" + self.suffix, stats["depth"])
        self.telemetry.gauge("spool_bytes" + self.suffix, stats["bytes"])
        self.telemetry.gauge("spool_max_depth" + self.suffix, stats["max_depth"])
        self.telemetry.gauge("archivers" + self.suffix, len(self.archivers))
        self.telemetry.gauge("ng_inflight" + self.suffix, len(self.inflight))

    def stop(self) -> None:
        """Stop after delivering what an archiver is there to take, for at most ``drain_s``."""
        self.drain_until = time.monotonic() + self.cfg.drain_s
        super().stop()
