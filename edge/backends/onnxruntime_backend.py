"""ONNX Runtime backend: CPU by default, the CUDA provider when asked for (or ``auto`` and present).

Reads the model's identity and thresholds from the graph's metadata (written by ``proad-export``),
so a foreign ONNX file is refused at start rather than producing numbers nobody can interpret.

``onnxruntime.sessions: N`` loads the model N times with ``threads`` split among them: one small
call does not keep two cores busy, so the daemon then keeps one batch in flight per session, each
call running on a free one (README, "Batches in flight in the daemon").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from proad.artifacts import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata
from proad.edge.backends.base import Backend, ModelInfo, ModelLoadError, WorkerPool, check_plain_graph, pad_batch
from proad.edge.config import BackendConfig


class OnnxRuntimeBackend(Backend):
    def __init__(self, cfg: BackendConfig) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("the onnxruntime backend needs onnxruntime: pip install 'proad-edge[onnx]'") from exc
        path = Path(cfg.model)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        available = ort.get_available_providers()
        if cfg.device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ModelLoadError(f"device 'cuda' asked for, but this onnxruntime has no CUDA provider ({available})")
        use_cuda = cfg.device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        count = cfg.onnxruntime.sessions
        if cfg.threads is None and count == 1:
            split = [0]  # ONNX Runtime's own default: the physical cores
        else:  # the sessions share the threads (unset: the CPUs this process may use), the first ones the leftover
            total = max(count, cfg.threads or len(os.sched_getaffinity(0)))
            split = [total // count + (i < total % count) for i in range(count)]
        settings = [self._options(ort, threads) for threads in split]
        try:
            sessions = [ort.InferenceSession(str(path), options, providers=providers) for options in settings]
        except Exception as exc:
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:200]}") from exc
        first = sessions[0]  # all alike: its metadata and inputs are the model's
        self.sessions = WorkerPool(sessions)
        self.parallel_calls = len(self.sessions)
        props = first.get_modelmeta().custom_metadata_map
        try:
            meta = OnnxMetadata.from_props(props)
        except ValueError as exc:
            raise ModelLoadError(f"{path}: not a proad-export ONNX model (metadata missing or invalid)") from exc
        if meta.precision == "int8":  # NNCF's QDQ MatMuls fail in ORT's fused int8 kernels; its int8 was slower
            raise ModelLoadError(f"{path} is an int8 graph: run it with backend.kind openvino (README, int8)")
        inputs = first.get_inputs()
        check_plain_graph(meta, path, "ONNX Runtime", [i.name for i in inputs],
                          [o.name for o in first.get_outputs()])
        batch_dim = inputs[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self.max_batch = self.fixed_batch or cfg.max_batch
        self.info = ModelInfo.from_metadata(meta, str(path), "onnxruntime", "cuda" if use_cuda else "cpu")

    @staticmethod
    def _options(ort: Any, threads: int) -> Any:
        """A session's options: ``threads`` intra-op threads (0: ONNX Runtime's default)."""
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # "1" lets the intra-op threads spin between ops, ONNX Runtime's own default (said explicitly):
        # the daemon kept 93-97 % of the backend alone with it (README, "The daemon"); "0" would free
        # the cores for the capture and publish threads at some latency, not measured here
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return options

    def warmup(self) -> None:
        """One inference on each session, so no first real frame lands on a cold one."""
        for _ in self.sessions.workers:
            super().warmup()

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        with self.sessions.holding(1) as (session,):
            amap, score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pad_batch(images, self.fixed_batch)})
        return amap[:n], score[:n]
