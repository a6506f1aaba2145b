"""The on-disk spool of NG results waiting for an archiver's acknowledgement (DESIGN §5).

An NG result is written here, durably, *before* it is published, so every NG a subscriber ever saw
is on disk; it leaves the spool only when an archiver acknowledges it. The spool survives a daemon
restart (or a SIGKILL): on start it reads back what is there, oldest first.

One file per record, ``<order>-<result_id>.ng``, written to a temporary name, flushed (``fsync``
when configured) and renamed, so a file either holds a whole record or does not exist. A file is
framed and checksummed::

    b"PROADNG1" | u32 part count | (u64 length, bytes) per part | u32 crc32 of everything before

with the parts ``[result_id, header JSON, map bytes, (JPEG)]``. A file that fails its check (a
disk fault) is moved to ``corrupt/`` and counted, never delivered.

When the spool is full (``max_records`` or ``max_mb``) the policy decides: ``reject_new`` keeps
what is already accepted and refuses the new NG (it is still published on the PUB stream), and
``drop_oldest`` makes room by deleting the oldest undelivered record. Both are counted.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

MAGIC = b"PROADNG1"
MAX_PARTS = 8
MAX_PART_BYTES = 256 * 1024 * 1024
_NAME = re.compile(r"^(\d{12})-([A-Za-z0-9_.-]{1,160})\.ng$")


class SpoolError(OSError):
    """A spool record could not be written or read."""


@dataclass(frozen=True)
class Record:
    result_id: str
    parts: list[bytes]  # [header JSON, map bytes, (JPEG)]


def pack(record: Record) -> bytes:
    parts = [record.result_id.encode(), *record.parts]
    body = bytearray(MAGIC + struct.pack("<I", len(parts)))
    for p in parts:
        body += struct.pack("<Q", len(p)) + p
    return bytes(body + struct.pack("<I", zlib.crc32(body)))


def unpack(blob: bytes) -> Record:
    """Parse a spool file; raises :class:`SpoolError` saying what is wrong."""
    if len(blob) < len(MAGIC) + 8 or not blob.startswith(MAGIC):
        raise SpoolError("not a proad spool record")
    (crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if zlib.crc32(blob[:-4]) != crc:
        raise SpoolError("checksum mismatch (truncated or damaged)")
    (count,) = struct.unpack_from("<I", blob, len(MAGIC))
    if not 3 <= count <= MAX_PARTS:
        raise SpoolError(f"{count} parts")
    pos, parts = len(MAGIC) + 4, []
    for _ in range(count):
        if pos + 8 > len(blob) - 4:
            raise SpoolError("truncated part header")
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        if n > MAX_PART_BYTES or pos + n > len(blob) - 4:
            raise SpoolError("part runs past the end")
        parts.append(blob[pos : pos + n])
        pos += n
    if pos != len(blob) - 4:
        raise SpoolError("trailing bytes")
    return Record(parts[0].decode(errors="replace"), parts[1:])


class Spool:
    """Thread safe: the output thread adds, the delivery thread reads and removes."""

    def __init__(
        self,
        directory: str | Path,
        max_records: int = 10000,
        max_mb: float = 1024.0,
        when_full: Literal["reject_new", "drop_oldest"] = "reject_new",
        fsync: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self.corrupt_dir = self.dir / "corrupt"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.dir}: {exc}") from exc
        self.max_records, self.max_bytes = max_records, int(max_mb * 1024 * 1024)
        self.when_full, self.fsync = when_full, fsync
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, tuple[Path, int]] = OrderedDict()  # result_id -> (file, bytes)
        self.bytes = 0
        self.recovered = 0
        self.corrupt = 0
        self.rejected = 0
        self.evicted = 0
        self.max_depth = 0
        self._next = 0
        self._recover()

    def _recover(self) -> None:
        for tmp in self.dir.glob("*.tmp"):  # a write cut short: never acknowledged to the pipeline
            tmp.unlink(missing_ok=True)
        found = []
        for path in self.dir.glob("*.ng"):
            m = _NAME.match(path.name)
            if m is None:
                log.warning("spool: ignoring unexpected file %s", path)
                continue
            found.append((int(m.group(1)), m.group(2), path))
        for order, rid, path in sorted(found):
            size = path.stat().st_size
            self.entries[rid] = (path, size)
            self.bytes += size
            self._next = max(self._next, order + 1)
        self.recovered = len(self.entries)
        self.max_depth = len(self.entries)
        if self.recovered:
            log.info("spool %s: %d undelivered NG record(s) from an earlier run", self.dir, self.recovered)

    # -- output thread -------------------------------------------------------------------------
    def add(self, record: Record) -> bool:
        """Write ``record`` durably; False when the spool is full and the policy refused it."""
        blob = pack(record)
        with self.lock:
            if record.result_id in self.entries:
                return True
            while self._full(len(blob)):
                if self.when_full == "reject_new" or not self.entries:
                    self.rejected += 1
                    return False
                oldest, (path, size) = self.entries.popitem(last=False)
                path.unlink(missing_ok=True)
                self.bytes -= size
                self.evicted += 1
                log.error("spool full: deleted the oldest undelivered NG %s", oldest)
            order = self._next
            self._next += 1
        path = self.dir / f"{order:012d}-{record.result_id}.ng"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync:
                self._sync_dir()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write {path}: {exc}") from exc
        with self.lock:
            self.entries[record.result_id] = (path, len(blob))
            self.bytes += len(blob)
            self.max_depth = max(self.max_depth, len(self.entries))
        return True

    def _full(self, incoming: int) -> bool:
        return len(self.entries) + 1 > self.max_records or self.bytes + incoming > self.max_bytes

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- delivery thread -----------------------------------------------------------------------
    def pending(self, skip: set[str], limit: int) -> list[str]:
        """Up to ``limit`` result ids, oldest first, leaving out ``skip`` (those in flight)."""
        out = []
        with self.lock:
            for rid in self.entries:
                if rid not in skip:
                    out.append(rid)
                    if len(out) >= limit:
                        break
        return out

    def load(self, result_id: str) -> Record | None:
        """The record, or None when it is gone (acknowledged, evicted) or corrupt (moved aside, counted)."""
        with self.lock:
            entry = self.entries.get(result_id)
        if entry is None:
            return None
        try:
            return unpack(entry[0].read_bytes())
        except (OSError, SpoolError) as exc:
            log.error("spool: %s unreadable (%s); moved to %s", entry[0].name, exc, self.corrupt_dir)
            self.corrupt_dir.mkdir(exist_ok=True)
            if entry[0].exists():
                os.replace(entry[0], self.corrupt_dir / entry[0].name)
            self._forget(result_id)
            with self.lock:
                self.corrupt += 1
            return None

    def remove(self, result_id: str) -> bool:
        """Delete an acknowledged record; False if it was not there (a duplicate acknowledgement)."""
        entry = self._forget(result_id)
        if entry is None:
            return False
        entry[0].unlink(missing_ok=True)
        return True

    def _forget(self, result_id: str) -> tuple[Path, int] | None:
        with self.lock:
            entry = self.entries.pop(result_id, None)
            if entry is not None:
                self.bytes -= entry[1]
            return entry

    def depth(self) -> int:
        with self.lock:
            return len(self.entries)

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"depth": len(self.entries), "bytes": self.bytes, "max_depth": self.max_depth,
                    "recovered": self.recovered, "rejected_full": self.rejected, "evicted_full": self.evicted,
                    "corrupt": self.corrupt}  # fmt: skip
