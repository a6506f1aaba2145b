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
   share of the backend's rate divided by four that the daemon keeps;
6. **several cameras** (``--cameras 4 8``), batched across cameras (``backend.max_batch`` = the
   number of cameras), beside the backend alone at that batch: offered at half its rate (every
   camera must be served, < 1 % dropped, p99 capture -> publish < 100 ms) and at twice it (the
   daemon's share of backend-alone throughput, and how evenly the cameras are served: the spread
   of their frame rates, (max - min) / mean).

The machine's speed drifts by tens of percent within minutes (one run of 2026-12-04 measured ONNX
Runtime alone at 50 and 87 img/s two minutes apart), so each overloaded daemon run lies between two
runs of the backend alone and is compared with their mean; with ``--rounds N`` each overloaded case
(one camera, several cameras) runs N times that way, :func:`interleaved`, and the median round is
the result (the upper middle one for an even N; every round's ratio is kept). The several-camera
case's first round also has the below-capacity run inside its bracket. The stalled-subscriber, 60
fps and 2x2-tile runs follow the single-camera rounds, between the last of them and one more run of
the backend alone: the tiles are compared with that bracket's mean, and the stalled subscriber's
share of it with the overloaded daemon's share of its own (``stalled_ratio``).
``openvino-int8`` is the OpenVINO backend on the int8 graph ``proad-export onnx --precision
int8`` writes (calibrated here on the synthetic camera's frames; its accuracy is judged on real
images by ``bench/int8.py``, not here); ``openvino-int8-bf16`` the same graph with its float parts
in bf16 (``openvino.precision: bf16``, where the CPU has bf16 units); ``openvino-int8-throughput`` the
same graph under OpenVINO's throughput hint with two streams (``openvino.hint: throughput``: the
daemon keeps two batches in flight, one per stream, and a batch that finds both streams free is cut
into one part per stream); ``openvino-int8-throughput-serial`` the same with one batch at a time
(``backend.in_flight: 1``, the daemon before in-flight batches: only the cut);
``onnxruntime-2-sessions`` ONNX Runtime with two one-thread sessions (``onnxruntime.sessions: 2``,
two batches in flight). The backend alone is always one call at a time, so a daemon that keeps two
in flight can deliver more than it.

The model is the default architecture (or with ``--model`` fields on top), untrained (speed does not
depend on the weights); the
daemon's threshold is set from the backend-alone scores so that a fifth of the frames are NG, as
the camera's defect rate would make them, since every NG also costs a JPEG.

Writes ``bench/results/pipeline.json`` and ``pipeline.md`` (``--name`` another stem).

    python bench/pipeline.py [--seconds 10] [--threads 2] [--backends onnxruntime openvino openvino-int8 torch]
                             [--cameras 4 8] [--rounds 1] [--model '{"memory_size": 4096}'] [--name pipeline]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


def make_model(tmp: Path, fields: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """The default model, or one with ModelConfig ``fields``, untrained (speed does not depend on the
    weights), as checkpoint and ONNX. A memory of normal patches gets a random bank: its search costs
    the same, and an unfilled one is refused on load."""
    from proad.checkpoint import Checkpoint, save_checkpoint
    from proad.config import ModelConfig
    from proad.export.onnx_export import export_onnx
    from proad.model import ProAD

    ckpt, onnx_path = tmp / "model.pt", tmp / "model.onnx"
    model = ProAD(ModelConfig(**(fields or {})))
    if model.cfg.memory_size:
        model.memory_bank.normal_()
    save_checkpoint(Checkpoint(model.cfg, model.trainable_state_dict(), 0.3), ckpt)
    export_onnx(ckpt, onnx_path, verify_count=1)
    return ckpt, onnx_path


def make_int8(ckpt: Path, onnx_path: Path, frames: np.ndarray, tmp: Path) -> Path:
    """The int8 graph of ``proad-export onnx --precision int8``, calibrated on the camera's frames.

    Speed only: the untrained model's int8 is not held to the fp32 check here (``bench/int8.py``
    judges a trained model's on real images), so the tolerance is open."""
    import cv2

    from proad.checkpoint import load_model
    from proad.export.quantize import first_feature_block, quantize

    calib = tmp / "calibration"
    calib.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(calib / f"{i:03d}.png"), frame)
    out = tmp / "model-int8.onnx"
    model, _ = load_model(ckpt)
    open_tolerance = {"score_error_rel": math.inf, "map_error_rel_p999": math.inf, "rank_agreement_min": 0.0,
                      "score_shift_rel": math.inf}
    quantize(onnx_path, out, [calib], first_feature_block(model), tolerance=open_tolerance)
    return out


