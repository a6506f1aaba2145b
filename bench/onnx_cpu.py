"""The whole model on this CPU: eager torch vs ONNX Runtime (plain graph), side by side in one run.

The default model (encoder + decoder + map + score, 256x256 uint8 input) is exported exactly as
``proad-export onnx`` does; both run with the same number of threads on the same rendered images.

    python bench/onnx_cpu.py [--threads 2] [--seconds 5]     # writes bench/results/onnx_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results
from proad.checkpoint import Checkpoint, save_checkpoint
from proad.config import ModelConfig
from proad.export.onnx_export import export_onnx, sample_images
from proad.model import ProAD


def throughput(run: Callable[[np.ndarray], Any], images: np.ndarray, seconds: float) -> float:
    run(images)  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(images)
        done += len(images)
    return done / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: the default config, untrained: "
                   "the speed does not depend on the weights)")
    args = p.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = Path(tmp) / "default.pt"
            model = ProAD(ModelConfig())
            save_checkpoint(Checkpoint(model.cfg, model.trainable_state_dict(), 0.5), ckpt)
        onnx_path = Path(tmp) / "model.onnx"
        report = export_onnx(ckpt, onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        from proad.checkpoint import load_model

        model, _ = load_model(ckpt)
        rows = []
        for batch in (1, 8):
            images = sample_images(256, batch)

            def run_torch(x: np.ndarray) -> Any:
                with torch.no_grad():
                    return model(torch.from_numpy(x))

            def run_ort(x: np.ndarray) -> Any:
                return session.run(None, {"image": x})

            t = throughput(run_torch, images, args.seconds)
            o = throughput(run_ort, images, args.seconds)
            rows.append({"batch": batch, "torch_img_s": t, "onnxruntime_img_s": o, "ratio_ort_over_torch": o / t})
            print(f"batch {batch}: torch {t:.1f} img/s, ONNX Runtime {o:.1f} img/s ({o / t:.2f}x)", flush=True)
    data = {"machine": machine(), "threads": args.threads, "onnx_check_max_abs_error": report.max_abs_error_map,
            "rows": rows}
    lines = [
        "# Whole model on CPU: eager torch vs ONNX Runtime",
        "",
        f"{data['machine']['cpu']}, {args.threads} threads, default ModelConfig, 256x256 uint8 input, "
        f"{data['machine']['date']}. ONNX vs torch max |map| error {report.max_abs_error_map:.1e}.",
        "",
        "| batch | torch img/s | ONNX Runtime img/s | ORT / torch |",
        "|---:|---:|---:|---:|",
        *[f"| {r['batch']} | {r['torch_img_s']:.1f} | {r['onnxruntime_img_s']:.1f} | {r['ratio_ort_over_torch']:.2f}x |"
          for r in rows],
    ]
    write_results("onnx_cpu", data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
