"""What the map tail costs: DESIGN's steps run one by one against the same map as matrix products.

The anomaly map is ``1 - cos`` per level, bilinear upsampling to the input size, the mean over the
levels and a Gaussian (DESIGN §2). Those three steps are linear and separable, so the model computes
them as two small matrix products per level (``proad.model.upsample_blur_operator``); run one by one
on 256 x 256 they were about a tenth of the whole model's time on a CPU. This exports the model twice,
exactly as ``proad-export onnx`` does, once with the shipped tail and once with the steps one by one
(``ProAD.anomaly_map_steps``, the reference the tests compare it with), checks that both graphs give
the same maps, and times the whole model at batch 1 and 8, interleaved (``--rounds`` rounds, medians):
ONNX Runtime fp32, OpenVINO fp32 (the daemon's ``backend.kind: openvino``) and OpenVINO int8 (the
export's int8 form as it was when this was measured, blocks 0-1 in float, its fallback form since
2026-12-05; calibrated here on rendered images: its speed, not its accuracy, which
``bench/int8.py`` measures on real images)::

    python bench/map_tail.py [--rounds 5] [--seconds 4] [--threads 2]   # bench/results/map_tail.{json,md}
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, throughput, write_results
from proad.checkpoint import Checkpoint
from proad.config import ModelConfig
from proad.export.onnx_export import build_onnx, sample_images
from proad.export.quantize import first_feature_block, float_nodes, nncf_quantize, runner
from proad.model import ProAD

TAILS = ("steps", "matrices")


def ort_runner(proto: onnx.ModelProto, threads: int) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="measured time per graph, batch size and round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is kept")
    p.add_argument("--name", default="map_tail")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ProAD(ModelConfig()).eval()  # untrained: the speed does not depend on the weights
    ckpt = Checkpoint(model.cfg, model.trainable_state_dict(), 0.5)
    graphs = {"matrices": build_onnx(model, ckpt)}
    model.anomaly_map = model.anomaly_map_steps  # type: ignore[method-assign]
    graphs["steps"] = build_onnx(model, ckpt)
    calibration = list(sample_images(model.cfg.image_size, 16))
    first = first_feature_block(model)
    print("quantizing both graphs (the export's fallback int8 form) ...", flush=True)
    int8 = {tail: nncf_quantize(g, calibration, float_nodes(g, first)) for tail, g in graphs.items()}

    runs: dict[tuple[str, str], Callable[[np.ndarray], Any]] = {}
    for tail in TAILS:
        runs[("onnxruntime fp32", tail)] = ort_runner(graphs[tail], args.threads)
        runs[("openvino fp32", tail)] = runner(graphs[tail], args.threads)
        runs[("openvino int8", tail)] = runner(int8[tail], args.threads)
    images8 = sample_images(model.cfg.image_size, 8)
    differences = {
        runtime: float(np.abs(runs[(runtime, "steps")](images8)[0] - runs[(runtime, "matrices")](images8)[0]).max())
        for runtime in ("onnxruntime fp32", "openvino fp32", "openvino int8")
    }
    print("largest |map| difference between the tails:", differences, flush=True)

    rows = []
    for batch in (1, 8):
        images = images8[:batch]
        rounds: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for r in range(args.rounds):
            for key, run in runs.items():
                rounds[key].append(throughput(run, images, args.seconds))
            print(f"batch {batch}, round {r + 1}/{args.rounds} done", flush=True)
        med = {key: float(np.median(v)) for key, v in rounds.items()}
        ort_fp32 = {tail: med[("onnxruntime fp32", tail)] for tail in TAILS}
        for runtime in ("onnxruntime fp32", "openvino fp32", "openvino int8"):
            s, m = med[(runtime, "steps")], med[(runtime, "matrices")]
            rows.append({
                "batch": batch, "runtime": runtime, "steps_img_s": s, "matrices_img_s": m, "speedup": m / s,
                "vs_ort_fp32_steps": s / ort_fp32["steps"], "vs_ort_fp32_matrices": m / ort_fp32["matrices"],
                "rounds": {tail: rounds[(runtime, tail)] for tail in TAILS},
            })  # fmt: skip
            print(f"batch {batch} {runtime}: steps {s:.1f}, matrices {m:.1f} img/s ({m / s:.2f}x)", flush=True)

    info = machine()
    data = {"machine": info, "threads": args.threads, "rounds": args.rounds, "seconds": args.seconds,
            "max_abs_map_difference": differences, "rows": rows}  # fmt: skip
    lines = [
        "# The map tail: DESIGN's steps one by one vs matrix products (the shipped form)",
        "",
        f"{info['cpu']} ({info['cores']} cores), {info['date']}; {args.threads} threads, default ModelConfig "
        f"(untrained), whole model, 256x256 uint8 input; medians of {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s. Largest |map| difference between the two graphs: "
        + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()) + ".",
        "",
        "| batch | runtime | steps img/s | matrices img/s | speed-up | vs ONNX Runtime fp32, steps "
        "| vs ONNX Runtime fp32, matrices |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *[f"| {r['batch']} | {r['runtime']} | {r['steps_img_s']:.1f} | {r['matrices_img_s']:.1f} | {r['speedup']:.2f}x "
          f"| {r['vs_ort_fp32_steps']:.2f}x | {r['vs_ort_fp32_matrices']:.2f}x |" for r in rows],
    ]  # fmt: skip
    write_results(args.name, data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
