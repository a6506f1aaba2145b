"""``proad-edge`` (the daemon), ``proad-sub`` (a subscriber that prints what it gets) and
``proad-archive`` (the reference NG archiver).

::

    proad-edge run --config edge.yaml [--set backend.threads=2 ...] [--seconds N]
    proad-edge check-config --config edge.yaml [--set ...]
    proad-edge status [--endpoint tcp://127.0.0.1:5556] [--curve-key K --server-key S]
    proad-edge keys --out keys NAME [NAME ...] [--allowed-dir keys/allowed]
    proad-edge demo [--workdir demo] [--seconds 20] [--line]
    proad-sub [--endpoint tcp://127.0.0.1:5555] [--camera ID] [--ng-only] [--save-ng DIR] [--count N] [--seconds S]
    proad-archive --out DIR [--endpoint tcp://127.0.0.1:5557] [--curve-key K --server-key S] [--seconds S]

Exit codes: 0 done (a SIGTERM'd daemon or archiver that drained exits 0); 1 failed while running;
2 bad input (config malformed, model file missing or incompatible, socket cannot bind, keys
unreadable); 3 no answer (status).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from proad.clikit import Failure, run_command, say

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NO_ANSWER = 0, 1, 2, 3


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="PipelineConfig as YAML or JSON")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override fields by dotted path, e.g. backend.threads=2 cameras.0.source.fps=15")


def _curve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curve-key", type=Path, metavar="NAME.key_secret",
                   help="CURVE: this client's secret key (with --server-key)")
    p.add_argument("--server-key", type=Path, metavar="SERVER.key", help="CURVE: the daemon's public key")


def _client_keys(args: argparse.Namespace):  # -> ClientKeys | None
    from proad.edge.security import client_keys

    return client_keys(args.curve_key, args.server_key)


def edge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-edge",
        description="The inspection daemon: cameras -> Pro-AD -> OK/NG results over ZeroMQ.",
        epilog="Exit codes: 0 done, 1 failed while running, 2 bad config/model/socket, 3 no answer.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT (drains what it accepted, exits 0)")
    _config_args(run)
    run.add_argument("--seconds", type=float, help="stop by itself after this long")
    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    _config_args(check)
    status = sub.add_parser("status", help="ask a running daemon for its counters and latencies")
    status.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    status.add_argument("--timeout-ms", type=int, default=2000)
    _curve_args(status)
    keys = sub.add_parser("keys", help="create CURVE keypairs (NAME.key public, NAME.key_secret secret)")
    keys.add_argument("names", nargs="+", help="one keypair per name, e.g. server archiver1 dashboard")
    keys.add_argument("--out", type=Path, required=True, help="where the keypairs go")
    keys.add_argument("--allowed-dir", type=Path,
                      help="also copy the public keys here (the daemon's security.allowed_clients)")
    demo = sub.add_parser("demo", help="the synthetic camera, the demo model, the daemon and a live subscriber")
    demo.add_argument("--workdir", type=Path, default=Path("demo"), help="where model.onnx is and outputs go")
    demo.add_argument("--seconds", type=float, default=20.0, help="how long the camera runs")
    demo.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    demo.add_argument("--category", default="board", help="what the synthetic camera shows")
    demo.add_argument("--defect-rate", type=float, default=0.2, help="share of frames with an injected defect")
    demo.add_argument("--line", action="store_true",
                      help="also start the operator's page (proad-view), the OPC UA bridge and the MQTT bridge "
                           "with a local mosquitto, as on a line")
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from proad.edge.config import load_pipeline_config
    from proad.edge.daemon import Daemon

    cfg = load_pipeline_config(args.config, args.set)
    _setup_logging(cfg.log_level)
    daemon = Daemon(cfg)
    daemon.run_forever(args.seconds)
    snap = daemon.telemetry.snapshot()
    keep = ("frames_in", "published", "ng", "failsafe_ng", "dropped", "reconnects", "events", "gauges")
    print(json.dumps({k: snap[k] for k in keep}))
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from proad.edge.config import load_pipeline_config

    cfg = load_pipeline_config(args.config, args.set)
    print(cfg.model_dump_json(indent=2))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from proad.edge.status import query_status

    try:
        print(json.dumps(query_status(args.endpoint, args.timeout_ms, _client_keys(args)), indent=2))
    except TimeoutError as exc:
        print(f"proad-edge: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    from proad.edge.security import create_keypair

    for name in args.names:
        public, secret = create_keypair(args.out, name, args.allowed_dir)
        allowed = f", allowed in {args.allowed_dir}" if args.allowed_dir else ""
        print(f"{name}: public {public}, secret {secret}{allowed}")
    return EXIT_OK


def _failures() -> list[Failure]:
    from proad.edge.backends import ModelLoadError
    from proad.edge.config import ConfigError
    from proad.edge.sockets import StartupError

    kinds = (ConfigError, ModelLoadError, StartupError, FileExistsError)
    return [(kind, EXIT_BAD_INPUT, say("error: ")) for kind in kinds]


def _guarded(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    return run_command(prog, body, args, _failures())


def edge_main(argv: Sequence[str] | None = None) -> int:
    args = edge_parser().parse_args(argv)
    if args.command == "demo":
        from proad.edge.demo import run_demo

        def demo_body(a: argparse.Namespace) -> int:
            return run_demo(a.workdir, a.seconds, a.fps, a.category, a.defect_rate, a.line)

        return _guarded("proad-edge", demo_body, args)
    body = {"run": _run, "check-config": _check, "status": _status, "keys": _keys}[args.command]
    return _guarded("proad-edge", body, args)


# ------------------------------------------------------------------------------------------------
# proad-sub


def sub_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-sub",
        description="Subscribe to a proad-edge daemon and print one line per result; optionally save NG overlays.",
    )
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the daemon's PUB endpoint")
    p.add_argument("--camera", help="only this camera")
    p.add_argument("--ng-only", action="store_true", help="only NG results (needs --camera)")
    p.add_argument("--save-ng", type=Path, help="write NG overlays (heatmap over the frame) here as PNG")
    p.add_argument("--count", type=int, help="stop after this many results")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--idle-seconds", type=float, default=None, help="stop when nothing arrives for this long")
    p.add_argument("--hwm", type=int, default=1000, help="receive high-water mark (messages)")
    p.add_argument("--quiet", action="store_true", help="no per-result lines, only the summary")
    _curve_args(p)
    return p


def format_line(r) -> str:
    h = r.header
    truth = h.annotations.get("injected_defect")
    extra = f" injected={truth}" if truth is not None else ""
    missed = f" MISSED {r.missed_before}" if r.missed_before else ""
    score = f"score={h.score:.3f}" if h.score is not None else f"no result ({h.reason})"
    return (f"{h.camera_id} seq={h.seq:<6d} {h.decision} {score} thr={h.threshold:.3f} "
            f"latency={h.latency_ms.get('total', 0):.1f}ms{extra}{missed}")


def save_overlay(r, folder: Path) -> Path:
    import cv2
    import numpy as np

    from proad.viz import overlay

    amap = r.anomaly_map()
    frame = r.frame()
    if frame is None:
        frame = np.zeros((*amap.shape, 3), np.uint8)
    score = f"{r.header.score:.3f}" if r.header.score is not None else r.header.reason
    image = overlay(frame, amap, vmax=2 * r.header.threshold, text=f"{r.header.camera_id} {score} NG")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{r.header.camera_id}_{r.header.seq:06d}.png"
    cv2.imwrite(str(path), np.hstack([frame, image]))
    return path


def _subscribe(args: argparse.Namespace) -> int:
    from proad.edge.subscriber import Subscriber

    if args.ng_only and not args.camera:
        print("proad-sub: error: --ng-only needs --camera (topics are proad/<camera>/<OK|NG>)", file=sys.stderr)
        return EXIT_BAD_INPUT
    decisions: Counter[str] = Counter()
    t0 = time.monotonic()
    keys = _client_keys(args)
    with Subscriber(args.endpoint, args.camera, "NG" if args.ng_only else None, args.hwm, keys=keys) as sub:
        while args.count is None or sum(decisions.values()) < args.count:
            wait = 500 if args.seconds is not None else None
            if args.idle_seconds is not None:
                wait = int(args.idle_seconds * 1000)
            r = sub.recv(wait)
            if args.seconds is not None and time.monotonic() - t0 >= args.seconds:
                break
            if r is None:
                if args.idle_seconds is not None:
                    break
                continue
            decisions[r.header.decision] += 1
            if not args.quiet:
                print(format_line(r), flush=True)
            if args.save_ng and r.header.decision == "NG":
                save_overlay(r, args.save_ng)
        print(f"received {sum(decisions.values())} (OK {decisions['OK']}, NG {decisions['NG']}), "
              f"missed {sum(sub.missed.values())}, invalid {sub.invalid}")
    return EXIT_OK


def sub_main(argv: Sequence[str] | None = None) -> int:
    args = sub_parser().parse_args(argv)
    return _guarded("proad-sub", _subscribe, args)


# ------------------------------------------------------------------------------------------------
# proad-archive


def archive_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-archive",
        description="The reference NG archiver: store every NG the daemon's NG channel delivers "
        "(JPEG, map .npy and heatmap PNG, header JSON) and acknowledge it; duplicates are counted, not stored.",
        epilog="Exit codes: 0 stopped (SIGTERM/SIGINT or --seconds), 2 bad arguments or keys.",
    )
    p.add_argument("--out", type=Path, required=True, help="archive directory (<camera>/<result_id>.*)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5557", help="the daemon's NG channel")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--heartbeat-s", type=float, default=1.0, help="how often to tell the daemon it is alive")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync files before acknowledging")
    _curve_args(p)
    return p


def _archive(args: argparse.Namespace) -> int:
    from proad.edge.archiver import Archiver

    _setup_logging("INFO")
    stop = threading.Event()
    archiver = Archiver(args.endpoint, args.out, _client_keys(args), args.heartbeat_s, not args.no_fsync)
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"archiving NG results from {args.endpoint} into {args.out}", flush=True)
    try:
        archiver.run(stop, args.seconds)
    finally:
        archiver.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(json.dumps({"stored": archiver.stored, "duplicates": archiver.duplicates, "rejected": archiver.rejected}))
    return EXIT_OK


def archive_main(argv: Sequence[str] | None = None) -> int:
    args = archive_parser().parse_args(argv)
    return _guarded("proad-archive", _archive, args)