def _backend_alone(
    kind: str, model: Path, threads: int, seconds: float, frames: np.ndarray, batch: int = 1,
    options: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """(images/s at ``batch``, a threshold making a fifth of the camera's frames NG, as its defect rate does)."""
    backend = load_backend(BackendConfig(kind=kind, model=str(model), threads=threads, device="cpu", max_batch=batch,
                                         **(options or {})))
    backend.warmup()
    done, t0, scores = 0, time.perf_counter(), []
    while time.perf_counter() - t0 < seconds:
        picks = [(done + i) % len(frames) for i in range(batch)]
        _, score = backend.infer(frames[picks])
        scores.extend(float(v) for v in score)
        done += batch
    fps = done / (time.perf_counter() - t0)
    backend.close()
    return fps, float(np.quantile(scores[: len(frames)], 0.8))


def _daemon_run(
    kind: str, model: Path, threads: int, seconds: float, fps: float, tmp: Path, threshold: float,
    stalled: bool = False, tiles: tuple[int, int] | None = None, cameras: int = 1,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One daemon process: ``cameras`` synthetic cameras at ``fps`` each, batched across cameras."""
    ids = [f"cam{i}" for i in range(cameras)]
    cfg = {
        "cameras": [{"id": cid, "source": {"kind": "synthetic", "category": "board", "fps": fps,
                                           "pool": 32 if cameras == 1 else 12, "defect_rate": 0.2, "seed": i},
                     "tiles": tiles} for i, cid in enumerate(ids)],
        "backend": {"kind": kind, "model": str(model), "threads": threads, "device": "cpu", "max_batch": cameras,
                    **(options or {})},
        "threshold": threshold,  # the untrained model's scores: a fifth NG, each with its JPEG, as on a line
        "publish": {"endpoint": "tcp://127.0.0.1:5565", "hwm": 1000},
        "status": {"endpoint": None},
        "log_level": "WARNING",
    }  # fmt: skip
    path = tmp / f"{kind}_{cameras}x{fps:g}{'_tiled' if tiles else ''}.json"
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
    per_camera = dict.fromkeys(ids, 0)
    while (r := sub.recv(timeout_ms=5000)) is not None:
        now = time.monotonic()
        if now < skip_until:
            continue
        if t_start is None:
            t_start = now
        if now - t_start >= seconds:
            break
        count += 1
        per_camera[r.header.camera_id] += 1
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
    rates = {cid: n / elapsed for cid, n in per_camera.items()}
    dropped = {cid: sum(c.get(cid, 0) for c in summary["dropped"].values()) for cid in ids}
    frames_in = {cid: summary["frames_in"].get(cid, 0) for cid in ids}
    return {
        "fps": count / elapsed,
        "camera_fps": fps,
        "cameras": cameras,
        "latency_publish_ms": {f"p{q}": float(np.percentile(total_ms, q)) for q in (50, 90, 99)},
        "latency_received_ms": {f"p{q}": float(np.percentile(e2e_ms, q)) for q in (50, 90, 99)},
        "daemon_dropped": summary["dropped"],
        "per_camera_fps": rates,
        "camera_spread": (max(rates.values()) - min(rates.values())) / max(1e-9, float(np.mean(list(rates.values())))),
        "dropped_share": {cid: dropped[cid] / max(1, frames_in[cid]) for cid in ids},
        "missed_on_wire": int(sum(sub.missed[cid] for cid in ids)),
    }


def interleaved(
    daemon: Callable[[float], dict[str, Any]], alone: Callable[[], float], rounds: int, first: float
) -> dict[str, Any]:
    """``rounds`` overloaded daemon runs, each followed by a run of the backend alone, so each lies
    between two of them (``first`` is the one before the first run); ``daemon(rate)`` offers twice
    the last rate measured alone. The machine drifts, so each run is compared with the mean of its
    two neighbours, and the median round is the result (the upper middle one for an even number;
    every round is kept)."""
    alones, runs = [first], []
    for _ in range(rounds):
        runs.append(daemon(alones[-1]))
        alones.append(alone())
    ratios = [run["fps"] / ((alones[i] + alones[i + 1]) / 2) for i, run in enumerate(runs)]
    middle = sorted(range(rounds), key=ratios.__getitem__)[rounds // 2]
    return {"run": runs[middle], "alone": (alones[middle] + alones[middle + 1]) / 2,
            "before_after": alones[middle: middle + 2], "ratio": ratios[middle], "ratios": ratios,
            "alone_rounds": alones, "fps_rounds": [run["fps"] for run in runs]}  # fmt: skip


def _rounds_text(ratios: list[float]) -> str:
    return f"; rounds {', '.join(f'{r:.0%}' for r in ratios)}" if len(ratios) > 1 else ""


def measure_backend(
    label: str, kind: str, model: Path, args: argparse.Namespace, frames: np.ndarray, tmp: Path,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every daemon case of one backend, the overloaded ones between runs of the backend alone
    (:func:`interleaved`).

    ``options``: further backend config fields (e.g. ``{"openvino": {"precision": "bf16"}}``)."""
    backend_alone = functools.partial(_backend_alone, kind, model, args.threads, args.seconds / 2, frames,
                                      options=options)  # fmt: skip
    daemon_run = functools.partial(_daemon_run, kind, model, args.threads, args.seconds, options=options)
    before, thr = backend_alone()
    one = interleaved(lambda rate: daemon_run(round(2 * rate), tmp, thr), lambda: backend_alone()[0], args.rounds,
                      before)  # fmt: skip
    flat, alone = one["run"], one["alone"]
    stall = daemon_run(round(2 * alone), tmp, thr, stalled=True)
    paced = daemon_run(60.0, tmp, thr)
    tiled = daemon_run(round(alone / 2), tmp, thr, tiles=(2, 2))
    after, _ = backend_alone()
    later_alone = (one["alone_rounds"][-1] + after) / 2  # around the stalled, 60 fps and tiled runs
    row: dict[str, Any] = {
        "backend_alone_fps": alone, "backend_alone_before_after": one["before_after"], "daemon_fps": flat["fps"],
        "ratio": one["ratio"], "ratios": one["ratios"], "backend_alone_rounds": one["alone_rounds"],
        "daemon_fps_rounds": one["fps_rounds"], "daemon_fps_stalled_subscriber": stall["fps"],
        "stalled_ratio": stall["fps"] / later_alone / one["ratio"], "flat_out": flat, "stalled_subscriber": stall,
        "at_60fps": paced, "tiled_2x2": tiled, "later_backend_alone_fps": later_alone,
        "tiled_ratio": 4 * tiled["fps"] / later_alone, "multi_camera": [],
    }  # fmt: skip
    print(f"{label}: backend alone {alone:.1f} img/s, daemon {flat['fps']:.1f} FPS ({row['ratio']:.0%}"
          f"{_rounds_text(one['ratios'])}), with a stalled subscriber {stall['fps']:.1f} FPS "
          f"({row['stalled_ratio']:.0%}); at 60 fps: {paced['fps']:.1f} FPS, p50/p99 capture->publish "
          f"{paced['latency_publish_ms']['p50']:.1f}/{paced['latency_publish_ms']['p99']:.1f} ms; "
          f"2x2 tiles: {tiled['fps']:.1f} FPS ({row['tiled_ratio']:.0%} of alone / 4)", flush=True)
    for n in args.cameras:
        b_first, _ = backend_alone(batch=n)
        below = daemon_run(b_first / 2 / n, tmp, thr, cameras=n)
        many = interleaved(lambda rate, n=n: daemon_run(2 * rate / n, tmp, thr, cameras=n),
                           lambda n=n: backend_alone(batch=n)[0], args.rounds, b_first)  # fmt: skip
        over = many["run"]
        multi = {"cameras": n, "backend_alone_fps": many["alone"], "backend_alone_before_after": many["before_after"],
                 "backend_alone_rounds": many["alone_rounds"], "below": below, "overloaded": over,
                 "overloaded_ratio": many["ratio"], "overloaded_ratios": many["ratios"],
                 "overloaded_rounds": many["fps_rounds"]}  # fmt: skip
        row["multi_camera"].append(multi)
        print(f"{label}, {n} cameras: backend alone at batch {n} {many['alone']:.1f} img/s; at half of it every "
              f"camera {min(below['per_camera_fps'].values()):.1f}-{max(below['per_camera_fps'].values()):.1f} FPS, "
              f"dropped at most {max(below['dropped_share'].values()):.2%}, p99 capture->publish "
              f"{below['latency_publish_ms']['p99']:.1f} ms; overloaded {over['fps']:.1f} FPS "
              f"({many['ratio']:.0%} of alone{_rounds_text(many['ratios'])}), camera spread "
              f"{over['camera_spread']:.1%}", flush=True)
    return row


def table(data: dict[str, Any]) -> str:
    """The Markdown of a run's results (``data`` as written to the JSON)."""
    rows, rounds = data["rows"], data.get("rounds", 1)
    today = next((r for r in rows if r["backend"] == "onnxruntime"), None)
    lines = [
        "# Daemon end to end vs backend alone",
        "",
        f"{data['machine']['cpu']} ({data['machine']['cores']} cores), {data['threads']} inference threads, "
        + (f"the default model with {json.dumps(data['model'])}" if data.get("model") else "default model")
        + f", 256x256, synthetic board camera(s), loopback ZeroMQ, {data['machine']['date']}. Backend alone: the "
        "mean of its rate right before and right after the daemon's overloaded run"
        + (f"; {rounds} such runs, the median shown, every round's ratio after it." if rounds > 1 else ".")
        + " The never-reading subscriber, 60 fps and tiled runs follow, between the last overloaded run's backend "
        "alone and one more: tiles are compared with their mean, and the never-reading subscriber's share of it with "
        "the overloaded daemon's share of its own.",
        "",
        "| backend | backend alone img/s | daemon overloaded FPS | daemon / alone | daemon vs ONNX Runtime's | "
        "... with a subscriber that never reads: FPS (vs without) | at 60 fps: FPS | capture->publish p50 / p99 ms | "
        "capture->received p50 / p99 ms | 2x2 tiles overloaded: FPS (vs alone / 4) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["at_60fps"]
        lines.append(
            f"| {r['backend']} | {r['backend_alone_fps']:.1f} | {r['daemon_fps']:.1f} | "
            f"{r['ratio']:.0%}{_rounds_text(r.get('ratios', []))} | "
            + (f"{r['daemon_fps'] / today['daemon_fps']:.2f}x | " if today else "- | ")
            + f"{r['daemon_fps_stalled_subscriber']:.1f} ({r['stalled_ratio']:.0%}) | {a['fps']:.1f} | "
            f"{a['latency_publish_ms']['p50']:.1f} / {a['latency_publish_ms']['p99']:.1f} | "
            f"{a['latency_received_ms']['p50']:.1f} / {a['latency_received_ms']['p99']:.1f} | "
            f"{r['tiled_2x2']['fps']:.1f} ({r['tiled_ratio']:.0%}) |"
        )
    lines += ["", "Overloaded: the camera offers twice the backend-alone rate and the daemon drops the oldest waiting "
              "frame (counted); the daemon's FPS is what a subscriber received per second."]
    if any(r["multi_camera"] for r in rows):
        lines += [
            "", "**Several cameras**, batched across cameras (max_batch = cameras), beside the backend alone at that "
            "batch. Below capacity: the cameras together offer half the backend-alone rate. Overloaded: twice it; "
            "spread = (fastest - slowest camera) / mean (of the median round). Each overloaded run lies between "
            "two runs of the backend alone and is compared with their mean"
            + ("; the table shows the median round, every round's ratio after it." if rounds > 1 else "."),
            "",
            "| backend | cameras | alone at that batch img/s | below: FPS per camera | below: most dropped | "
            "below: p99 capture->publish ms | overloaded: FPS (vs alone) | overloaded: camera spread |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for r in rows:
            for m in r["multi_camera"]:
                b, o = m["below"], m["overloaded"]
                lines.append(
                    f"| {r['backend']} | {m['cameras']} | {m['backend_alone_fps']:.1f} | "
                    f"{min(b['per_camera_fps'].values()):.1f}-{max(b['per_camera_fps'].values()):.1f} | "
                    f"{max(b['dropped_share'].values()):.2%} | {b['latency_publish_ms']['p99']:.1f} | "
                    f"{o['fps']:.1f} ({m['overloaded_ratio']:.0%}{_rounds_text(m.get('overloaded_ratios', []))}) | "
                    f"{o['camera_spread']:.1%} |"
                )
    return "\n".join(lines)


#: the backend config each variant of a backend adds (``measure_backend``'s ``options``)
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {
    "openvino-int8-bf16": {"openvino": {"precision": "bf16"}},
    "openvino-int8-throughput": {"openvino": {"hint": "throughput", "streams": 2}},
    "openvino-int8-throughput-serial": {"openvino": {"hint": "throughput", "streams": 2}, "in_flight": 1},
    "onnxruntime-2-sessions": {"onnxruntime": {"sessions": 2}},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "openvino-int8", "torch"],
                   choices=["onnxruntime", "onnxruntime-2-sessions", "openvino", "openvino-int8", "openvino-int8-bf16",
                            "openvino-int8-throughput", "openvino-int8-throughput-serial", "torch"])
    p.add_argument("--name", default="pipeline", help="results file stem under bench/results")
    p.add_argument("--model", type=json.loads, default={},
                   help="ModelConfig fields on top of the default, as JSON (e.g. a memory of normal patches)")
    p.add_argument("--cameras", nargs="*", type=int, default=[4, 8], help="several-camera cases (none: skip)")
    p.add_argument("--rounds", type=int, default=1,
                   help="each overloaded case (one camera, several): this many daemon runs, each between two runs "
                        "of the backend alone; the table shows the median round (for an even N the upper middle one; "
                        "default: 1)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")

    cam = SyntheticCamera(SyntheticSource(category="board", pool=32, defect_rate=0.2, fps=1000))
    cam.open()
    frames = np.stack([img for img, _ in cam.pool])
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt, onnx_path = make_model(tmp, args.model)
        int8: Path | None = None
        for name in args.backends:
            if name == "torch":
                kind, model = "torch", ckpt
            elif name.startswith("openvino-int8"):  # one int8 graph for all of its backends
                int8 = int8 or make_int8(ckpt, onnx_path, frames, tmp)
                kind, model = "openvino", int8
            else:
                kind, model = name.split("-")[0], onnx_path
            rows.append({"backend": name, **measure_backend(name, kind, model, args, frames, tmp,
                                                            BACKEND_OPTIONS.get(name))})
    data = {"machine": machine(), "threads": args.threads, "seconds": args.seconds, "rounds": args.rounds,
            "model": args.model, "rows": rows}  # fmt: skip
    write_results(args.name, data, table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
