"""Build a TensorRT engine from an exported ONNX graph, on the machine that will run it.

Written against the documented TensorRT 10.x and 11.x Python APIs:

- 11.x networks are strongly typed: there is no ``BuilderFlag.FP16``, so fp16 comes from an fp16
  ONNX graph (``proad-export onnx --precision fp16``). On 10.x an fp32 graph with ``--fp16`` uses
  the builder flag; an fp16 graph is built strongly typed on both.
- One optimisation profile covers the dynamic batch (min / opt / max); the workspace is a memory
  pool limit; a timing cache file is read before and written after the build.
- ``proad::ProtoAttention`` is registered (:func:`proad.kernels.trt_plugin.register_plugin`) before
  parsing; with TensorRT >= 10.9 its PTX is serialised into the engine (AOT).

Names that exist only in some TensorRT versions are reached through ``getattr``/``hasattr`` so
both versions run the same file; a test checks every name against NVIDIA's 11.4 bindings and the
10.13 stubs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from proad.artifacts import INPUT_NAME, EngineInfo, OnnxMetadata, current_gpu, file_sha256, sidecar_path
from proad.data.geometry import Size, size_hw
from proad.kernels.trt_plugin import import_tensorrt, register_plugin, version_tuple


class BuildError(RuntimeError):
    """TensorRT could not parse the graph or build the engine (exit 1)."""


class BuildArgumentError(ValueError):
    """The request cannot be built as asked (exit 2)."""


@dataclass(frozen=True)
class BuildRequest:
    """Everything ``proad-export build-engine`` was asked for, validated before TensorRT loads."""

    onnx: Path
    out: Path
    fp16: bool = False
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 16
    workspace_mb: int = 2048
    timing_cache: Path | None = None
    verbose: bool = False


def validate(req: BuildRequest) -> OnnxMetadata:
    """Check the request and read the graph's metadata; raises :class:`BuildArgumentError`."""
    from proad.export.onnx_export import read_metadata

    if not req.onnx.is_file():
        raise BuildArgumentError(f"ONNX file not found: {req.onnx}")
    if not 1 <= req.min_batch <= req.opt_batch <= req.max_batch:
        raise BuildArgumentError(
            f"batches must satisfy 1 <= min <= opt <= max, got {req.min_batch}/{req.opt_batch}/{req.max_batch}"
        )
    if req.workspace_mb < 16:
        raise BuildArgumentError(f"--workspace-mb must be at least 16, got {req.workspace_mb}")
    if req.out.suffix != ".engine":
        raise BuildArgumentError(f"--out should end in .engine (the sidecar is OUT.json), got {req.out}")
    try:
        meta = read_metadata(req.onnx)
    except Exception as exc:
        raise BuildArgumentError(f"{req.onnx} is not a proad-export ONNX graph (no valid metadata): {exc}") from exc
    if meta.precision == "int8":  # calibrated and checked for the CPU runtimes, not for TensorRT's kernels
        raise BuildArgumentError(f"{req.onnx} is an int8 graph for the CPU backends (openvino, onnxruntime); "
                                 "build engines from the fp32 or fp16 export")
    return meta


def profile_shapes(req: BuildRequest, image_size: Size) -> dict[str, list[int]]:
    """min / opt / max shapes of the NHWC uint8 image input (a square or rectangular input)."""
    height, width = size_hw(image_size)
    return {
        name: [batch, height, width, 3]
        for name, batch in (("min", req.min_batch), ("opt", req.opt_batch), ("max", req.max_batch))
    }


def _progress_monitor(trt: Any, log: Callable[[str], None]) -> Any | None:
    """A tqdm bar per build phase, where TensorRT offers IProgressMonitor (10.x and 11.x)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    from tqdm import tqdm

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = len(self.bars)
            self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def build_engine(req: BuildRequest, log: Callable[[str], None] = print) -> EngineInfo:
    """Parse, build, serialise; write ``OUT`` and ``OUT.json``. Raises BuildError / BuildArgumentError."""
    meta = validate(req)
    trt = import_tensorrt()  # TensorRTUnavailable -> exit 3
    register_plugin()
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)  # gone in 11.x (strongly typed only)
    graph_fp16 = meta.precision == "fp16"
    if req.fp16 and not graph_fp16 and fp16_flag is None:
        raise BuildArgumentError(
            f"TensorRT {trt.__version__} is strongly typed and has no FP16 builder flag: export an fp16 graph "
            "(proad-export onnx --precision fp16) and build it without --fp16"
        )
    strongly_typed = graph_fp16 or fp16_flag is None
    precision: Literal["fp32", "fp16"] = "fp16" if (graph_fp16 or req.fp16) else "fp32"

    logger = trt.Logger(trt.Logger.VERBOSE if req.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and strong is not None:
        flags |= 1 << int(strong)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {req.onnx} (TensorRT {trt.__version__}, {precision}{', strongly typed' if strongly_typed else ''})")
    if not parser.parse_from_file(str(req.onnx)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise BuildError("ONNX parser failed:\n  " + "\n  ".join(errors or ["(no message)"]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_mb << 20)
    if req.fp16 and not strongly_typed:
        config.set_flag(fp16_flag)
    shapes = profile_shapes(req, meta.image_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_bytes = req.timing_cache.read_bytes() if req.timing_cache and req.timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    monitor = _progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise BuildError("TensorRT could not build the engine; run again with --verbose for the builder's log")

    req.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = req.out.with_name(f".{req.out.name}.tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(req.out)
    if req.timing_cache:
        req.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    try:
        gpu_name, capability = current_gpu()
    except RuntimeError as exc:
        raise BuildError(str(exc)) from exc
    info = EngineInfo(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=precision,
        strongly_typed=strongly_typed,
        profile=shapes,
        plugin_aot=version_tuple(trt.__version__) >= (10, 9),
        onnx_sha256=file_sha256(req.onnx),
        onnx_metadata=meta.to_props(),
        build_seconds=round(seconds, 1),
    )
    sidecar_path(req.out).write_text(info.model_dump_json(indent=2) + "\n")
    log(f"built {req.out} in {seconds:.0f}s for {gpu_name} (sm {capability}); sidecar {sidecar_path(req.out)}")
    return info
