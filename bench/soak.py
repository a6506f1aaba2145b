"""Soak under faults: does the daemon keep inspecting and lose no NG while everything goes wrong?

One run over loopback, CURVE on every socket, with the faults a line meets scheduled over
``--seconds`` (default 120):

- the camera sends 1 % corrupt frames and is unplugged for 1 s every quarter of the run;
- a subscriber that never reads stays connected the whole time; a stranger with a valid keypair
  nobody allowed subscribes too (it must receive nothing);
- the archiver is SIGKILLed at 20 % and restarted at 30 %, and again at 70 % / 75 %;
- the daemon is SIGKILLed at 50 % (with NG results in its spool) and restarted 2 s later;
- at the end the daemon gets SIGTERM, drains, and the archive is compared with what was published.

Every frame is an NG here (threshold 0) unless ``--threshold`` says otherwise: the point is the NG
channel under stress. The table: frames, NG published (seen on the PUB stream), NG archived, lost,
duplicates received by the archiver, spooled NG never seen on the stream (published just before a
SIGKILL), the largest spool depth, restarts survived, what the stranger received.

    python bench/soak.py [--seconds 120] [--fps 30] [--model demo/model.onnx]

Writes ``bench/results/soak.json`` and ``soak.md``; exits 1 when an NG was lost or the stranger
received anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "faults"))
from common import REPO, machine, write_results
from harness import (
    NGRecorder,
    archive_ledger,
    kill,
    spooled,
    start_archiver,
    start_daemon,
    terminate,
    write_config,
)
from proad.edge.ports import free_ports
from proad.edge.security import ClientKeys, create_keypair
from proad.edge.status import query_status
from proad.edge.subscriber import Subscriber


def model_path(given: Path | None, tmp: Path) -> Path:
    if given is not None:
        return given
    demo = REPO / "demo" / "model.onnx"
    if demo.is_file():
        return demo
    from pipeline import make_model  # the default architecture, untrained: every frame is NG at threshold 0

    print("no demo/model.onnx: exporting the default (untrained) model", flush=True)
    return make_model(tmp)[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="length of the run")
    p.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    p.add_argument("--threshold", type=float, default=0.0, help="OK/NG threshold (0: every frame is NG)")
    p.add_argument("--model", type=Path, help="ONNX model (default: demo/model.onnx, else the untrained default)")
    p.add_argument("--name", default="soak", help="results file name under bench/results/")
    args = p.parse_args()
    T = args.seconds

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = model_path(args.model, tmp)
        keys, allowed = tmp / "keys", tmp / "keys" / "allowed"
        create_keypair(keys, "server")
        for name in ("recorder", "stalled", "archiver"):
            create_keypair(keys, name, allowed_dir=allowed)
        create_keypair(keys, "stranger")

        def client(name: str) -> ClientKeys:
            return ClientKeys(keys / f"{name}.key_secret", keys / "server.key")

        pub, ng, status = free_ports(3)
        quarter = max(1, int(args.fps * T / 4))
        cfg = {
            "cameras": [{"id": "cam0", "reconnect_initial_s": 0.1, "reconnect_max_s": 1.0,
                         "source": {"kind": "synthetic", "category": "board", "fps": args.fps, "pool": 32,
                                    "corrupt_every": 100, "unplug_every": quarter, "unplug_s": 1.0}}],
            "backend": {"kind": "onnxruntime", "model": str(model), "threads": 1, "max_batch": 2},
            "threshold": args.threshold,
            "publish": {"endpoint": f"tcp://127.0.0.1:{pub}", "hwm": 100},
            "ng_channel": {"endpoint": f"tcp://127.0.0.1:{ng}", "spool_dir": str(tmp / "spool"),
                           "ack_timeout_s": 2.0, "archiver_timeout_s": 1.5, "drain_s": 20.0},
            "status": {"endpoint": f"tcp://127.0.0.1:{status}"},
            "security": {"curve": True, "server_secret_key": str(keys / "server.key_secret"),
                         "allowed_clients": str(allowed)},
            "log_level": "WARNING",
        }  # fmt: skip
        config = write_config(tmp / "edge.json", cfg)
        daemon_log, archiver_log, archive = tmp / "daemon.log", tmp / "archiver.log", tmp / "archive"

        recorder = NGRecorder(f"tcp://127.0.0.1:{pub}", keys=client("recorder"))
        stranger = NGRecorder(f"tcp://127.0.0.1:{pub}", keys=client("stranger"))
        stalled = Subscriber(f"tcp://127.0.0.1:{pub}", hwm=1, keys=client("stalled"))  # never reads
        recorder.start()
        stranger.start()
        archiver = start_archiver(archive, f"tcp://127.0.0.1:{ng}", archiver_log, client("archiver"))
        daemon = start_daemon(config, daemon_log)
        t0 = time.monotonic()
        schedule = [(0.2, "kill archiver"), (0.3, "start archiver"), (0.5, "kill daemon"),
                    (0.5, "start daemon"), (0.7, "kill archiver"), (0.75, "start archiver")]  # fmt: skip
        max_depth, spool_at_kill, events = 0, 0, []
        try:
            while time.monotonic() - t0 < T:
                elapsed = time.monotonic() - t0
                while schedule and elapsed >= schedule[0][0] * T:
                    _, action = schedule.pop(0)
                    events.append(f"{elapsed:.1f}s {action}")
                    print(events[-1], flush=True)
                    if action == "kill archiver":
                        kill(archiver)
                    elif action == "start archiver":
                        archiver = start_archiver(archive, f"tcp://127.0.0.1:{ng}", archiver_log, client("archiver"))
                    elif action == "kill daemon":
                        kill(daemon)
                        spool_at_kill = len(spooled(tmp / "spool"))
                        time.sleep(2.0)
                    else:
                        daemon = start_daemon(config, daemon_log)
                with contextlib.suppress(TimeoutError):
                    snap = query_status(f"tcp://127.0.0.1:{status}", 500, client("recorder"))
                    max_depth = max(max_depth, int(snap["gauges"].get("spool_depth", 0)))
                time.sleep(0.5)
            code = terminate(daemon, timeout=60)
            events.append(f"{time.monotonic() - t0:.1f}s SIGTERM daemon -> exit {code}")
            time.sleep(1.0)
        finally:
            for proc in (daemon, archiver):
                if proc.poll() is None:
                    kill(proc)
            recorder.stop()
            stranger.stop()
            stalled.close()
        stored, duplicates = archive_ledger(archive)
        left = spooled(tmp / "spool")
        final = json.loads(daemon_log.read_text().strip().splitlines()[-1])
        lost = recorder.ng - stored
        result: dict[str, Any] = {
            "seconds": T,
            "camera_fps": args.fps,
            "results_seen": len(recorder.seen),
            "ng_published": len(recorder.ng),
            "ng_archived": len(stored),
            "lost": len(lost),
            "duplicates": duplicates,
            "spooled_not_seen_on_stream": len(stored - recorder.ng),
            "left_in_spool": len(left),
            "max_spool_depth": max_depth,
            "spool_at_daemon_kill": spool_at_kill,
            "daemon_restarts_survived": 1,
            "archiver_restarts_survived": 2,
            "stranger_received": len(stranger.seen),
            "failsafe_reasons": dict(recorder.reasons),
            "last_run": {k: final.get(k) for k in ("frames_in", "published", "dropped", "reconnects", "events")},
            "daemon_exit": code,
            "timeline": events,
        }
    data = {"machine": machine(), "model": str(model), **result}
    ok = result["lost"] == 0 and result["stranger_received"] == 0 and result["left_in_spool"] == 0 and code == 0
    row = (f"| {T:.0f} s | {result['results_seen']} | {result['ng_published']} | {result['ng_archived']} | "
           f"{result['lost']} | {result['duplicates']} | {result['spooled_not_seen_on_stream']} | "
           f"{result['max_spool_depth']} | 1 daemon SIGKILL, 2 archiver SIGKILLs | {result['stranger_received']} |")
    table = "\n".join([
        "# Soak under faults",
        "",
        f"{data['machine']['cpu']} ({data['machine']['cores']} cores), {data['machine']['date']}; camera "
        f"{args.fps:g} fps with 1 % corrupt frames and an unplug every quarter, CURVE on, a subscriber that never "
        "reads, a stranger with an unallowed key; every NG spooled and delivered to `proad-archive`.",
        "",
        "| run | results seen | NG published | NG archived | lost | duplicates | archived, not seen (SIGKILL) | "
        "max spool depth | restarts survived | stranger received |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        row,
        "",
        f"Last daemon run: dropped {result['last_run']['dropped']}, camera reconnects "
        f"{result['last_run']['reconnects']}, events {result['last_run']['events']}.",
        f"Verdict: {'nothing lost' if ok else 'FAILED: see the JSON'}.",
    ])  # fmt: skip
    write_results(args.name, data, table)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
