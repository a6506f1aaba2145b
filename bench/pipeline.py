"""End-to-end throughput and latency of the daemon, next to the backend alone, in the same run.

For each backend (ONNX Runtime, OpenVINO, torch) on this machine, at 256x256 with the default model:

1. **backend alone**: ``backend.infer`` on the synthetic camera's frames, one at a time, flat out;
2. **daemon, overloaded**: ``proad-edge run`` as its own process with the synthetic camera running
   at twice what the backend alone can take (so the oldest waiting frame is dropped, counted), a
   subscriber in this process; throughput = results received per second;
3. **daemon overloaded, one subscriber never reads**: as 2, with a second subscriber that
   connects and never reads (its queue fills, PUB drops for it at the HWM): the daemon must keep
   its throughput;
4. **daemon at 60 fps**: the same with a 60 fps camera: latency capture -> publish (from the
   header) and capture -> received, percentiles;
5. **daemon overloaded, 2 x 2 tiles**: as 2 with the camera's frames cut into four inputs
   (``cameras[].tiles``, what a large-picture category gets): what tiling costs a line, as the
   share of the backend's rate divided by four that the daemon keeps.

The model is the default architecture, untrained (speed does not depend on the weights); the
daemon's threshold is set from the backend-alone scores so that a fifth of the frames are NG, as
the camera's defect rate would make them, since every NG also costs a JPEG.

Writes ``bench/results/pipeline.json`` and ``pipeline.md``.

    python bench/pipeline.py [--seconds 10] [--threads 2] [--backends onnxruntime torch]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results
from proad.edge.backends import load_backend
from proad.edge.config import BackendConfig, SyntheticSource
from proad.edge.sources import SyntheticCamera
from proad.edge.subscriber import Subscriber


def make_model(tmp: Path) -> tuple[Path, Path]:
    """The default model (untrained: speed does not depend on the weights) as checkpoint and ONNX."""
    from proad.checkpoint import Checkpoint, save_checkpoint
    from proad.config import ModelConfig
    from proad.export.onnx_export import export_onnx
    from proad.model import ProAD

    ckpt, onnx_path = tmp / "model.pt", tmp / "model.onnx"
    model = ProAD(ModelConfig())
    save_checkpoint(Checkpoint(model.cfg, model.trainable_state_dict(), 0.3), ckpt)
    export_onnx(ckpt, onnx_path, verify_count=1)
    return ckpt, onnx_path


def backend_alone(kind: str, model: Path, threads: int, seconds: float, frames: np.ndarray) -> tuple[float, float]:
    """(images/s, a threshold making a fifth of the camera's frames NG, as its defect rate does)."""
    backend = load_backend(BackendConfig(kind=kind, model=str(model), threads=threads, device="cpu"))
    backend.warmup()
    done, t0, scores = 0, time.perf_counter(), []
    while time.perf_counter() - t0 < seconds:
        _, score = backend.infer(frames[done % len(frames)][None])
        scores.append(float(score[0]))
        done += 1
    fps = done / (time.perf_counter() - t0)
    backend.close()
    return fps, float(np.quantile(scores[: len(frames)], 0.8))


def daemon_run(
    kind: str, model: Path, threads: int, seconds: float, fps: float, tmp: Path, threshold: float,
    stalled: bool = False, tiles: tuple[int, int] | None = None,
) -> dict[str, Any]:
    cfg = {
        "cameras": [{"id": "cam0", "source": {"kind": "synthetic", "category": "board", "fps": fps, "pool": 32,
                                              "defect_rate": 0.2}, "tiles": tiles}],
        "backend": {"kind": kind, "model": str(model), "threads": threads, "device": "cpu", "max_batch": 1},
        "threshold": threshold,  # the untrained model's scores: a fifth NG, each with its JPEG, as on a line
        "publish": {"endpoint": "tcp://127.0.0.1:5565", "hwm": 1000},
        "status": {"endpoint": None},
        "log_level": "WARNING",
    }  # fmt: skip
    path = tmp / f"{kind}_{fps:g}{'_tiled' if tiles else ''}.json"
    path.write_text(json.dumps(cfg))
    sub = Subscriber("tcp://127.0.0.1:5565")
    stalled_sub = None
    if stalled:  # connects, never reads: a dashboard on a frozen laptop
        stalled_sub = Subscriber("tcp://127.0.0.1:5565", hwm=1, ctx=zmq.Context())
        stalled_sub.sock.setsockopt(zmq.RCVBUF, 4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from proad.edge.cli import edge_main; raise SystemExit(edge_main())",
         "run", "--config", str(path), "--seconds", str(seconds + 3)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = sub.recv(timeout_ms=60000)  # model load and camera start
    if first is None:
        proc.kill()
        raise RuntimeError(f"no results from the {kind} daemon: {proc.communicate()[1][-2000:]}")
    skip_until = time.monotonic() + 1.0  # let it settle before counting
    count, total_ms, e2e_ms, t_start = 0, [], [], None
    while (r := sub.recv(timeout_ms=5000)) is not None:
        now = time.monotonic()
        if now < skip_until:
            continue
        if t_start is None:
            t_start = now
        if now - t_start >= seconds:
            break
        count += 1
        total_ms.append(r.header.latency_ms["total"])
        e2e_ms.append((time.time() - r.header.capture_ts) * 1000)
    elapsed = time.monotonic() - t_start if t_start else 1.0
    sub.close()
    if stalled_sub is not None:
        stalled_sub.close()
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} daemon exited {proc.returncode}: {err[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    return {
        "fps": count / elapsed,
        "camera_fps": fps,
        "latency_publish_ms": {f"p{q}": float(np.percentile(total_ms, q)) for q in (50, 90, 99)},
        "latency_received_ms": {f"p{q}": float(np.percentile(e2e_ms, q)) for q in (50, 90, 99)},
        "daemon_dropped": summary["dropped"],
        "missed_on_wire": int(sub.missed["cam0"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "torch"],
                   choices=["onnxruntime", "openvino", "torch"])
    args = p.parse_args()

    cam = SyntheticCamera(SyntheticSource(category="board", pool=32, defect_rate=0.2, fps=1000))
    cam.open()
    frames = np.stack([img for img, _ in cam.pool])
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt, onnx_path = make_model(tmp)
        for kind in args.backends:
            model = ckpt if kind == "torch" else onnx_path
            alone, thr = backend_alone(kind, model, args.threads, args.seconds, frames)
            flat = daemon_run(kind, model, args.threads, args.seconds, round(2 * alone), tmp, thr)
            stall = daemon_run(kind, model, args.threads, args.seconds, round(2 * alone), tmp, thr, stalled=True)
            paced = daemon_run(kind, model, args.threads, args.seconds, 60.0, tmp, thr)
            tiled = daemon_run(kind, model, args.threads, args.seconds, round(alone / 2), tmp, thr, tiles=(2, 2))
            row = {"backend": kind, "backend_alone_fps": alone, "daemon_fps": flat["fps"],
                   "ratio": flat["fps"] / alone, "daemon_fps_stalled_subscriber": stall["fps"],
                   "stalled_ratio": stall["fps"] / flat["fps"], "flat_out": flat, "stalled_subscriber": stall,
                   "at_60fps": paced, "tiled_2x2": tiled, "tiled_ratio": 4 * tiled["fps"] / alone}  # fmt: skip
            rows.append(row)
            print(f"{kind}: backend alone {alone:.1f} img/s, daemon {flat['fps']:.1f} FPS ({row['ratio']:.0%}), "
                  f"with a stalled subscriber {stall['fps']:.1f} FPS ({row['stalled_ratio']:.0%}); "
                  f"at 60 fps: {paced['fps']:.1f} FPS, p50/p99 capture->publish "
                  f"{paced['latency_publish_ms']['p50']:.1f}/{paced['latency_publish_ms']['p99']:.1f} ms; "
                  f"2x2 tiles: {tiled['fps']:.1f} FPS ({row['tiled_ratio']:.0%} of alone / 4)", flush=True)
    data = {"machine": machine(), "threads": args.threads, "seconds": args.seconds, "rows": rows}
    lines = [
        "# Daemon end to end vs backend alone",
        "",
        f"{data['machine']['cpu']} ({data['machine']['cores']} cores), {args.threads} inference threads, default "
        f"model, 256x256, synthetic board camera, loopback ZeroMQ, {data['machine']['date']}.",
        "",
        "| backend | backend alone img/s | daemon overloaded FPS | daemon / alone | ... with a subscriber that never "
        "reads: FPS (vs without) | at 60 fps: FPS | capture->publish p50 / p99 ms | capture->received p50 / p99 ms | "
        "2x2 tiles overloaded: FPS (vs alone / 4) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["at_60fps"]
        lines.append(
            f"| {r['backend']} | {r['backend_alone_fps']:.1f} | {r['daemon_fps']:.1f} | {r['ratio']:.0%} | "
            f"{r['daemon_fps_stalled_subscriber']:.1f} ({r['stalled_ratio']:.0%}) | {a['fps']:.1f} | "
            f"{a['latency_publish_ms']['p50']:.1f} / {a['latency_publish_ms']['p99']:.1f} | "
            f"{a['latency_received_ms']['p50']:.1f} / {a['latency_received_ms']['p99']:.1f} | "
            + (f"{r['tiled_2x2']['fps']:.1f} ({r['tiled_ratio']:.0%}) |" if "tiled_2x2" in r else "- |")
        )
    lines += ["", "Overloaded: the camera offers twice the backend-alone rate and the daemon drops the oldest waiting "
              "frame (counted); the daemon's FPS is what a subscriber received per second."]
    write_results("pipeline", data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
