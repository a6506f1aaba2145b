"""``proad-export``: from a checkpoint to ONNX, and from ONNX to a TensorRT engine.

::

    proad-export onnx --checkpoint model.pt --out model.onnx [--plugin] [--precision fp32|fp16] [--batch N|dynamic]
    proad-export onnx --checkpoint model.pt --out model-int8.onnx --precision int8 --calibration DIR [DIR ...]
    proad-export build-engine --onnx model.onnx --out model.engine [--fp16] [--min-batch 1 --opt-batch 4 --max-batch 16]
                              [--workspace-mb 2048] [--timing-cache FILE] [--verbose]

Exit codes: 0 done; 1 the export failed its check (an int8 graph too far from fp32 on the held-out
calibration images is refused and not written), or TensorRT could not parse/build; 2 bad
arguments or input (missing file, not our checkpoint or graph, impossible batch range);
3 TensorRT is not installed (build-engine only; the message says how to install it).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from proad.clikit import Failure, run_command, say

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NO_TENSORRT = 0, 1, 2, 3


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {value!r}") from exc
    if n < 1:
        raise argparse.ArgumentTypeError(f"batch must be >= 1, got {n}")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-export",
        description="Export a Pro-AD checkpoint to ONNX, and build TensorRT engines from it.",
        epilog="Exit codes: 0 done, 1 check/build failed, 2 bad arguments or input, 3 TensorRT not installed.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser(
        "onnx",
        help="checkpoint -> ONNX (checked against torch in ONNX Runtime)",
        description="Export uint8 NHWC BGR image -> (anomaly_map, score) to ONNX (opset 18), check it with "
        "onnx.checker and shape inference, and compare ONNX Runtime with torch on rendered images.",
    )
    o.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by proad-train")
    o.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    o.add_argument("--plugin", action="store_true",
                   help="emit each attention as one proad::ProtoAttention node (for TensorRT's plugin)")
    o.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="graph precision; fp16 is how TensorRT 11 builds fp16 engines; int8 is a calibrated QDQ "
                   "graph for the openvino backend, written only if it stays within tolerance of fp32 on held-out "
                   "calibration images (default fp32)")
    o.add_argument("--calibration", nargs="+", type=Path, metavar="DIR",
                   help="int8: folders of normal images from the line (searched recursively; e.g. each "
                   "category's train/good); every fourth image is held out for the check")
    o.add_argument("--calibration-count", type=int, default=128,
                   help="int8: at most this many calibration + check inputs (default 128)")
    o.add_argument("--batch", type=_batch, default=None, metavar="N|dynamic",
                   help="fixed batch size, or 'dynamic' (default)")
    o.add_argument("--tolerance", type=float,
                   help="max |anomaly map| difference ONNX Runtime vs torch (default 1e-4 fp32, 5e-2 fp16)")
    o.add_argument("--report", type=Path, help="write the check results as JSON here")

    b = sub.add_parser(
        "build-engine",
        help="ONNX -> TensorRT engine + sidecar JSON (run on the target machine)",
        description="Parse an exported ONNX graph with TensorRT (registering proad::ProtoAttention), build an engine "
        "for this GPU with one optimisation profile over the batch, and write OUT and OUT.json (TensorRT "
        "version, GPU, precision, profile shapes, plugin version, ONNX sha256).",
    )
    b.add_argument("--onnx", required=True, type=Path, help="graph written by 'proad-export onnx'")
    b.add_argument("--out", required=True, type=Path, help="engine file to write (.engine); the sidecar is OUT.json")
    b.add_argument("--fp16", action="store_true",
                   help="fp16 from an fp32 graph via the builder flag (TensorRT 10.x only; on 11.x export "
                   "--precision fp16 instead)")
    b.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine accepts (default 1)")
    b.add_argument("--opt-batch", type=int, default=4, help="batch TensorRT tunes for (default 4)")
    b.add_argument("--max-batch", type=int, default=16, help="largest batch the engine accepts (default 16)")
    b.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit in MiB (default 2048)")
    b.add_argument("--timing-cache", type=Path, help="timing cache file: read if present, written after the build")
    b.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def _onnx(args: argparse.Namespace) -> int:
    from proad.export.onnx_export import describe, dumps, export_onnx

    if args.precision == "int8":
        return _int8(args)
    report = export_onnx(args.checkpoint, args.out, args.precision, args.batch, args.plugin, args.tolerance)
    print(describe(report))
    if args.report:
        args.report.write_text(dumps(report) + "\n")
    return EXIT_OK


def _int8(args: argparse.Namespace) -> int:
    """fp32 export (checked against torch), then quantization checked against that fp32 graph."""
    import json
    import tempfile

    from proad.checkpoint import load_model
    from proad.export.onnx_export import describe, export_onnx
    from proad.export.quantize import describe_quant, enough_calibration, first_feature_block, quantize

    model, ckpt = load_model(args.checkpoint)  # a bad calibration folder fails before the minutes of work below
    images = enough_calibration(args.calibration, ckpt.model_config, args.calibration_count, ckpt.category_tiles,
                                list(ckpt.train_info.get("category_thresholds") or {}))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(args.checkpoint, Path(tmp) / "fp32.onnx", "fp32", args.batch, False, args.tolerance)
        print(describe(fp32))
        report = quantize(fp32.path, args.out, args.calibration, first_feature_block(model), args.calibration_count,
                          images=images)  # fmt: skip
    print(describe_quant(report))
    if args.report:
        args.report.write_text(json.dumps({"fp32": fp32.to_dict(), "int8": report.to_dict()}, indent=2) + "\n")
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from proad.export.engine import BuildRequest, build_engine

    req = BuildRequest(
        onnx=args.onnx, out=args.out, fp16=args.fp16, min_batch=args.min_batch, opt_batch=args.opt_batch,
        max_batch=args.max_batch, workspace_mb=args.workspace_mb, timing_cache=args.timing_cache, verbose=args.verbose,
    )  # fmt: skip
    build_engine(req)
    return EXIT_OK


def _failures() -> list[Failure]:
    from proad.checkpoint import CheckpointError
    from proad.data.folder import DatasetError
    from proad.export.engine import BuildArgumentError, BuildError
    from proad.export.onnx_export import ExportError
    from proad.export.quantize import CalibrationError
    from proad.kernels.trt_plugin import TensorRTUnavailable

    return [
        (CheckpointError, EXIT_BAD_INPUT, say("error: ")),
        (CalibrationError, EXIT_BAD_INPUT, say("error: ")),
        (DatasetError, EXIT_BAD_INPUT, say("error: ")),
        (BuildArgumentError, EXIT_BAD_INPUT, say("error: ")),
        (TensorRTUnavailable, EXIT_NO_TENSORRT, say("")),
        (ExportError, EXIT_FAILED, say("check failed: ")),
        (BuildError, EXIT_FAILED, say("build failed: ")),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "onnx":  # argparse's own error: usage line, exit 2
        if args.precision == "int8" and not args.calibration:
            p.error("--precision int8 needs --calibration DIR [DIR ...] (normal images of the line)")
        if args.precision == "int8" and args.plugin:
            p.error("--precision int8 is a plain graph for the CPU backends; drop --plugin")
        if args.calibration and args.precision != "int8":
            p.error("--calibration is for --precision int8")
    return run_command("proad-export", _onnx if args.command == "onnx" else _build, args, _failures())
