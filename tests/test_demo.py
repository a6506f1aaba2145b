"""``proad-edge demo --line`` (``make demo-line``): the daemon with the operator's page, the OPC UA
bridge and the MQTT bridge beside it, as a new user first runs it, on free ports."""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proad.edge.bridges.broker import MOSQUITTO
from proad.edge.demo import DemoPorts, run_demo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import demo_training


def page(url: str, until: threading.Thread, timeout_s: float = 120.0) -> str | None:
    """The page at ``url`` once it answers, or None if ``until`` ends (or the time is up) first."""
    deadline = time.monotonic() + timeout_s
    while until.is_alive() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)  # poll interval while the page's process starts
    return None


def test_line_demo_feeds_the_page_the_plc_and_the_broker(
    board_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(board_model[1], tmp_path / "model.onnx")
    ports = DemoPorts.free()
    result: dict[str, int] = {}
    demo = threading.Thread(target=lambda: result.update(code=run_demo(
        tmp_path, seconds=6, fps=10, category="board", defect_rate=0.3, line=True, ports=ports)))  # fmt: skip
    demo.start()
    html = page(ports.view_url, until=demo)
    demo.join(timeout=300)
    out = capsys.readouterr().out
    assert not demo.is_alive() and result.get("code") == 0, out
    assert html is not None and "<html" in html.lower(), "the operator's page never answered"

    archived = re.search(r"NG results archived through the NG channel: (\d+) of (\d+)", out)
    assert archived and int(archived[2]) > 0 and archived[1] == archived[2], out  # every NG stored
    # the summary bench/demo_training.py reads: every result is a defect or a normal frame, every NG one of both
    camera = demo_training.demo_summary(out)
    received = re.search(r"results received: (\d+)", out)
    assert received and camera["found_of"] + camera["false_alarms_of"] == int(received[1]), out
    assert camera["found"] + camera["false_alarms"] == int(archived[2]), out
    written = re.search(r"bridge_opcua: exited \d+; (\d+) results written to OPC UA", out)
    assert written and int(written[1]) > 0, out  # the PLC's server was fed (results over PUB/SUB: none promised all)
    if MOSQUITTO is None:
        assert "the MQTT bridge is left out" in out
    else:
        acked = re.search(r"bridge_mqtt: exited \d+; (\d+) NG acknowledged by the broker", out)
        assert acked and int(acked[1]) == int(archived[2]), out  # every NG reached the broker too
