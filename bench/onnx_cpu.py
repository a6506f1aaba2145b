"""The whole model on this CPU: eager torch vs ONNX Runtime vs OpenVINO (the same plain graph), side by
side in one run.

The default model (encoder + decoder + map + score, 256x256 uint8 input) is exported exactly as
``proad-export onnx`` does; all run with the same number of threads on the same rendered images,
interleaved (``--rounds`` rounds of each in turn, the median kept: this machine's speed drifts
between runs). OpenVINO runs as the daemon's ``backend.kind: openvino`` does (latency hint, f32),
and its maps are compared with ONNX Runtime's.

    python bench/onnx_cpu.py [--threads 2] [--seconds 6] [--rounds 3]    # writes bench/results/onnx_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, throughput, write_results
from proad.checkpoint import Checkpoint, save_checkpoint
from proad.config import ModelConfig
from proad.data.geometry import size_text
from proad.export.onnx_export import export_onnx, sample_images
from proad.model import ProAD


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0, help="measured time per runtime and batch size")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
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
        openvino, ov_version, ov_error = None, None, 0.0
        try:
            import openvino as ov

            from proad.edge.backends import load_backend
            from proad.edge.config import BackendConfig

            openvino = load_backend(BackendConfig(kind="openvino", model=str(onnx_path), threads=args.threads,
                                                  max_batch=8))
            ov_version = ov.get_version()
        except ImportError:
            print("openvino is not installed: ONNX Runtime and torch only")
        rows = []
        for batch in (1, 8):
            images = sample_images(model.cfg.image_size, batch)

            def run_torch(x: np.ndarray) -> Any:
                with torch.no_grad():
                    return model(torch.from_numpy(x))

            def run_ort(x: np.ndarray) -> Any:
                return session.run(None, {"image": x})

            runs: dict[str, Callable[[np.ndarray], Any]] = {"torch": run_torch, "onnxruntime": run_ort}
            if openvino is not None:
                runs["openvino"] = openvino.infer
                ov_error = max(ov_error, float(np.abs(openvino.infer(images)[0] - run_ort(images)[0]).max()))
            rounds: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    rounds[name].append(throughput(run, images, args.seconds / args.rounds))
            med = {name: float(np.median(v)) for name, v in rounds.items()}
            t, o, v = med["torch"], med["onnxruntime"], med.get("openvino")
            rows.append({"batch": batch, "torch_img_s": t, "onnxruntime_img_s": o, "ratio_ort_over_torch": o / t,
                         "openvino_img_s": v, "ratio_openvino_over_ort": v / o if v else None, "rounds": rounds})
            print(f"batch {batch}: torch {t:.1f} img/s, ONNX Runtime {o:.1f} img/s ({o / t:.2f}x)"
                  + (f", OpenVINO {v:.1f} img/s ({v / o:.2f}x ORT)" if v else ""), flush=True)
    data = {"machine": machine(), "threads": args.threads, "onnx_check_max_abs_error": report.max_abs_error_map,
            "openvino_max_abs_map_error_vs_ort": ov_error if openvino is not None else None,
            "openvino_version": ov_version, "rows": rows}
    lines = [
        "# Whole model on CPU: eager torch vs ONNX Runtime vs OpenVINO",
        "",
        f"{data['machine']['cpu']}, {args.threads} threads, {'the checkpoint' if args.checkpoint else 'default'} "
        f"ModelConfig, {size_text(model.cfg.image_size)} uint8 input, "
        f"{data['machine']['date']}; median of {args.rounds} interleaved rounds. ONNX vs torch max |map| error "
        f"{report.max_abs_error_map:.1e}"
        + (f"; OpenVINO {ov_version} (latency hint, f32) vs ONNX Runtime max |map| error {ov_error:.1e}."
           if openvino is not None else "; OpenVINO not installed."),
        "",
        "| batch | torch img/s | ONNX Runtime img/s | ORT / torch | OpenVINO img/s | OpenVINO / ORT |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['batch']} | {r['torch_img_s']:.1f} | {r['onnxruntime_img_s']:.1f} | "
          f"{r['ratio_ort_over_torch']:.2f}x | "
          + (f"{r['openvino_img_s']:.1f} | {r['ratio_openvino_over_ort']:.2f}x |" if r["openvino_img_s"] else "- | - |")
          for r in rows],
    ]
    write_results("onnx_cpu", data, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
