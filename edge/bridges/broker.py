"""A local MQTT broker (Debian's mosquitto) for the line demo, the bridge tests and the benchmark.

A plant has its own broker; this starts the real program on a free loopback port, with persistence
in a folder of the caller's, so stopping and starting it again is a real broker restart (mosquitto
saves its queue and its clients' persistent sessions on SIGTERM).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from proad.edge.ports import free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class Mosquitto:
    """``mosquitto`` on 127.0.0.1:``port``; ``stop()`` (SIGTERM: it saves its queue) and ``start()`` again."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        if MOSQUITTO is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.folder, self.port = folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nmax_queued_messages 100000\n"
            f"user root\nlog_dest file {folder}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> Mosquitto:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # it logs to mosquitto.log
        deadline = time.monotonic() + timeout_s
        while True:  # listening when a TCP connect succeeds
            if self.proc.poll() is not None:
                log = self.folder / "mosquitto.log"
                tail = log.read_text()[-500:] if log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout_s} s") from None
                time.sleep(0.05)  # poll interval while it starts

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None
