"""The reference NG archiver: takes records from the daemon's NG channel, stores them, acknowledges.

``proad-archive --out DIR`` runs it. Each NG result becomes, under ``DIR/<camera>/``::

    <result_id>.jpg        the frame, as the daemon sent it (when it sent one)
    <result_id>_map.npy    the anomaly map, exactly as sent (float16 or uint8)
    <result_id>_map.png    the map as a heatmap, 0 .. twice the threshold, for a person to look at
    <result_id>.json       the header, written last: its presence means the record is complete

The acknowledgement goes out only after the files are written (and fsynced), so a record is never
acknowledged and then lost. The daemon delivers at least once: a record whose JSON already exists
is a duplicate, counted and acknowledged again, not stored twice. ``receipts.log`` has one line per
record received (``<result_id> stored|duplicate|rejected``), which the fault tests read. A record
that does not parse is kept raw under ``rejected/`` and acknowledged, so it neither loops forever
nor vanishes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import zmq

from proad.edge.messages import WireError, as_bytes, map_to_float
from proad.edge.ng_channel import ACK, HELLO, NG, decode_record
from proad.edge.security import ClientKeys
from proad.viz import heatmap

log = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,160}$")


def write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


class Archiver:
    def __init__(
        self,
        endpoint: str,
        out: str | Path,
        keys: ClientKeys | None = None,
        heartbeat_s: float = 1.0,
        fsync: bool = True,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.fsync, self.heartbeat_s = fsync, heartbeat_s
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)  # let the last ACKs leave
        self.sock.setsockopt(zmq.MAXMSGSIZE, 256 * 1024 * 1024)
        if keys is not None:
            keys.apply(self.sock)
        self.sock.connect(endpoint)
        self.receipts = open(self.out / "receipts.log", "a")  # noqa: SIM115 - open for the archiver's life
        self.stored = self.duplicates = self.rejected = 0
        self.last_hello = 0.0

    def step(self, timeout_ms: int = 100) -> None:
        """Say hello when due, then store and acknowledge whatever arrives within ``timeout_ms``."""
        now = time.monotonic()
        if now - self.last_hello >= self.heartbeat_s:
            self._send([HELLO])  # no daemon there (yet): try again at the next heartbeat
            self.last_hello = now
        if not self.sock.poll(timeout_ms):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            parts = [as_bytes(f) for f in frames]
            result_id, outcome = self.handle(parts)
            if result_id is not None:
                self._send([ACK, result_id.encode()])  # if it cannot go, the daemon resends: a duplicate
                self.receipts.write(f"{result_id} {outcome}\n")
                self.receipts.flush()

    def _send(self, parts: list[bytes]) -> bool:
        """Never block: a DEALER with no connected daemon (down, or refusing our key) would wait forever."""
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def handle(self, parts: list[bytes]) -> tuple[str | None, str]:
        """Store one message; returns (result id to acknowledge, outcome)."""
        if len(parts) < 2 or parts[0] != NG:
            log.warning("ignored a message that is not an NG record (%d parts)", len(parts))
            return None, "ignored"
        result_id = parts[1].decode("ascii", errors="replace")
        if not _ID.match(result_id):
            log.warning("ignored an NG record with an unusable id %r", parts[1][:40])
            return None, "ignored"
        try:
            header, amap, _ = decode_record(result_id, parts[2:])
        except WireError as exc:
            log.error("NG record %s does not parse (%s); kept raw under rejected/", result_id, exc)
            folder = self.out / "rejected"
            folder.mkdir(exist_ok=True)
            write_atomic(folder / f"{result_id}.bin", b"\n--part--\n".join(parts[2:]), self.fsync)
            self.rejected += 1
            return result_id, "rejected"
        folder = self.out / header.camera_id
        meta = folder / f"{result_id}.json"
        if meta.exists():
            self.duplicates += 1
            return result_id, "duplicate"
        folder.mkdir(exist_ok=True)
        if len(parts) == 5:
            write_atomic(folder / f"{result_id}.jpg", parts[4], self.fsync)
        buf = _npy_bytes(amap)
        write_atomic(folder / f"{result_id}_map.npy", buf, self.fsync)
        values = map_to_float(header, amap)
        vmax = 2.0 * header.threshold if header.threshold > 0 else max(float(values.max()), 1e-6)
        ok, png = cv2.imencode(".png", heatmap(values, vmax))
        if ok:
            write_atomic(folder / f"{result_id}_map.png", png.tobytes(), self.fsync)
        record = {"received_at": time.time(), "header": header.model_dump(mode="json")}
        write_atomic(meta, json.dumps(record, indent=1).encode(), self.fsync)
        self.stored += 1
        return result_id, "stored"

    def run(self, stop: threading.Event, seconds: float | None = None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self.step(100)

    def close(self) -> None:
        self.receipts.close()
        self.sock.close()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
