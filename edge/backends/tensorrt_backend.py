"""TensorRT backend: a serialised engine and its sidecar, run with ``execute_async_v3``.

At start the sidecar (``model.engine.json``) is compared with the running TensorRT version and
this GPU: an engine only runs where it was built, so a mismatch is refused with the command that
rebuilds it. Buffers are planned once for the largest batch the engine's profile allows, in pinned
host memory and on the device (cuda-python), every tensor address is set once, and each batch is
copied in, run on a non-default stream and copied out. After the first run at a batch size the
work is captured as a CUDA graph and replayed; if capture fails the plain call is used.

An engine built with the AOT plugin (TensorRT >= 10.9) carries the fused attention kernel itself;
a JIT-plugin engine needs :func:`proad.kernels.trt_plugin.register_plugin` first, which is done here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from proad.artifacts import INPUT_NAME, EngineInfo, OnnxMetadata, current_gpu, sidecar_path
from proad.edge.backends.base import Backend, ModelInfo, ModelLoadError
from proad.edge.config import BackendConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: batch dimension -1 when dynamic."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]


def plan_buffers(specs: list[TensorSpec], max_batch: int) -> dict[str, tuple[int, ...]]:
    """Shape of each buffer at the largest batch; only the batch dimension may be dynamic."""
    plan = {}
    for spec in specs:
        if any(d < 0 for d in spec.shape[1:]):
            raise ModelLoadError(f"engine tensor {spec.name} has a dynamic non-batch dimension {spec.shape}")
        batch = max_batch if spec.shape[0] < 0 else spec.shape[0]
        plan[spec.name] = (batch, *spec.shape[1:])
    return plan


def rebuild_hint(engine_path: Path) -> str:
    return f"rebuild it on this machine: proad-export build-engine --onnx <model.onnx> --out {engine_path}"


def check_engine_info(info: EngineInfo, tensorrt_version: str, capability: str, engine_path: Path) -> None:
    """Refuse an engine built for another TensorRT or GPU, saying how to rebuild it."""
    problem = info.mismatch(tensorrt_version, capability)
    if problem:
        raise ModelLoadError(f"{engine_path}: {problem}; {rebuild_hint(engine_path)}")


def read_sidecar(engine_path: Path) -> tuple[EngineInfo, OnnxMetadata]:
    side = sidecar_path(engine_path)
    if not engine_path.is_file():
        raise ModelLoadError(f"engine file not found: {engine_path}")
    if not side.is_file():
        raise ModelLoadError(f"{engine_path} has no sidecar {side.name}; {rebuild_hint(engine_path)}")
    try:
        info = EngineInfo.model_validate_json(side.read_text())
        meta = OnnxMetadata.from_props(info.onnx_metadata)
    except (ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{side}: not a valid engine sidecar ({str(exc).splitlines()[0][:160]})") from exc
    return info, meta


class TensorRTBackend(Backend):
    thread_safe = False  # one execution context, stream and set of buffers: one call at a time

    def __init__(self, cfg: BackendConfig) -> None:
        from proad.edge.backends.cuda_memory import CudaError, HostDeviceBuffer, Stream
        from proad.kernels.trt_plugin import TensorRTUnavailable, import_tensorrt, register_plugin

        path = Path(cfg.model)
        info, meta = read_sidecar(path)
        try:
            trt = import_tensorrt()
        except TensorRTUnavailable as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            gpu, capability = current_gpu()
        except (RuntimeError, ImportError) as exc:
            raise ModelLoadError(f"the tensorrt backend needs an NVIDIA GPU and cuda-python: {exc}") from exc
        check_engine_info(info, trt.__version__, capability, path)
        if not info.plugin_aot:
            register_plugin()  # a JIT-plugin engine calls back into Python

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"{path}: TensorRT could not deserialise the engine; {rebuild_hint(path)}")
        self.context = self.engine.create_execution_context()
        specs = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            specs.append(TensorSpec(
                name,
                self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))),
                tuple(self.engine.get_tensor_shape(name)),
            ))  # fmt: skip
        self.min_batch = info.profile["min"][0]
        self.max_batch = min(cfg.max_batch, info.profile["max"][0])
        try:
            self.stream = Stream()
            self.buffers = {
                name: HostDeviceBuffer(shape, next(s.dtype for s in specs if s.name == name))
                for name, shape in plan_buffers(specs, self.max_batch).items()
            }
        except CudaError as exc:
            raise ModelLoadError(f"cannot allocate the engine's buffers: {exc}") from exc
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, buf.device)
        self.outputs = [s.name for s in specs if not s.is_input]
        self.use_graphs = cfg.cuda_graphs
        self.graphs: dict[int, Any] = {}
        self.info = ModelInfo.from_metadata(meta, str(path), "tensorrt", f"cuda ({gpu})")

    def _execute(self) -> bool:
        return bool(self.context.execute_async_v3(int(self.stream)))

    def _run(self, batch: int) -> None:
        from proad.edge.backends.cuda_memory import CudaError, CudaGraph

        graph = self.graphs.get(batch)
        if graph is not None:
            graph.launch(self.stream)
            return
        if not self._execute():
            raise RuntimeError("TensorRT execute_async_v3 failed")
        if self.use_graphs and batch not in self.graphs:
            # the first run at this shape has flushed TensorRT's deferred work: capture the next one
            try:
                self.stream.synchronize()
                self.graphs[batch] = CudaGraph.capture(self.stream, self._execute)
            except CudaError as exc:
                log.warning("CUDA graph capture failed at batch %d, running without: %s", batch, exc)
                self.graphs[batch] = None

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        batch = max(n, self.min_batch)
        if n > self.max_batch:
            raise ValueError(f"batch {n} exceeds the engine's {self.max_batch}")
        image_buf = self.buffers[INPUT_NAME]
        image_buf.host[:n] = images
        if batch > n:
            image_buf.host[n:batch] = 0
        self.context.set_input_shape(INPUT_NAME, (batch, *images.shape[1:]))
        image_buf.to_device(batch * images[0].nbytes, self.stream)
        self._run(batch)
        for name in self.outputs:
            out = self.buffers[name]
            out.to_host(out.nbytes // self.max_batch * batch, self.stream)
        self.stream.synchronize()
        amap = self.buffers["anomaly_map"].host[:n].astype(np.float32, copy=True)
        score = self.buffers["score"].host[:n].astype(np.float32, copy=True)
        return amap, score

    def close(self) -> None:
        for graph in self.graphs.values():
            if graph is not None:
                graph.close()
        for buf in self.buffers.values():
            buf.close()
        self.stream.close()
