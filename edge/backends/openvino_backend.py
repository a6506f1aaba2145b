"""OpenVINO backend: the exported ONNX graph on Intel's CPU runtime, beside ONNX Runtime.

Many lines run on CPU-only edge PCs, and OpenVINO is what anomalib deploys to CPUs. The same ``.onnx``
file that ONNX Runtime runs is read here (no conversion step), its proad metadata checked the same
way (OpenVINO keeps ONNX ``metadata_props`` in the model's ``framework`` runtime info), and compiled
for the CPU plugin with the backend config's ``threads`` and ``openvino`` options (performance hint,
streams, precision). ``precision: f32`` is the default because OpenVINO's own CPU default on
machines with bf16 units is bf16, which moves the anomaly maps (README, "Export and CPU speed").

Under ``hint: throughput`` the CPU plugin splits its threads into streams (two on a 2-core machine,
one thread each), and one request runs on one stream, so one call alone would use one core. Two
things keep every stream busy: calls from several threads at once (the daemon keeps one batch in
flight per stream, ``backend.in_flight``), each taking the requests that are free, at least one; and
a call that finds several free cuts its batch into one part per request and runs the parts at once.
One camera's daemon delivered 1.97x what it did one batch at a time, 1.17x the latency hint (README,
"Batches in flight in the daemon"). A fixed-batch graph cannot be cut and runs whole on one request.

It is also the backend of the int8 graph (``proad-export onnx --precision int8``): OpenVINO reads
its QuantizeLinear/DequantizeLinear pairs and runs the quantized convolutions and matrix products
with its int8 kernels (README, "int8"); ``precision`` then applies to the parts kept in float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from proad.artifacts import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata
from proad.edge.backends.base import Backend, ModelInfo, ModelLoadError, WorkerPool, check_plain_graph, pad_batch
from proad.edge.config import BackendConfig


class OpenVinoBackend(Backend):
    def __init__(self, cfg: BackendConfig) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelLoadError("the openvino backend needs openvino: pip install 'proad-edge[openvino]'") from exc
        path = Path(cfg.model)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if cfg.device == "cuda":
            raise ModelLoadError("the openvino backend runs on the CPU; device 'cuda' is for onnxruntime or tensorrt")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: OpenVINO cannot read it: {str(exc).splitlines()[0][:200]}") from exc
        try:
            meta = OnnxMetadata.from_props(_metadata_props(model))
        except (KeyError, ValueError, AttributeError, TypeError, RuntimeError) as exc:  # no or foreign rt_info
            raise ModelLoadError(f"{path}: not a proad-export ONNX model (metadata missing or invalid)") from exc
        check_plain_graph(meta, path, "OpenVINO", [i.get_any_name() for i in model.inputs],
                          [o.get_any_name() for o in model.outputs])
        batch_dim = model.inputs[0].get_partial_shape()[0]
        self.fixed_batch = batch_dim.get_length() if batch_dim.is_static else None
        self.max_batch = self.fixed_batch or cfg.max_batch
        options: dict[str, Any] = {
            "PERFORMANCE_HINT": cfg.openvino.hint.upper(),
            "INFERENCE_PRECISION_HINT": cfg.openvino.precision,
        }
        if cfg.threads:
            options["INFERENCE_NUM_THREADS"] = cfg.threads
        if cfg.openvino.streams:
            options["NUM_STREAMS"] = cfg.openvino.streams
        try:
            self.compiled = core.compile_model(model, "CPU", options)
        except Exception as exc:
            raise ModelLoadError(f"{path}: OpenVINO cannot compile it for the CPU: "
                                 f"{str(exc).splitlines()[0][:200]}") from exc
        # one request per stream (1 under the latency hint unless streams are set), each running its part
        # of a batch or another thread's call; a fixed-batch graph cannot be cut, so a call runs it on one
        parallel = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = WorkerPool([self.compiled.create_infer_request() for _ in range(max(1, parallel))])
        self.parallel_calls = len(self.requests)
        self.outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        self.info = ModelInfo.from_metadata(meta, str(path), "openvino", "cpu")

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        batch = pad_batch(images, self.fixed_batch)
        with self.requests.holding(1 if self.fixed_batch else len(batch)) as held:
            return self._run(held, batch, n)

    def _run(self, held: list[Any], batch: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch`` cut into one part per held request, run at once."""
        parts = np.array_split(batch, max(1, min(len(held), len(batch))))
        busy = held[: len(parts)]
        started = []
        try:
            for request, part in zip(busy, parts, strict=True):
                request.start_async({INPUT_NAME: np.ascontiguousarray(part)})
                started.append(request)
        finally:  # never leave a request running: the next call would find it busy
            failures = _wait_all(started)
        if failures:
            raise failures[0]
        maps, scores = [], []
        for request in busy:
            # copies: the request reuses its buffers
            maps.append(np.array(request.get_tensor(self.outputs[0]).data, np.float32))
            scores.append(np.array(request.get_tensor(self.outputs[1]).data, np.float32))
        amap, score = (maps[0], scores[0]) if len(busy) == 1 else (np.concatenate(maps), np.concatenate(scores))
        return amap[:n], score[:n]


def _wait_all(requests: list[Any]) -> list[Exception]:
    """Wait for every started request; the errors they ended with."""
    failures = []
    for request in requests:
        try:
            request.wait()
        except Exception as exc:  # an inference error: re-raised by the caller once all are done
            failures.append(exc)
    return failures


def _metadata_props(model: Any) -> dict[str, str]:
    """The ONNX ``metadata_props`` as OpenVINO's ONNX frontend keeps them (rt_info ``framework``)."""
    framework = model.get_rt_info()["framework"]
    return {str(key): value.astype(str) for key, value in framework.items()}
