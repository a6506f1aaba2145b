"""What the fault-injection tests (and ``bench/soak.py``) share: daemons and archivers as real
processes that can be SIGKILLed, a recorder of the NG results seen on the PUB stream, and the
ledger that compares what was seen with what the archivers stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import zmq

from proad.edge.security import ClientKeys
from proad.edge.subscriber import Subscriber

_NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def start_daemon(config: Path, log: Path) -> subprocess.Popen:
    """``proad-edge run`` in its own process (without torch: the runtime needs none)."""
    code = _NO_TORCH + "from proad.edge.cli import edge_main; sys.exit(edge_main())"
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-c", code, "run", "--config", str(config)],
                                stdout=f, stderr=subprocess.STDOUT)  # fmt: skip


def start_archiver(out: Path, endpoint: str, log: Path, keys: ClientKeys | None = None) -> subprocess.Popen:
    code = _NO_TORCH + "from proad.edge.cli import archive_main; sys.exit(archive_main())"
    args = ["--out", str(out), "--endpoint", endpoint, "--heartbeat-s", "0.2"]
    if keys is not None:
        args += ["--curve-key", str(keys.secret_file), "--server-key", str(keys.server_public_file)]
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-c", code, *args], stdout=f, stderr=subprocess.STDOUT)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no flush, no goodbye."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def terminate(proc: subprocess.Popen, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


class NGRecorder(threading.Thread):
    """Subscribes to the PUB stream and records every result id, and which were NG."""

    def __init__(self, endpoint: str, keys: ClientKeys | None = None) -> None:
        super().__init__(daemon=True)
        self.sub = Subscriber(endpoint, hwm=1_000_000, ctx=zmq.Context.instance(), keys=keys)
        self.seen: list[str] = []
        self.ng: set[str] = set()
        self.reasons: Counter[str] = Counter()
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            r = self.sub.recv(timeout_ms=100)
            if r is None:
                continue
            self.seen.append(r.header.result_id)
            self.reasons[r.header.reason] += 1
            if r.header.decision == "NG":
                self.ng.add(r.header.result_id)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.sub.close()


def archive_ledger(out: Path) -> tuple[set[str], int]:
    """(result ids stored, duplicates received) from the archiver's receipts, across its restarts."""
    stored, duplicates = set(), 0
    path = out / "receipts.log"
    if path.exists():
        for line in path.read_text().splitlines():
            rid, _, outcome = line.partition(" ")
            if outcome == "stored":
                stored.add(rid)
            elif outcome == "duplicate":
                duplicates += 1
    # a record is stored once its JSON exists, even if the archiver died before logging the receipt
    stored |= {p.stem for p in out.glob("*/*.json")}
    return stored, duplicates


def spooled(spool_dir: Path) -> set[str]:
    return {p.stem.split("-", 1)[1] for p in spool_dir.glob("*.ng")}


def wait_for(predicate, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, indent=1))
    return path


def daemon_config(onnx: Path, tmp: Path, camera: dict, **extra: object) -> dict:
    """Every NG is spooled and delivered; a threshold of 0 makes every frame an NG (plenty to lose).

    The camera waits for room in its frame queue (``when_full: wait``), so a loaded machine drops
    no frame and the tests can count every NG; a test about drops passes its own ``queues``."""
    cfg: dict = {
        "cameras": [{"id": "cam0", "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2,
                     "source": {"kind": "synthetic", "category": "board", "pool": 8, **camera}}],
        "backend": {"kind": "onnxruntime", "model": str(onnx), "threads": 1, "max_batch": 2},
        "threshold": 0.0,
        "publish": {"endpoint": "tcp://127.0.0.1:*", "hwm": 100000, "jpeg": "ng"},
        "ng_channel": {"endpoint": "tcp://127.0.0.1:*", "spool_dir": str(tmp / "spool"), "ack_timeout_s": 1.0,
                       "archiver_timeout_s": 1.0, "drain_s": 10.0, "fsync": True},
        "status": {"endpoint": "tcp://127.0.0.1:*"},
        "queues": {"when_full": "wait"},
        "log_level": "WARNING",
    }  # fmt: skip
    cfg.update(extra)
    return cfg
