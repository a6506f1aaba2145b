"""``proad-bridge``: the daemon's results into what a factory line speaks.

::

    proad-bridge mqtt  [--config mqtt.yaml] [--set broker.port=1884 ...] [--seconds N]
    proad-bridge opcua [--config opcua.yaml] [--set ...] [--seconds N]

Each bridge is its own process, a client of the daemon like any subscriber: it never slows
inspection. Settings come from a YAML/JSON file of the bridge's config model
(:class:`~proad.edge.bridges.mqtt.MqttBridgeConfig`, :class:`~proad.edge.bridges.opcua.OpcUaBridgeConfig`)
and ``--set`` overrides by dotted path. The final counters are printed as JSON on exit.

Exit codes: 0 stopped (SIGTERM/SIGINT or ``--seconds``); 1 failed while running; 2 bad config, a
socket that cannot bind, unreadable keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proad.clikit import run_command, say

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-bridge",
        description="Carry the daemon's results to an MQTT broker or serve them to PLCs over OPC UA.",
        epilog="Exit codes: 0 stopped, 1 failed while running, 2 bad config, socket or keys.",
    )
    sub = p.add_subparsers(dest="kind", required=True)
    for kind, text in (("mqtt", "publish results to an MQTT broker, every NG at least once"),
                       ("opcua", "serve each camera's last result, counters and a handshake over OPC UA")):
        b = sub.add_parser(kind, help=text, description=text)
        b.add_argument("--config", type=Path, help="the bridge's config as YAML or JSON (default: all defaults)")
        b.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override fields by dotted path, e.g. broker.port=1884 daemon.endpoint=tcp://10.0.0.5:5555")
        b.add_argument("--seconds", type=float, help="stop by itself after this long")
        b.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _bridge(args: argparse.Namespace) -> int:
    from proad.edge.config import load_config

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.kind == "mqtt":
        from proad.edge.bridges import mqtt as bridge
    else:
        from proad.edge.bridges import opcua as bridge  # type: ignore[no-redef]
    config_model: Any = bridge.MqttBridgeConfig if args.kind == "mqtt" else bridge.OpcUaBridgeConfig
    cfg = load_config(config_model, args.config, args.set)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    timer = threading.Timer(args.seconds, stop.set) if args.seconds is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        counters = bridge.run_bridge(cfg, stop, lambda *_: print(f"proad-bridge {args.kind}: running", flush=True))
    finally:
        if timer is not None:
            timer.cancel()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(json.dumps(counters), flush=True)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from proad.edge.config import ConfigError
    from proad.edge.sockets import StartupError

    args = parser().parse_args(argv)
    failures = [(kind, EXIT_BAD_INPUT, say("error: ")) for kind in (ConfigError, StartupError)]
    return run_command("proad-bridge", _bridge, args, failures)
