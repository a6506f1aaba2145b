"""Prometheus metrics (off by default; ``metrics.prometheus_port`` turns them on).

A custom collector reads :class:`~proad.edge.telemetry.Telemetry` at scrape time, so the status
endpoint and ``/metrics`` can never disagree, and prometheus-client does the exposition and the
HTTP server. Names follow Prometheus conventions (``proad_..._total`` counters, ``_ms`` histograms).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proad.edge.sockets import StartupError
from proad.edge.telemetry import Telemetry


class TelemetryCollector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        snap = self.telemetry.snapshot()
        for name, doc in (("frames_in", "frames read from the camera"), ("published", "results published"),
                          ("ng", "NG results published"), ("reconnects", "camera reopen attempts")):
            family = CounterMetricFamily(f"proad_{name}", doc, labels=["camera"])
            for camera, value in snap[name].items():
                family.add_metric([camera], value)
            yield family
        for name, doc in (("dropped", "frames or results dropped, by reason"),
                          ("failsafe_ng", "fail-safe NG published (no result in time), by reason")):
            family = CounterMetricFamily(f"proad_{name}", doc, labels=["camera", "reason"])
            for reason, per_camera in snap[name].items():
                for camera, value in per_camera.items():
                    family.add_metric([camera, reason], value)
            yield family
        events = CounterMetricFamily("proad_events", "daemon events: NG delivered, redelivered, refused "
                                     "CURVE handshakes, invalid messages, backend errors", labels=["event"])
        for event, value in snap["events"].items():
            events.add_metric([event], value)
        yield events
        further: dict[str, GaugeMetricFamily] = {}
        for key, value in snap["gauges"].items():
            name, _, channel = key.partition(".")
            if not channel:
                yield GaugeMetricFamily(f"proad_{name}", f"{name.replace('_', ' ')} (now)", value=value)
                continue
            if name not in further:  # "spool_depth.mqtt": a further NG channel's (ng_channels), labelled by name
                further[name] = GaugeMetricFamily(f"proad_channel_{name}", f"{name.replace('_', ' ')} of a further "
                                                  "NG channel (now)", labels=["channel"])
            further[name].add_metric([channel], value)
        yield from further.values()
        connections = GaugeMetricFamily("proad_connections", "peers connected per socket", labels=["socket"])
        for socket, value in snap["connections"].items():
            connections.add_metric([socket], value)
        yield connections
        yield GaugeMetricFamily("proad_uptime_seconds", "seconds since the daemon started", value=snap["uptime_s"])
        latency = HistogramMetricFamily("proad_latency_ms", "latency per stage in milliseconds", labels=["stage"])
        for stage, (buckets, total) in self.telemetry.histogram_snapshot().items():
            latency.add_metric([stage], buckets, total)
        yield latency


class MetricsServer:
    """``/metrics`` over HTTP on ``address:port`` (port 0: any free port, see ``.port``)."""

    def __init__(self, telemetry: Telemetry, port: int, address: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(TelemetryCollector(telemetry))
        try:
            self.server: Any
            self.server, self.thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise StartupError(f"cannot serve Prometheus metrics on {address}:{port}: {exc}") from exc
        self.port = int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
